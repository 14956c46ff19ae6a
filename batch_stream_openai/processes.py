"""A worker seen from the parent: start it, feed it, read it, stop it.

Each worker has its own two pipes, so a worker killed while writing can only tear its
own result pipe; no lock is shared between workers (unlike `multiprocessing.Queue`,
which a process killed while holding its lock can wedge for everyone).

`WorkerProcess` is the normal worker; `WorkerThread` runs the very same worker code in a
thread of the parent (``workers=0``: debugging, or where subprocesses are forbidden).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["PipeSentinelWorker", "Worker", "WorkerProcess", "WorkerThread"]


def _worker_entry(*args: Any) -> None:
    # Imported here, in the child: the parent never pays for importing `openai`.
    from . import worker

    worker.main(*args)


class Worker:
    """What the pool needs of any worker: its pipes, its liveness, its stopping."""

    def __init__(self, context: BaseContext) -> None:
        self._task_reader, self._task_writer = context.Pipe(duplex=False)
        self._result_reader, self._result_writer = context.Pipe(duplex=False)
        self.ready = False
        self.started_at = time.monotonic()
        self.last_heard = self.started_at  # any message from the worker counts
        self.postprocess_busy_s = 0.0  # from its last heartbeat
        self.hung: str | None = None  # why the watchdog ended it, once it did
        self._aborted_at: float | None = None

    def __repr__(self) -> str:
        state = "ready" if self.ready else "starting"
        return f"<{type(self).__name__} pid={self.pid} {state} exitcode={self.exitcode}>"

    @property
    def pid(self) -> int | None:
        """The worker's process id (the parent's own for a thread)."""
        raise NotImplementedError

    @property
    def exitcode(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) after."""
        raise NotImplementedError

    @property
    def sentinel(self) -> Any:
        """Ready for `multiprocessing.connection.wait` when the worker has exited."""
        raise NotImplementedError

    @property
    def result_channel(self) -> Connection:
        """What `multiprocessing.connection.wait` watches for outcomes."""
        return self._result_reader

    def send(self, messages: list[Any]) -> bool:
        """Send messages; False when the worker is gone (its death is handled elsewhere)."""
        try:
            self._task_writer.send(messages)
        except (OSError, ValueError):
            return False
        return True

    def receive(self) -> list[Any] | None:
        """One batch of messages, or None at EOF (the worker exited or tore a frame)."""
        try:
            messages: list[Any] = self._result_reader.recv()
        except (EOFError, OSError):
            return None
        return messages

    def drain(self) -> list[Any]:
        """Every complete message still in the pipe of an exited worker."""
        drained: list[Any] = []
        with contextlib.suppress(EOFError, OSError):
            while self._result_reader.poll():
                batch = self.receive()
                if batch is None:
                    break
                drained.extend(batch)
        return drained

    def request_stop(self) -> None:
        """Close the task pipe: the worker finishes up and exits on its own."""
        with contextlib.suppress(OSError):
            self._task_writer.close()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the worker to exit."""
        raise NotImplementedError

    def stop(self, deadline: float) -> None:
        """Make sure the worker is gone by `deadline` (monotonic), forcibly if need be."""
        raise NotImplementedError

    def abort(self, reason: str, grace: float) -> None:
        """End a hung worker: SIGTERM now, SIGKILL if it is still there `grace` s later.

        Call again on later polls to escalate; its exit then shows on `sentinel`.
        """
        now = time.monotonic()
        if self._aborted_at is None:
            self.hung, self._aborted_at = reason, now
            self._signal(kill=False)
        elif now - self._aborted_at > grace:
            self._signal(kill=True)

    def _signal(self, kill: bool) -> None:
        raise NotImplementedError


class WorkerProcess(Worker):
    """A worker process (``spawn`` or ``forkserver``).

    Parameters:
        context: the multiprocessing context.
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the process name.
    """

    def __init__(self, context: BaseContext, config_blob: bytes, slot: int) -> None:
        super().__init__(context)
        self.process: multiprocessing.process.BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_worker_entry,
            args=(self._task_reader, self._result_writer, config_blob),
            name=f"batch-stream-openai-worker-{slot}",
            daemon=True,
        )
        self.process.start()
        self._pid: int | None = self.process.pid
        # Our copies of the child's ends must go, or we would never see EOF when it dies.
        self._task_reader.close()
        self._result_writer.close()
        self._sentinel: int = self.process.sentinel

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def exitcode(self) -> int | None:
        code: int | None = self.process.exitcode
        return code

    @property
    def sentinel(self) -> int:
        return self._sentinel

    def join(self, timeout: float) -> None:
        self.process.join(timeout)

    def stop(self, deadline: float) -> None:
        """Wait until `deadline`, then SIGTERM, then SIGKILL."""
        self.request_stop()
        # Closed first, so a worker blocked writing a large result gets EPIPE and exits.
        with contextlib.suppress(OSError):
            self._result_reader.close()
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(0.5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def _signal(self, kill: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            if kill:
                self.process.kill()
            else:
                self.process.terminate()


class PipeSentinelWorker(Worker):
    """A worker that is not a process of ours (a thread, a Ray actor): its end shows on a
    pipe it closes, which `multiprocessing.connection.wait` watches like a process sentinel.
    """

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._exited_reader, self._exited_writer = context.Pipe(duplex=False)
        self._exitcode: int | None = None

    @property
    def exitcode(self) -> int | None:
        return self._exitcode

    @property
    def sentinel(self) -> Connection:
        return self._exited_reader

    def _mark_exited(self, exitcode: int) -> None:
        """Record the exit and make it visible: no more results, sentinel readable."""
        self._exitcode = exitcode
        for conn in (self._result_writer, self._exited_writer):
            with contextlib.suppress(OSError):
                conn.close()

    def _close_parent_ends(self, *extra: Connection) -> None:
        for conn in (self._result_reader, self._exited_reader, *extra):
            with contextlib.suppress(OSError):
                conn.close()


class WorkerThread(PipeSentinelWorker):
    """The worker code in a daemon thread of the parent, over the same pipes.

    Parameters:
        context: the multiprocessing context (only its `Pipe` is used).
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the thread name.
    """

    def __init__(self, context: BaseContext, config_blob: bytes, slot: int) -> None:
        super().__init__(context)
        self._thread = threading.Thread(
            target=self._run,
            args=(config_blob,),
            name=f"batch-stream-openai-worker-{slot}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, config_blob: bytes) -> None:
        exitcode = 1
        try:
            _worker_entry(self._task_reader, self._result_writer, config_blob)
            exitcode = 0
        finally:
            self._mark_exited(exitcode)

    @property
    def pid(self) -> int | None:
        return os.getpid()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _signal(self, kill: bool) -> None:
        pass  # a thread cannot be ended from outside; closing its pipes is all we can do

    def stop(self, deadline: float) -> None:
        """Wait until `deadline`; a thread cannot be killed, so a stuck one is left behind."""
        self.request_stop()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._close_parent_ends(self._task_reader)
