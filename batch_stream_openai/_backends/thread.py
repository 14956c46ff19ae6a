"""Workers as threads of the parent: ``backend="thread"`` (alias: ``workers=0``).

The very same worker code as a worker process, over the same pipes, in a daemon thread:
no subprocess, one core. For debugging, for places where subprocesses are banned, and
for a pool started inside a worker process (a `postprocess` cannot start processes).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .._wire.protocol import EXIT_OK
from .base import SignalledWorker

__all__ = ["WorkerThread"]

# The exit code of a thread that ended with an exception, or that was abandoned.
_EXIT_FAILED = 1


def _worker_entry(*args: Any) -> None:
    from .._worker.main import main

    main(*args)


class WorkerThread(SignalledWorker):
    """The worker code in a daemon thread of this process.

    Parameters:
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the thread name.
    """

    def __init__(self, config_blob: bytes, slot: int) -> None:
        name = f"batch-stream-openai-worker-{slot}"
        super().__init__(name)
        self._thread = threading.Thread(
            target=self._run, args=(config_blob,), name=name, daemon=True
        )
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return os.getpid()

    def _run(self, config_blob: bytes) -> None:
        exitcode = _EXIT_FAILED
        try:
            _worker_entry(*self.worker_ends, config_blob)
            exitcode = EXIT_OK
        except SystemExit as exc:  # the worker's way of saying it could not start
            exitcode = exc.code if isinstance(exc.code, int) else _EXIT_FAILED
        finally:
            self.close_worker_ends()
            self._exit.set(exitcode)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self, deadline: float) -> None:
        """Wait until `deadline`; a thread cannot be killed, so a stuck one is abandoned."""
        self.request_stop()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self.abort()
        self._exit.close()

    def abort(self) -> None:
        """Abandon the thread: it cannot be ended from outside, only no longer heard."""
        self.close_parent_ends()
        self._exit.set(_EXIT_FAILED)
