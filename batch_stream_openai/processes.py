"""One worker process seen from the parent: start it, feed it, read it, stop it.

Each worker has its own two pipes, so a worker killed while writing can only tear its
own result pipe; no lock is shared between workers (unlike `multiprocessing.Queue`,
which a process killed while holding its lock can wedge for everyone).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["WorkerProcess"]


def _worker_entry(*args: Any) -> None:
    # Imported here, in the child: the parent never pays for importing `openai`.
    from . import worker

    worker.main(*args)


class WorkerProcess:
    """A started worker process and the parent's ends of its pipes.

    Parameters:
        context: the multiprocessing context (``spawn`` or ``forkserver``).
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the worker's name.
    """

    def __init__(self, context: BaseContext, config_blob: bytes, slot: int) -> None:
        task_reader, self._task_writer = context.Pipe(duplex=False)
        self._result_reader, result_writer = context.Pipe(duplex=False)
        self.process: multiprocessing.process.BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_worker_entry,
            args=(task_reader, result_writer, config_blob),
            name=f"batch-stream-openai-worker-{slot}",
            daemon=True,
        )
        self.process.start()
        # Our copies of the child's ends must go, or we would never see EOF when it dies.
        task_reader.close()
        result_writer.close()
        self.ready = False
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        state = "ready" if self.ready else "starting"
        return f"<WorkerProcess pid={self.process.pid} {state} exitcode={self.process.exitcode}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def result_channel(self) -> Connection:
        """What `multiprocessing.connection.wait` watches for outcomes."""
        return self._result_reader

    @property
    def sentinel(self) -> int:
        """Ready for `wait` when the process has exited."""
        return self.process.sentinel

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

    def stop(self, deadline: float) -> None:
        """Make sure the process is gone by `deadline` (monotonic): wait, terminate, kill."""
        self.request_stop()
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(0.5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        with contextlib.suppress(OSError):
            self._result_reader.close()
        with contextlib.suppress(ValueError):
            self.process.close()
