"""Requests whose workers died while running them: re-sent, set apart, then given up.

One death proves nothing (an OOM kill, an operator): the request is simply re-sent. Two
make it a suspect: it is quarantined, and runs only on a worker with no other request
that ever crashed, beside fresh requests only. So a poison (a suspect itself after two
deaths) can kill an innocent suspect at most while that one is still fresh: it cannot
take innocents with it again and again, and random worker deaths cost no throughput
(nothing waits for a worker to drain). After `MAX_CRASHES_PER_REQUEST` re-sends the
request yields `WorkerCrashedError`, so one that kills every worker it lands on cannot
take the pool down with it.
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
    """The suspects of one batch: those waiting for a clean worker, and where each runs."""

    def __init__(self) -> None:
        self._waiting: deque[int] = deque()  # indices whose workers died twice or more
        self._suspect_on: dict[W, int] = {}  # {worker: quarantined index it runs}

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
        """The workers not running a suspect (fresh requests may go there)."""
        return [worker for worker in workers if worker not in self._suspect_on]

    def release(
        self,
        workers: Sequence[W],
        ran_a_crash: Callable[[W], bool],
        send: Callable[[int, list[W]], W | None],
    ) -> None:
        """Send each waiting suspect to a worker that runs no request that ever crashed.

        `send(index, among)` sends it to one of `among` and says which (None: a budget
        holds it back, and the rest wait too).
        """
        while self._waiting:
            clean = [w for w in self.innocent(workers) if not ran_a_crash(w)]
            worker = send(self._waiting[0], clean) if clean else None
            if worker is None:
                return
            self._suspect_on[worker] = self._waiting.popleft()

    def settled(self, worker: W, index: int) -> None:
        """`index` is done on `worker`: the worker is no longer a suspect's."""
        if self._suspect_on.get(worker) == index:
            del self._suspect_on[worker]

    def forget(self, worker: W) -> None:
        """`worker` exited."""
        self._suspect_on.pop(worker, None)

    def keep_only(self, owed: Container[int]) -> None:
        """Drop the waiting suspects that are no longer owed (finished otherwise)."""
        self._waiting = deque(index for index in self._waiting if index in owed)

    def clear(self) -> None:
        self._waiting.clear()
        self._suspect_on.clear()
