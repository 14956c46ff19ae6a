"""A worker process's (or thread's) entry point: pipes in, `TaskServer`, pipes out.

Two threads keep the event loop free of blocking pipe I/O: a reader turns task
messages into loop callbacks, and an outbox thread pickles outcomes and writes them,
many per pipe write. EOF on the task pipe means the parent closed the pool or died:
the worker exits, within `_EXIT_GRACE_S` even if its loop or its initializer is stuck.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sys
import threading
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from .._wire.protocol import EXIT_OK, EXIT_STARTUP_FAILED, Heartbeat, Outcome, Ready, StartupFailed
from ..errors import ResultTransferError
from ..results import Result
from .server import RequestRunner, TaskServer, open_runner

__all__ = ["main"]

# Outcomes per pipe write: large enough to amortise the system call under load, small
# enough that one message stays well below a megabyte for ordinary answers.
_MAX_OUTCOMES_PER_MESSAGE = 256
# After the parent is gone, the time a worker gets to cancel its tasks and close its
# connections before it is ended regardless (a stuck loop or initializer included).
_EXIT_GRACE_S = 5.0


class _Outbox:
    """Writes messages to the parent from its own thread, batching what has piled up.

    At most one heartbeat waits at a time: while the parent is not reading (a slow
    caller), more of them would only pile up.
    """

    _CLOSE = object()

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._heartbeat_waiting = False
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: Any) -> None:
        if isinstance(message, Heartbeat):
            if self._heartbeat_waiting:
                return
            self._heartbeat_waiting = True
        self._queue.put(message)

    def close(self, timeout: float = 1.0) -> None:
        self._queue.put(self._CLOSE)
        self._thread.join(timeout)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self._queue.get()]
            while len(batch) < _MAX_OUTCOMES_PER_MESSAGE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is self._CLOSE:
                batch.pop()
                closing = True
            self._heartbeat_waiting = False
            if not batch:
                continue
            try:
                self._conn.send(batch)
            except (OSError, ValueError):  # the parent is gone: nobody to tell
                return
            except Exception:  # a message that cannot be pickled: send the others one by one
                if not self._send_each(batch):
                    return

    def _send_each(self, batch: list[Any]) -> bool:
        """Send messages one at a time, each unpicklable one as its index's error."""
        for message in batch:
            try:
                self._conn.send([message])
            except (OSError, ValueError):
                return False
            except Exception as exc:
                if isinstance(message, Outcome):
                    error = ResultTransferError(f"the result cannot be pickled: {exc!r}")
                    error.index = message.index
                    failed = Result(message.index, attempts=message.attempt, error=error)
                    self._conn.send([replace(message, result=failed, output_payload=None)])
        return True


class _Reader:
    """Reads the task pipe from a thread started before anything else can get stuck.

    Until `attach`, messages are kept and EOF ends the process at once (a worker still
    importing or running its initializer has nothing to finish). A worker that is a
    thread of the parent (`ends_process` False) is never ended that way.
    """

    def __init__(self, conn: Connection, ends_process: bool) -> None:
        self._conn = conn
        self._ends_process = ends_process
        self._lock = threading.Lock()
        self._early: list[Any] = []
        self._deliver: Any = None  # loop.call_soon_threadsafe bound to the inbox, once attached
        threading.Thread(target=self._run, name="task-reader", daemon=True).start()

    def attach(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._deliver = lambda message: loop.call_soon_threadsafe(inbox.put_nowait, message)
            for message in self._early:
                self._deliver(message)
            self._early.clear()

    def _run(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = None  # the parent closed our pipe or died
            except Exception as exc:  # a task that cannot be unpickled here
                message = exc
            with self._lock:
                if self._deliver is None:
                    if message is None and self._ends_process:
                        os._exit(EXIT_OK)
                    self._early.append(message)
                else:
                    try:
                        self._deliver(message)
                    except RuntimeError:  # the loop has closed: the worker is exiting
                        return
            if message is None:
                if self._ends_process:
                    _exit_after(_EXIT_GRACE_S)
                return


def _exit_after(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, args=(EXIT_OK,))
    timer.daemon = True
    timer.start()


async def _serve(reader: _Reader, outbox: _Outbox, runner: RequestRunner) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    server = TaskServer(runner, outbox)
    reader.attach(loop, inbox)
    outbox.put(Ready(os.getpid()))
    heartbeat = loop.create_task(server.beat())
    try:
        while (messages := await inbox.get()) is not None:
            if isinstance(messages, Exception):
                raise messages
            server.handle(messages)
    finally:
        heartbeat.cancel()
        await server.aclose()


def main(task_conn: Connection, result_conn: Connection, config_blob: bytes) -> None:
    """Serve tasks until the parent closes the task pipe.

    Runs in a worker process, or in a thread of the parent (``backend="thread"``).
    """
    in_own_process = threading.current_thread() is threading.main_thread()
    if in_own_process:
        # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the parent
        # decides when workers stop (closing their pipe), so in-flight work can drain.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = _Outbox(result_conn)
    reader = _Reader(task_conn, ends_process=in_own_process)
    try:
        runner = open_runner(config_blob)
    except Exception:  # report any start-up failure, then exit
        outbox.put(StartupFailed(traceback.format_exc()))
        outbox.close()
        sys.exit(EXIT_STARTUP_FAILED)
    try:
        asyncio.run(_serve(reader, outbox, runner))
    finally:
        outbox.close()
