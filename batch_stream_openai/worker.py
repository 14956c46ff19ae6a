"""Child side: one process, one asyncio loop, one long-lived client, many requests at once.

Two threads keep the loop free of blocking pipe I/O: a reader turns task messages into
loop callbacks (EOF means the parent closed the pool or died: the worker exits), and an
outbox thread pickles outcomes and writes them, many per pipe write.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .config import WorkerConfig
from .errors import RequestError
from .protocol import Cancel, Outcome, Ready, StartupFailed, Task
from .providers import Provider
from .request import OpenAIRequest
from .retry import build_retrying, to_request_error

__all__ = ["RequestRunner", "main"]

# Outcomes per pipe write: large enough to amortise the system call under load, small
# enough that one message stays well below a megabyte for ordinary answers.
_MAX_OUTCOMES_PER_MESSAGE = 256
_STARTUP_FAILED_EXIT_CODE = 3


class RequestRunner:
    """Runs one request to its final value: the provider call, retries, error conversion.

    Shared by every backend, so a request behaves the same wherever its worker runs.
    """

    def __init__(
        self, config: WorkerConfig, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    ) -> None:
        self._provider = Provider(config.client)
        self._policy = config.retry
        self._secret = config.client.resolved_api_key
        self._sleep = sleep

    def open(self) -> None:
        """Build the clients, so a broken setup fails at start-up, not per request."""
        self._provider.open()

    async def aclose(self) -> None:
        """Close the clients' connections."""
        await self._provider.aclose()

    async def run(self, index: int, request: OpenAIRequest) -> str | RequestError:
        """The text of the answer, or the picklable error that ends this request."""
        retrying = build_retrying(self._policy, self._sleep)
        try:
            text: str = await retrying(self._provider.complete, request)
        except Exception as exc:  # every failure becomes this index's result
            attempts = int(retrying.statistics.get("attempt_number", 1))
            return to_request_error(exc, index=index, attempts=attempts, secret=self._secret)
        return text


class _Outbox:
    """Writes messages to the parent from its own thread, batching what has piled up."""

    _CLOSE = object()

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: Any) -> None:
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
            if not batch:
                continue
            try:
                self._conn.send(batch)
            except (OSError, ValueError):  # the parent is gone: nobody to tell
                return


def _read_tasks(
    conn: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]
) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None  # the parent closed our pipe or died
        except Exception as exc:  # a task that cannot be unpickled here
            message = exc
        loop.call_soon_threadsafe(inbox.put_nowait, message)
        if message is None:
            return


def _forget(running: dict[tuple[int, int], Any], key: tuple[int, int], _job: object) -> None:
    running.pop(key, None)


async def _serve(task_conn: Connection, outbox: _Outbox, runner: RequestRunner) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    reader = threading.Thread(target=_read_tasks, args=(task_conn, loop, inbox), daemon=True)
    reader.start()
    running: dict[tuple[int, int], asyncio.Task[None]] = {}

    async def run_task(task: Task) -> None:
        value = await runner.run(task.index, task.request)
        outbox.put(Outcome.of(task.batch, task.index, value))

    outbox.put(Ready(os.getpid()))
    while (message := await inbox.get()) is not None:
        if isinstance(message, Exception):
            raise message
        for item in message:
            if isinstance(item, Task):
                key = (item.batch, item.index)
                running[key] = job = loop.create_task(run_task(item))
                job.add_done_callback(partial(_forget, running, key))
            elif isinstance(item, Cancel):
                for key in [key for key in running if key[0] == item.batch]:
                    running.pop(key).cancel()
    for job in running.values():
        job.cancel()
    await asyncio.gather(*running.values(), return_exceptions=True)
    await runner.aclose()


def main(task_conn: Connection, result_conn: Connection, config_blob: bytes) -> None:
    """Worker process entry point: serve tasks until the parent closes the task pipe."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outbox = _Outbox(result_conn)
    try:
        config: WorkerConfig = cloudpickle.loads(config_blob)
        runner = RequestRunner(config)
        runner.open()
    except Exception:  # report any start-up failure, then exit
        outbox.put(StartupFailed(traceback.format_exc()))
        outbox.close()
        sys.exit(_STARTUP_FAILED_EXIT_CODE)
    asyncio.run(_serve(task_conn, outbox, runner))
    outbox.close()
