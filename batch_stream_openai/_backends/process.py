"""The default backend: one worker process per worker (``forkserver`` or ``spawn``).

``forkserver`` (the default where the platform has it, as in CPython 3.14 on Linux):
workers fork from a server process that imported the SDK once, so a pool after the first
(and every respawn after a crash) starts in a fraction of a second instead of paying
~1 s of imports per worker. The server was started earlier, so each worker is handed the
parent's environment, working directory and ``sys.path`` as they are now, and takes
them on before it does anything: it sees what a freshly spawned one would.
``spawn`` starts a fresh interpreter per worker, which re-imports the main module.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from typing import Any

from .._signals import GROUP_SIGNALS
from .base import PipeWorker

__all__ = ["WorkerProcess", "default_start_method", "process_context", "start_fork_server"]

# Time a hung worker gets between SIGTERM and SIGKILL.
_KILL_GRACE_S = 2.0
# Signals that reach a whole process group (Ctrl-C, a scheduler's SIGTERM).


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_entry(parent: dict[str, Any] | None, *args: Any) -> None:
    if parent is not None:  # forked from the server: take on the parent's state of now
        os.environ.clear()
        os.environ.update(parent["environ"])
        with contextlib.suppress(OSError):
            os.chdir(parent["cwd"])
        sys.path[:] = parent["sys_path"]
    # Imported here, in the child: the parent never pays for importing `openai`.
    from .._worker.main import main

    main(*args)


def process_context(start_method: str) -> BaseContext:
    """The multiprocessing context for worker processes."""
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(["batch_stream_openai._backends.preload"])
    return context


def start_fork_server() -> None:
    """Start the fork server now, if workers will fork from one: its imports (~0.3 s) then
    run while the caller's process goes on (importing the pool, building requests), and
    the first pool forks from a server that is ready, or nearly. Only the main thread of
    a process that has finished starting can start it (the signals it must ignore are the
    main thread's; a child re-running the caller's script as it starts may not)."""
    if default_start_method() != "forkserver" or multiprocessing.parent_process() is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    process_context("forkserver")
    with _group_signals_ignored(), contextlib.suppress(RuntimeError):
        # RuntimeError: this process is itself starting (multiprocessing refuses).
        multiprocessing.forkserver.ensure_running()


class WorkerProcess(PipeWorker):
    """A worker process.

    Parameters:
        context: the multiprocessing context (`process_context`).
        config_blob: the cloudpickled `WorkerConfig`.
        slot: a stable number for the process name.
    """

    def __init__(self, context: BaseContext, config_blob: bytes, slot: int) -> None:
        name = f"batch-stream-openai-worker-{slot}"
        super().__init__(name)
        parent = None
        if context.get_start_method() == "forkserver":
            parent = {"environ": dict(os.environ), "cwd": os.getcwd(), "sys_path": list(sys.path)}
        self.process: multiprocessing.process.BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_worker_entry,
            args=(parent, *self.worker_ends, config_blob),
            name=name,
            daemon=True,
        )
        if parent is not None:
            # Forked children take the fork server's dispositions: only its own start
            # needs the signals ignored, and other threads of ours never lose one.
            with _group_signals_ignored():
                multiprocessing.forkserver.ensure_running()
        with contextlib.ExitStack() as stack:
            if parent is None:
                stack.enter_context(_group_signals_ignored())
            stack.enter_context(_main_module_spawnable())
            self.process.start()
        self._pid: int | None = self.process.pid
        self._sentinel: int = self.process.sentinel
        self._aborted_at: float | None = None
        # Our copies of the child's ends must go, or we would never see EOF when it dies.
        self.close_worker_ends()

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
        """Close its task pipe and wait until `deadline`, then SIGKILL.

        Workers ignore SIGTERM (see `worker.main`), so there is no use in sending one.
        """
        # Reading stops first, so a worker blocked writing a large result gets EPIPE.
        self.close_parent_ends()
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def abort(self) -> None:
        """SIGTERM now; SIGKILL on a later call, once the grace period is over."""
        now = time.monotonic()
        with contextlib.suppress(OSError, ValueError):
            if self._aborted_at is None:
                self._aborted_at = now
                self.process.terminate()
            elif now - self._aborted_at > _KILL_GRACE_S:
                self.process.kill()


@contextlib.contextmanager
def _group_signals_ignored() -> Iterator[None]:
    """Start a child with Ctrl-C and SIGTERM ignored from its first instruction.

    An ignored signal stays ignored across exec, so a Ctrl-C while the worker imports
    prints no traceback; the worker keeps ignoring them (the parent decides when workers
    stop). In the parent the signals are blocked meanwhile, not lost: one that arrives
    stays pending (Linux never discards a blocked signal) and is handled once restored,
    as long as no other thread takes it meanwhile (the threads this library starts in
    the parent block them: `block_group_signals`). Only the main thread may change
    signal handlers; elsewhere the child starts as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in GROUP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def _main_module_spawnable() -> Iterator[None]:
    """Let ``spawn`` start workers from a script it cannot re-import (``python - <<EOF``).

    ``spawn`` re-runs ``__main__.__file__`` in each worker; a script read from stdin has
    ``'<stdin>'`` there, which no worker can open. Like ``python -c``, such a main module
    is then not re-imported at all (the postprocess and the requests travel by value).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str) or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
