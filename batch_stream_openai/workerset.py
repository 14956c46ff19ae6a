"""The live workers of a pool: start them, hear them, replace the dead, end the hung.

The pool's dispatcher decides what each worker runs; this module only keeps the right
number of healthy workers alive, at a bounded pace when they keep dying.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from .errors import WorkerStartupError
from .processes import Worker

__all__ = ["MAIN_GUARD_HINT", "WorkerSet", "stop_workers"]

# Workers in a row that may exit before becoming ready before the pool gives up: a broken
# environment fails fast instead of respawning forever.
MAX_STARTUP_FAILURES = 3
# Killed from outside while starting (a chaos script, an operator): that says nothing about
# whether workers can start, so it is not a start-up failure.
_KILLED_FROM_OUTSIDE = (-signal.SIGKILL, -signal.SIGTERM)
# A worker that has not said it is ready after this long is treated as hung.
_STARTUP_TIMEOUT_S = 60.0
# Time a worker ended by the watchdog gets between SIGTERM and SIGKILL.
_KILL_GRACE_S = 2.0
# Respawns allowed per window (at least this many, and 4 per worker): a request or a
# machine that kills every worker slows to this pace instead of forking without end.
_RESPAWN_WINDOW_S = 1.0
_MIN_RESPAWNS_PER_WINDOW = 8
# Time stop_workers gives workers to exit on their own before terminating them.
_CLOSE_GRACE_S = 1.0

MAIN_GUARD_HINT = (
    "Worker processes are started with the 'spawn' method and re-import your main module. "
    "If your script calls batch_stream_openai at module level, put that code under "
    '`if __name__ == "__main__":`.'
)


class WorkerSet:
    """Keeps `size` workers alive for a pool.

    Parameters:
        new_worker: starts a worker, given a slot number.
        size: how many workers to keep.
        hang_timeout: seconds a worker that owes results may stay silent, or spend in one
            postprocess call, before it is ended (None: never).
    """

    def __init__(
        self, new_worker: Callable[[int], Worker], size: int, hang_timeout: float | None
    ) -> None:
        self.workers: list[Worker] = []
        self.hang_timeout = hang_timeout
        self._new_worker = new_worker
        self._size = size
        self._slots = itertools.count()
        self._greeting: list[Any] = []  # what every new worker is sent first
        self._startup_failures = 0
        self._last_startup_error = ""
        self._respawns: deque[float] = deque()  # monotonic times of recent respawns
        self._spawns_owed = 0  # respawns held back by the rate limit

    def __repr__(self) -> str:
        return f"<WorkerSet {len(self.workers)}/{self._size} owed={self._spawns_owed}>"

    @property
    def any_ready(self) -> bool:
        return any(worker.ready for worker in self.workers)

    def start(self) -> None:
        """Start the first workers."""
        for _ in range(self._size):
            self._spawn()

    def greet(self, messages: list[Any]) -> None:
        """Send `messages` to every worker now, and first to every worker started later."""
        self._greeting = messages
        for worker in self.workers:
            worker.last_heard = time.monotonic()  # idle between batches is not hung
            if messages:
                worker.send(messages)

    def broadcast(self, messages: list[Any]) -> None:
        """Send `messages` to every live worker."""
        for worker in self.workers:
            worker.send(messages)

    def listen(self, timeout: float) -> tuple[list[tuple[Worker, list[Any]]], list[Worker]]:
        """Wait up to `timeout` s; return ``(worker, messages)`` that arrived, and the exited."""
        if self._spawns_owed:
            timeout = min(timeout, self._respawn_delay())
        by_channel = {worker.result_channel: worker for worker in self.workers}
        by_sentinel = {worker.sentinel: worker for worker in self.workers}
        heard: list[tuple[Worker, list[Any]]] = []
        exited: list[Worker] = []
        for ready in wait([*by_channel, *by_sentinel], timeout=max(0.0, timeout)):
            worker = by_channel.get(ready)  # type: ignore[call-overload]
            if worker is None:
                exited.append(by_sentinel[ready])
                continue
            messages = worker.receive()
            if messages is None:
                exited.append(worker)
            else:
                worker.last_heard = time.monotonic()
                heard.append((worker, messages))
        return heard, list(dict.fromkeys(exited))

    def on_ready(self, worker: Worker) -> None:
        worker.ready = True
        self._startup_failures = 0

    def on_startup_failed(self, error: str) -> None:
        self._last_startup_error = error

    def remove(self, worker: Worker) -> int | None:
        """Take an exited worker out, release it, and return its exit code."""
        worker.join(0.5)
        exitcode = worker.exitcode
        self.workers.remove(worker)
        worker.stop(time.monotonic())
        return exitcode

    def replace(self, worker: Worker, exitcode: int | None) -> None:
        """Start a replacement for a removed worker, unless workers cannot start at all."""
        if not worker.ready and exitcode not in _KILLED_FROM_OUTSIDE:
            self._startup_failures += 1
            if self._startup_failures >= MAX_STARTUP_FAILURES:
                cause = self._last_startup_error or (
                    f"the last worker exited with code {exitcode}. {MAIN_GUARD_HINT}"
                )
                raise WorkerStartupError(
                    f"{self._startup_failures} worker processes in a row exited before they "
                    "were ready",
                    cause=cause,
                )
        self._spawns_owed += 1
        self.pay_owed_spawns()

    def pay_owed_spawns(self) -> None:
        """Start the replacements the rate limit now allows (a crash storm waits here)."""
        while self._spawns_owed and self._respawn_delay() == 0:
            self._spawns_owed -= 1
            self._respawns.append(time.monotonic())
            self._spawn()

    def watch(self, owes_results: Callable[[Worker], bool]) -> None:
        """End workers that stopped answering; their exit then shows in `listen`."""
        if self.hang_timeout is None:
            return
        now = time.monotonic()
        for worker in self.workers:
            if not worker.ready:
                silent_for = now - worker.started_at
                limit = max(self.hang_timeout, _STARTUP_TIMEOUT_S)
            elif owes_results(worker):
                silent_for = now - worker.last_heard
                limit = self.hang_timeout
            else:
                continue
            if silent_for > limit:
                worker.abort(f"it sent nothing for {silent_for:.0f} s", _KILL_GRACE_S)
            elif worker.postprocess_busy_s > self.hang_timeout:
                busy = worker.postprocess_busy_s
                worker.abort(f"one postprocess call ran for {busy:.0f} s", _KILL_GRACE_S)

    def _spawn(self) -> None:
        worker = self._new_worker(next(self._slots))
        self.workers.append(worker)
        if self._greeting:
            worker.send(self._greeting)

    def _respawn_delay(self) -> float:
        """Seconds until the respawn rate limit allows another respawn."""
        window_start = time.monotonic() - _RESPAWN_WINDOW_S
        while self._respawns and self._respawns[0] < window_start:
            self._respawns.popleft()
        if len(self._respawns) < max(_MIN_RESPAWNS_PER_WINDOW, 4 * self._size):
            return 0.0
        return self._respawns[0] - window_start


def stop_workers(workers: list[Worker]) -> None:
    """Stop every worker within about a second: ask, wait, terminate, kill."""
    for worker in workers:
        worker.request_stop()
    deadline = time.monotonic() + _CLOSE_GRACE_S
    for worker in workers:
        worker.stop(deadline)
    workers.clear()
