"""Keeps a pool's workers alive: start them, hear them, replace the dead, end the hung.

The dispatcher decides what each worker runs; the supervisor keeps the right number of
healthy workers, consuming their lifecycle messages (Ready, StartupFailed, Heartbeat)
itself. What it hands back to the batch loop is only what the dispatcher needs: the
outcomes each worker sent, and the workers that exited (with how they ended).
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Pipe
from typing import Any

from .._backends import Worker
from .._wire.protocol import Exit, Heartbeat, Outcome, Ready, StartupFailed
from ..errors import WorkerStartupError

__all__ = ["MAIN_GUARD_HINT", "Supervisor"]

# Workers in a row that may exit before becoming ready before the pool gives up: a broken
# environment fails fast instead of respawning forever.
MAX_STARTUP_FAILURES = 3
# Killed from outside while starting (a chaos script, an operator): that says nothing about
# whether workers can start, so it is not a start-up failure.
_KILLED_FROM_OUTSIDE = (-signal.SIGKILL, -signal.SIGTERM)
# A worker that has not said it is ready after this long is treated as hung.
_STARTUP_TIMEOUT_S = 60.0
# Respawns allowed per window (at least this many, and 4 per worker): a request or a
# machine that kills every worker slows to this pace instead of forking without end.
_RESPAWN_WINDOW_S = 1.0
_MIN_RESPAWNS_PER_WINDOW = 8
# Time workers get to exit on their own at close before they are ended.
_CLOSE_GRACE_S = 1.0

MAIN_GUARD_HINT = (
    "Each worker process imports your main module (as __mp_main__), with start_method "
    "'forkserver' (the default) and 'spawn' alike, so code at its module level runs again "
    "in every worker. If your script calls batch_stream_openai (or does anything meant to "
    'run once) at module level, put that code under `if __name__ == "__main__":`.'
)


@dataclass
class _Health:
    """What the supervisor knows of one worker."""

    started_at: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)  # any message counts
    ready: bool = False
    postprocess_busy_s: float = 0.0  # from its last heartbeat
    hung: str | None = None  # why the watchdog is ending it, once it is


class Supervisor:
    """Keeps `size` workers alive for a pool.

    Parameters:
        start_worker: starts a worker, given a slot number (see `backends`).
        size: how many workers to keep.
        hang_timeout: seconds a worker that owes results may stay silent, or spend in one
            postprocess call, before it is ended (None: never).
    """

    def __init__(
        self, start_worker: Callable[[int], Worker], size: int, hang_timeout: float | None
    ) -> None:
        self.hang_timeout = hang_timeout
        self.broken: WorkerStartupError | None = None  # set when workers cannot start
        self._start_worker = start_worker
        self._size = size
        self._health: dict[Worker, _Health] = {}  # {worker: <_Health>}, the live workers
        self._slots = itertools.count()
        self._greeting: list[Any] = []  # what every new worker is sent first
        self._startup_failures = 0
        self._last_startup_error = ""
        self._respawns: deque[float] = deque()  # monotonic times of recent respawns
        self._spawns_owed = 0  # respawns held back by the rate limit
        self._wake_reader, self._wake_writer = Pipe(duplex=False)
        # One selector for the pool's life: every live worker's result pipe and sentinel,
        # the wake pipe, and the task pipes of workers with unsent bytes.
        self._selector = selectors.PollSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._waiting_for_room: set[Worker] = set()

    def __repr__(self) -> str:
        return f"<Supervisor {len(self._health)}/{self._size} owed={self._spawns_owed}>"

    @property
    def workers(self) -> list[Worker]:
        """The live workers, ready or still starting."""
        return list(self._health)

    def ready(self) -> list[Worker]:
        """The workers that may be sent tasks: started, and not being ended."""
        return [w for w, health in self._health.items() if health.ready and health.hung is None]

    def start(self) -> None:
        """Start the first workers."""
        for _ in range(self._size):
            self._spawn()

    def begin(self, greeting: list[Any]) -> None:
        """Send `greeting` to every worker now, and first to every worker started later."""
        self._greeting = greeting
        now = time.monotonic()
        for worker, health in self._health.items():
            health.last_heard = now  # idle between batches is not hung
            if greeting:
                worker.send(greeting)

    def broadcast(self, messages: list[Any]) -> None:
        """Send `messages` to every live worker."""
        for worker in self._health:
            worker.send(messages)

    def wake(self) -> None:
        """Make a `wait` in progress (in another thread) return now."""
        with contextlib.suppress(OSError):
            self._wake_writer.send_bytes(b"")

    def wait(
        self, timeout: float, owing_since_of: Callable[[Worker], float | None]
    ) -> tuple[list[tuple[Worker, list[Outcome]]], list[tuple[Worker, Exit]]]:
        """Wait up to `timeout` s: the outcomes that arrived, and the workers that exited.

        An exited worker's last outcomes come before its exit; it is replaced (at the
        respawn pace) unless workers cannot start at all, which sets `broken`. Workers
        that owe results (`owing_since_of` says since when; None: they owe nothing) and
        fell silent are ended on the way.
        """
        if self._spawns_owed:
            timeout = min(timeout, self._respawn_delay())
        heard: list[tuple[Worker, list[Outcome]]] = []
        exited: list[Worker] = []
        for worker, event in self._select(max(0.0, timeout)):
            if event == "room":
                worker.flush()
            elif event == "exit" or (messages := worker.receive()) is None:
                exited.append(worker)
            else:
                heard.append((worker, self._consume(worker, messages)))
        exits = []
        for worker in dict.fromkeys(exited):
            heard.append((worker, self._consume(worker, worker.drain())))
            exits.append((worker, self._retire(worker)))
        self._watch(owing_since_of)
        self._pay_owed_spawns()
        return heard, exits

    def _select(self, timeout: float) -> list[tuple[Worker, str]]:
        """Wait for results, exits, and room in task pipes that hold unsent bytes.

        Returns ``(worker, event)`` pairs, event one of "result", "exit", "room".
        """
        for worker in self._health:
            if worker.unsent and worker not in self._waiting_for_room:
                self._waiting_for_room.add(worker)
                self._selector.register(
                    worker.task_channel, selectors.EVENT_WRITE, (worker, "room")
                )
        events = [key.data for key, _mask in self._selector.select(timeout)]
        for worker in list(self._waiting_for_room):
            if not worker.unsent or worker not in self._health:
                self._waiting_for_room.discard(worker)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(worker.task_channel)
        if None in events:
            with contextlib.suppress(EOFError, OSError):
                self._wake_reader.recv_bytes()
        return [event for event in events if event is not None]

    def _forget(self, worker: Worker) -> None:
        """Stop watching `worker`'s pipes (before they are closed)."""
        for channel in (worker.result_channel, worker.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(channel)
        if worker in self._waiting_for_room:
            self._waiting_for_room.discard(worker)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(worker.task_channel)

    def stop_all(self) -> None:
        """Stop every worker within about a second: ask, wait, then end them."""
        workers = list(self._health)
        self._health.clear()
        for worker in workers:
            self._forget(worker)
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + _CLOSE_GRACE_S
        for worker in workers:
            worker.stop(deadline)

    def _consume(self, worker: Worker, messages: list[Any]) -> list[Outcome]:
        """Act on lifecycle messages; return the outcomes among `messages`."""
        health = self._health.get(worker)
        if health is None:
            return [m for m in messages if isinstance(m, Outcome)]
        health.last_heard = time.monotonic()
        outcomes = []
        for message in messages:
            if isinstance(message, Outcome):
                outcomes.append(message)
            elif isinstance(message, Heartbeat):
                health.postprocess_busy_s = message.postprocess_busy_s
            elif isinstance(message, Ready):
                health.ready = True
                self._startup_failures = 0
            elif isinstance(message, StartupFailed):
                self._last_startup_error = message.error
        return outcomes

    def _retire(self, worker: Worker) -> Exit:
        """Take an exited worker out, release it, and arrange its replacement."""
        health = self._health.pop(worker)
        self._forget(worker)
        worker.join(0.5)
        exit_ = Exit(worker.exitcode, health.ready, health.hung)
        worker.stop(time.monotonic())
        killed_by_others = exit_.exitcode in _KILLED_FROM_OUTSIDE and exit_.hung is None
        if not exit_.was_ready and not killed_by_others:
            self._startup_failures += 1
            if self._startup_failures >= MAX_STARTUP_FAILURES:
                cause = self._last_startup_error or (
                    f"the last worker exited with code {exit_.exitcode}. {MAIN_GUARD_HINT}"
                )
                self.broken = WorkerStartupError(
                    f"{self._startup_failures} worker processes in a row exited before they "
                    "were ready",
                    cause=cause,
                )
        if self.broken is None:
            self._spawns_owed += 1
        return exit_

    def _watch(self, owing_since_of: Callable[[Worker], float | None]) -> None:
        """End workers that stopped answering; their exit then shows in `wait`."""
        if self.hang_timeout is None:
            return
        now = time.monotonic()
        for worker, health in self._health.items():
            if health.hung is not None:
                worker.abort()  # escalate, if the backend has a next step
                continue
            if not health.ready:
                silent_for = now - health.started_at
                limit = max(self.hang_timeout, _STARTUP_TIMEOUT_S)
            elif (owing_since := owing_since_of(worker)) is not None:
                # An idle worker sends nothing: its silence counts from when work came.
                silent_for = now - max(health.last_heard, owing_since)
                limit = self.hang_timeout
            else:
                continue
            if health.postprocess_busy_s > self.hang_timeout:  # the more telling of the two
                health.hung = f"one postprocess call ran for {health.postprocess_busy_s:.0f} s"
            elif silent_for > limit:
                health.hung = f"it sent nothing for {silent_for:.0f} s"
            if health.hung is not None:
                worker.abort()

    def _spawn(self) -> None:
        worker = self._start_worker(next(self._slots))
        self._health[worker] = _Health()
        self._selector.register(worker.result_channel, selectors.EVENT_READ, (worker, "result"))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, (worker, "exit"))
        if self._greeting:
            worker.send(self._greeting)

    def _pay_owed_spawns(self) -> None:
        """Start the replacements the rate limit now allows (a crash storm waits here)."""
        while self._spawns_owed and self._respawn_delay() == 0:
            self._spawns_owed -= 1
            self._respawns.append(time.monotonic())
            self._spawn()

    def _respawn_delay(self) -> float:
        """Seconds until the respawn rate limit allows another respawn."""
        window_start = time.monotonic() - _RESPAWN_WINDOW_S
        while self._respawns and self._respawns[0] < window_start:
            self._respawns.popleft()
        if len(self._respawns) < max(_MIN_RESPAWNS_PER_WINDOW, 4 * self._size):
            return 0.0
        return self._respawns[0] - window_start
