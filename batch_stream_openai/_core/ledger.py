"""The dispatcher's ledger: the requests owed to the caller, and where each one runs.

An `Entry` lives from when its request is read until its result is yielded. While an
attempt of it runs, `Entry.running` says where (`Attempt`); a hedged request has a
second copy running beside it, `Entry.hedge`, and the first of the two to answer
wins (`hedging.py`). The `Ledger` keeps the entries, which worker runs what, and the
slots they take of the concurrency; the `Dispatcher` decides, the ledger counts.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from .._observe.names import operation_of
from .._policy.limits import token_estimate
from .._policy.retry import Tries
from .._spending.cap import Reservation
from .._wire.protocol import Task
from ..results import Result

__all__ = ["Attempt", "Entry", "Ledger", "Schedule"]

# A worker, to the ledger: only a key (so its tests need no processes).
W = TypeVar("W", bound=Hashable)


@dataclass(slots=True, eq=False)
class Attempt:
    """One attempt in flight: where it runs and what it holds of the budgets.

    Parameters:
        worker: the worker running it (a key to the dispatcher).
        number: its attempt number (the `Task`'s and `Outcome`'s ``attempt``).
        endpoint: the fleet's number of the endpoint it went to (None: not routed
            through the fleet, as a LiteLLM model or a cache replay).
        sent_at: when it was sent (monotonic, the parent's clock).
        charge: the token budget's record of it, corrected by its answer.
        reserved: what it holds of ``max_cost`` (None: nothing was reserved, as for a
            cache replay).
    """

    worker: Any
    number: int
    endpoint: int | None
    sent_at: float
    charge: list[float] | None = None
    reserved: Reservation | None = None


@dataclass(slots=True)
class Entry:
    """A request owed to the caller (see the module docstring)."""

    payload: bytes  # the pickled request (or, for a replay, the cached Result)
    tokens: int  # estimated, charged to the token budget on every attempt
    model: str = ""
    prompt_tokens: int = 0  # for the cost reservation
    output_cap: int | None = None
    key: bytes | None = None  # its response-cache key, when the cache is on
    replay: bool = False  # a cache hit sent to a worker only for `postprocess`
    routed: bool = False  # an OpenAI-routed request: its attempts go to the fleet
    operation: str = "chat"  # its ``gen_ai.operation.name`` (chat, embeddings, ...)
    prefix: int | None = None  # its prompt's prefix key (`_wire/prefixes.py`), if keyed
    counted: bool = False  # counted against the concurrency (a request to send)
    attempts: int = 0  # attempts sent so far (retries, re-sends, failovers, hedges)
    crashes: int = 0  # workers that died while running it
    running: Attempt | None = None  # the attempt awaited; None while waiting to be sent
    hedge: Attempt | None = None  # its duplicate, when it was hedged
    hedged: bool = False  # a duplicate was sent at some point
    endpoint: int | None = None  # the endpoint of its last attempt that ended
    retry: Tries = field(default_factory=Tries)  # what the retry policy knows of it

    @classmethod
    def of(
        cls, index: int, request: Any, key: bytes | None, estimate: bool, prefix: int | None
    ) -> Entry:
        """The entry of request `index` (`estimate`: count its tokens, for `tpm` or the
        cost cap); raises ResultTransferError (for `index`) if it cannot be pickled."""
        payload = Task.pickle_payload(request, index)
        routed, operation = request.uses_openai_sdk, operation_of(request)
        prompt_tokens, cap = token_estimate(request) if estimate else (0, None)
        return cls(
            payload,
            prompt_tokens + (cap or 0),
            request.model,
            prompt_tokens,
            cap,
            key,
            routed=routed,
            operation=operation,
            prefix=prefix,
        )

    def new_attempt(self) -> int:
        """The number of the attempt about to be sent."""
        self.attempts += 1
        return self.attempts

    def crashed(self) -> None:
        """A worker died while running it."""
        self.crashes += 1

    def ended_on(self, endpoint: int) -> None:
        """An attempt of it ended at `endpoint` (the one a rich result names)."""
        self.endpoint = endpoint

    def rich(self, index: int, result: Result, now: float, urls: Sequence[str]) -> Result:
        """`result` with what the ledger knows of its request: attempts, latency since
        the first was sent (a replay keeps its answer's: a cache hit's 0, a Batch API
        job's wait), the endpoint that answered, whether it was hedged."""
        first = self.retry.first_sent_at
        latency = result.latency_s if self.replay or first is None else now - first
        return replace(
            result,
            index=index,
            attempts=self.attempts,
            latency_s=latency,
            base_url=(urls[self.endpoint] or None) if self.endpoint is not None else None,
            hedged=self.hedged,
        )

    def task(self, batch_id: int, index: int, endpoint: int | None) -> Task:
        """The `Task` of its latest attempt (`endpoint`: where it goes)."""
        return Task(
            batch_id,
            index,
            self.attempts,
            self.payload,
            self.replay,
            self.retry.standard,
            endpoint or 0,
        )

    def copies(self) -> Iterator[Attempt]:
        """The attempts running now: none, one, or two (hedged)."""
        if self.running is not None:
            yield self.running
        if self.hedge is not None:
            yield self.hedge

    def copy_on(self, worker: Any, number: int) -> Attempt | None:
        """The running attempt `number` on `worker`, or None (an outcome owed to nobody)."""
        for attempt in (self.running, self.hedge):  # no generator: once per answer
            if attempt is not None and attempt.number == number and attempt.worker == worker:
                return attempt
        return None

    def runs_on(self, worker: Any) -> bool:
        """Whether an attempt of it runs on `worker`."""
        running, hedge = self.running, self.hedge
        return (running is not None and running.worker == worker) or (
            hedge is not None and hedge.worker == worker
        )


class Ledger(Generic[W]):
    """The requests read and not yet yielded; which worker runs which of their attempts.

    `slots` is what counts against the concurrency: every request to send (sent, or
    waiting for its next attempt) and every hedge running beside one. Cache replays and
    duplicates waiting for an identical request's answer take no slot.

    Example:

    >>> ledger = Ledger()
    >>> entry = Entry(payload=b"...", tokens=0)
    >>> ledger.add(7, entry, counted=True)  # counted: it takes a concurrency slot
    >>> attempt = Attempt("worker-a", entry.new_attempt(), endpoint=0, sent_at=0.0)
    >>> ledger.place(7, attempt, hedge=False, now=0.0)
    >>> ledger.owed("worker-a"), ledger.slots
    ({7}, 1)
    >>> ledger.end(7, attempt) is None  # the attempt ended (its other copy, if any)
    True
    >>> _ = ledger.remove(7)  # its result is yielded
    >>> len(ledger), ledger.slots
    (0, 0)
    """

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self.slots = 0
        self._owed_by: dict[W, set[int]] = {}  # {worker: {3, 8, ...}}
        self._owing_since: dict[W, float] = {}  # {worker: when it went from idle to owing}

    def __repr__(self) -> str:
        return (
            f"<Ledger entries={len(self.entries)} slots={self.slots} workers={len(self._owed_by)}>"
        )

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, index: int, entry: Entry, counted: bool) -> None:
        """Keep `entry` for `index`; `counted`: it takes a slot (a request to send)."""
        self.entries[index] = entry
        if counted:
            self.count(entry)

    def count(self, entry: Entry) -> None:
        """`entry` takes a slot from now on (a duplicate whose original failed)."""
        entry.counted = True
        self.slots += 1

    def remove(self, index: int) -> Entry:
        """Forget `index` (its result is yielded); nothing of it may be running."""
        entry = self.entries.pop(index)
        self.slots -= entry.counted
        return entry

    def owed(self, worker: W) -> set[int]:
        """The requests `worker` runs."""
        return self._owed_by.get(worker, set())

    def load(self, worker: W) -> int:
        """How many requests `worker` runs."""
        return len(self._owed_by.get(worker, ()))

    @property
    def running(self) -> int:
        """Requests running now, on any worker (a hedged one once; those waiting to be
        sent, or for their next attempt, not at all)."""
        return len(set().union(*self._owed_by.values()))

    def owing_since(self, worker: W) -> float | None:
        """Since when `worker` runs requests without a break (None: idle)."""
        return self._owing_since.get(worker)

    def place(self, index: int, attempt: Attempt, hedge: bool, now: float) -> None:
        """`attempt` of `index` was sent (`hedge`: beside the one running)."""
        entry = self.entries[index]
        if hedge:
            entry.hedge, entry.hedged = attempt, True
            self.slots += 1
        else:
            entry.running = attempt
        owed = self._owed_by.setdefault(attempt.worker, set())
        if not owed:
            self._owing_since[attempt.worker] = now
        owed.add(index)

    def end(self, index: int, attempt: Attempt) -> Attempt | None:
        """`attempt` of `index` ended (answered, or cancelled); returns the other copy,
        which is then the one running, or None."""
        entry = self.entries[index]
        other = entry.hedge if attempt is entry.running else entry.running
        entry.running, entry.hedge = other, None
        if other is not None:
            self.slots -= 1  # one copy of two ended
        self._lift(attempt.worker, index, entry)
        return other

    def take_owed(self, worker: W) -> dict[int, list[Attempt]]:
        """`worker` exited: what it ran, as ``{index: [its attempts lost]}``, in index
        order; an entry whose other copy runs elsewhere keeps that one running."""
        self._owing_since.pop(worker, None)
        lost: dict[int, list[Attempt]] = {}
        for index in sorted(self._owed_by.pop(worker, ())):
            entry = self.entries[index]
            lost[index] = [a for a in entry.copies() if a.worker == worker]
            survivors = [a for a in entry.copies() if a.worker != worker]
            self.slots -= len(lost[index]) + len(survivors) - 1  # a hedge's slot
            entry.running, entry.hedge = (survivors[0] if survivors else None), None
        return lost

    def give_up(self) -> list[tuple[int, list[Attempt]]]:
        """Every attempt running is stopped: ``[(index, its attempts), ...]``."""
        stopped = []
        for index, entry in self.entries.items():
            if entry.running is not None:
                stopped.append((index, list(entry.copies())))
                self.slots -= entry.hedge is not None
                entry.running = entry.hedge = None
        self._owed_by.clear()
        self._owing_since.clear()
        return stopped

    def _lift(self, worker: W, index: int, entry: Entry) -> None:
        """`worker` no longer runs `index`, unless another copy of it runs there."""
        if entry.runs_on(worker):
            return
        owed = self._owed_by[worker]
        owed.discard(index)
        if not owed:
            del self._owing_since[worker]


class Schedule:
    """The requests waiting for their next attempt: due now, or once a backoff is over.

    Example:

    >>> schedule = Schedule()
    >>> schedule.later(7, at=12.5)  # a retry after its backoff
    >>> schedule.now(3)  # a re-send after its worker died
    >>> schedule.release(13.0)  # backoffs over by then become due
    >>> schedule.pop(), schedule.pop(), schedule.first()
    (3, 7, None)
    """

    def __init__(self) -> None:
        self._due: deque[int] = deque()
        self._backoff: list[tuple[float, int]] = []  # heap of (retry time, index)

    def __repr__(self) -> str:
        return f"<Schedule due={len(self._due)} backoff={len(self._backoff)}>"

    def now(self, index: int) -> None:
        self._due.append(index)

    def later(self, index: int, at: float) -> None:
        heapq.heappush(self._backoff, (at, index))

    def release(self, now: float) -> None:
        """Backoffs over by `now` become due."""
        while self._backoff and self._backoff[0][0] <= now:
            self._due.append(heapq.heappop(self._backoff)[1])

    def first(self) -> int | None:
        """The index due first (still scheduled until `pop`), or None."""
        return self._due[0] if self._due else None

    def pop(self) -> int:
        return self._due.popleft()

    def next_at(self) -> float | None:
        """When the first backoff ends (None: no backoff)."""
        return self._backoff[0][0] if self._backoff else None

    def keep_only(self, indices: Container[int]) -> None:
        """Forget what is not in `indices` (finished while waiting)."""
        self._due = deque(i for i in self._due if i in indices)
        self._backoff = [(t, i) for t, i in self._backoff if i in indices]
        heapq.heapify(self._backoff)

    def clear(self) -> None:
        self._due.clear()
        self._backoff.clear()
