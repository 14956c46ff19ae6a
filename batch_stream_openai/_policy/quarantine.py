"""Requests whose workers died while running them: re-sent, set apart, then given up.

One death proves nothing (an OOM kill, an operator): the request is simply re-sent. Two
make it a suspect: it is quarantined, and runs alone, on a worker that runs nothing else.
Beside other requests, a suspect would die again with any poison among them (and an
innocent one would end as `WorkerCrashedError` in a batch with a few poisons); alone, a
death is its own doing. So one worker is drained for the suspects: no new request goes to
it until it is idle, then it runs the first suspect, and the other workers go on with
the rest. After `MAX_CRASHES_PER_REQUEST` re-sends the request yields
`WorkerCrashedError`, so one that kills every worker it lands on cannot take the pool down
with it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Hashable, Sequence
from typing import Generic, Literal, TypeVar

__all__ = ["MAX_CRASHES_PER_REQUEST", "Quarantine"]

W = TypeVar("W", bound=Hashable)

# Times an index may be re-sent after its worker died while running it.
MAX_CRASHES_PER_REQUEST = 3
_QUARANTINE_AFTER_CRASHES = 2


class Quarantine(Generic[W]):
    """The suspects of one batch: those waiting, the worker drained for them, and where
    each runs."""

    def __init__(self) -> None:
        self._waiting: deque[int] = deque()  # indices whose workers died twice or more
        self._suspect_on: dict[W, int] = {}  # {worker: the suspect it runs alone}
        self._draining: W | None = None  # takes no new request: the next suspect's

    def __len__(self) -> int:
        return len(self._waiting)

    @staticmethod
    def verdict(crashes: int) -> Literal["re-send", "quarantine", "give up"]:
        """What to do with a request whose workers died `crashes` times in all."""
        if crashes > MAX_CRASHES_PER_REQUEST:
            return "give up"
        return "quarantine" if crashes >= _QUARANTINE_AFTER_CRASHES else "re-send"

    def add(self, index: int) -> None:
        self._waiting.append(index)

    def innocent(self, workers: Sequence[W]) -> list[W]:
        """The workers new requests may go to: neither running a suspect nor drained."""
        return [w for w in workers if w not in self._suspect_on and w != self._draining]

    def release(
        self,
        workers: Sequence[W],
        load: Callable[[W], int],
        send: Callable[[int, list[W]], W | None],
    ) -> None:
        """Send each waiting suspect alone to an idle worker; while none is idle, drain
        the least loaded one (`load`: the requests a worker runs).

        `send(index, among)` sends it to one of `among` and says which (None: a budget
        holds it back, and the rest wait too).
        """
        while self._waiting:
            free = [w for w in workers if w not in self._suspect_on]
            idle = [w for w in free if load(w) == 0]
            if not idle:
                if self._draining not in free:
                    self._draining = min(free, key=load, default=None)
                return
            drained = self._draining if self._draining in idle else idle[0]
            worker = send(self._waiting[0], [drained])
            if worker is None:
                return
            self._suspect_on[worker] = self._waiting.popleft()
        self._draining = None  # no suspect waits

    def settled(self, worker: W, index: int) -> None:
        """`index` is done on `worker`: the worker is no longer a suspect's."""
        if self._suspect_on.get(worker) == index:
            del self._suspect_on[worker]

    def forget(self, worker: W) -> None:
        """`worker` exited."""
        self._suspect_on.pop(worker, None)
        if self._draining == worker:
            self._draining = None

    def keep_only(self, owed: Container[int]) -> None:
        """Drop the waiting suspects that are no longer owed (finished otherwise)."""
        self._waiting = deque(index for index in self._waiting if index in owed)
        if not self._waiting:
            self._draining = None

    def clear(self) -> None:
        self._waiting.clear()
        self._suspect_on.clear()
        self._draining = None
