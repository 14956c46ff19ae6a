"""Whether an attempt may go now, and where: the dispatcher's sending half, no I/O.

The `Dispatcher` decides *what* is due (a retry, a re-send, a new request, a hedge);
the `Sender` asks the budgets whether it may go now (the concurrency slots, `rpm` and
`tpm`, the cost cap, the endpoints' room), picks the least busy worker and endpoint,
records the attempt in the `Ledger`, and adds its `Task` to what the batch loop sends.
It also sends the hedges that the `Hedging` policy finds due. Once nothing more may be
sent (the cost cap is spent, the deadline passed) it keeps the refusal that every
request not sent yields.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .._observe.telemetry import Telemetry
from .._policy.fleet import Fleet
from .._policy.hedging import Hedging
from .._policy.limits import Budget
from .._policy.retry import Retries
from .._spending.admission import Admission
from .._spending.cap import NOTHING_RESERVED, Reservation
from .._wire.protocol import Cancel, Task
from ..errors import APIError, RequestError
from ..results import BatchSummary, Result
from .ledger import Attempt, Entry, Ledger

__all__ = ["Policies", "Sender", "Sends"]

W = TypeVar("W", bound=Hashable)
# What to send: {worker: [Task, Cancel, ...]}.
Sends = dict[Any, list[Task | Cancel]]


@dataclass(frozen=True)
class Policies:
    """What decides for one batch; each keeps its own state, the dispatcher calls verbs.

    Parameters:
        budget: the pool's concurrency and rate budget (shared by its batches).
        retries: when a failed attempt goes again (`_policy/retry.py`).
        admission: the response cache, in-flight dedup, the cost cap and the prices.
        fleet: the endpoints each OpenAI-routed attempt goes to (default: one, unnamed).
        hedging: hedge stragglers, or None.
        telemetry: where each attempt is recorded (OpenTelemetry), or None.
    """

    budget: Budget
    retries: Retries
    admission: Admission = field(default_factory=Admission)
    fleet: Fleet = field(default_factory=lambda: Fleet([""]))
    hedging: Hedging | None = None
    telemetry: Telemetry | None = None


class Sender(Generic[W]):
    """The budgets' gate and the choice of worker and endpoint for each attempt.

    Parameters:
        batch_id: tags the tasks it sends.
        ledger: where each attempt is recorded.
        policies: the budget, retries, admission, endpoints and hedging.
        summary: the batch's summary (hedges are counted in it).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        batch_id: int,
        ledger: Ledger[W],
        policies: Policies,
        summary: BatchSummary,
        clock: Callable[[], float],
    ) -> None:
        self._batch_id = batch_id
        self._ledger = ledger
        self._retries = policies.retries
        self._budget = policies.budget
        self._fleet = policies.fleet
        self._admission = policies.admission
        self._hedging = policies.hedging
        self._telemetry = policies.telemetry
        self._summary = summary
        self._clock = clock
        self.blocked_until = 0.0  # when the budget lets the next send go (monotonic)
        # Set when nothing more may be sent (the cost cap is reached, the deadline passed):
        # what is not sent, and what is read from then on, fails with this error.
        self.refusal: Callable[[int], RequestError] | None = None
        self._hedge_held = False  # a budget held a hedge back: wait for an answer

    def __repr__(self) -> str:
        return f"<Sender batch={self._batch_id} refused={self.refusal is not None}>"

    def capacity(self) -> float:
        """How many attempts may run at once now (the budget's and the endpoints')."""
        return min(self._budget.concurrency(), self._fleet.capacity())

    def gauges(self) -> dict[str, tuple[int, bool]]:
        """Each endpoint's requests in flight, and whether it is set aside now."""
        return self._fleet.gauges()

    def has_room(self) -> bool:
        return self._ledger.slots < self.capacity()

    def refuse(self, describe: Callable[[int], RequestError]) -> None:
        """Send nothing more: what is not sent yields `describe(index)`."""
        self.refusal = describe

    def may_send(self, entry: Entry, now: float) -> Reservation | None:
        """Whether the budgets and the endpoints let `entry` go now: what it holds of the
        cost cap (`NOTHING_RESERVED` without one), or None when it may not go yet."""
        if entry.replay:
            return NOTHING_RESERVED
        if self.refusal is not None:
            return None
        if entry.routed and not self._fleet.has_room():
            return None  # every endpoint is full: an answer will make room
        wait = self._budget.delay(entry.tokens)
        if wait > 0:
            self.blocked_until = now + wait
            return None
        admission = self._admission
        reserved = admission.reserve_cost(entry.model, entry.prompt_tokens, entry.output_cap)
        if reserved is None and admission.cost_exhausted:
            # With nothing in flight to settle below its reservation, it never will fit.
            self.refusal = admission.refusal
        return reserved

    def send(
        self,
        index: int,
        among: Sequence[W],
        sends: Sends,
        now: float,
        reserved: Reservation,
        hedge: bool = False,
    ) -> W:
        """Send the next attempt of `index` (or, `hedge`, a duplicate of the running one)
        to the least busy of the workers `among`, and its endpoint."""
        entry = self._ledger.entries[index]
        worker, target = self._where(entry, among, hedge)
        number = entry.new_attempt()
        charge = None if entry.replay else self._budget.spend(entry.tokens)
        attempt = Attempt(worker, number, target, now, charge, None if entry.replay else reserved)
        # Not `now` for the watchdog: reading the input may have taken a while since.
        self._ledger.place(index, attempt, hedge, self._clock())
        hedging = self._hedging
        if hedge:
            assert hedging is not None
            hedging.sent_one()
            self._summary.add_hedge()
        elif not entry.replay:
            self._retries.sent(entry.retry, now)
            if hedging is not None:
                hedging.started(index, number, now)
        sends.setdefault(worker, []).append(entry.task(self._batch_id, index, target))
        return worker

    def _where(self, entry: Entry, among: Sequence[W], hedge: bool) -> tuple[W, int | None]:
        """The worker and the endpoint for `entry`'s next attempt: the least busy worker,
        the endpoint the fleet picks (where its prefix went, or the least busy); a hedge
        goes elsewhere than the copy it duplicates, where it can."""
        busy = self._ledger.load
        if hedge:
            assert entry.running is not None
            original = entry.running.worker
            worker = min(among, key=lambda w: (w == original, busy(w)))
            avoid: Collection[int] = (
                () if entry.running.endpoint is None else {entry.running.endpoint}
            )
        else:
            worker, avoid = min(among, key=busy), entry.retry.failed_on
        if not entry.routed:
            return worker, None
        fleet = self._fleet
        target = fleet.pick(avoid, entry.prefix)
        assert target is not None  # `may_send` saw room
        fleet.sent(target, entry.prefix)
        return worker, target

    def ended(self, index: int, entry: Entry, attempt: Attempt, result: Result) -> int | None:
        """An attempt of `index` ended: the hedging may be offered held-back hedges again;
        tell the fleet, the hedging and the telemetry how it went. The endpoint to blame
        for its failure, if any."""
        self._hedge_held = False
        latency = result.latency_s
        hedging = self._hedging
        if hedging is not None and result.error is None:
            # As the parent sees it: what a running request's age is compared with.
            hedging.answered(self._clock() - attempt.sent_at)
        target = attempt.endpoint
        fleet = self._fleet
        if self._telemetry is not None:
            url = fleet.urls[target] if target is not None else ""
            self._telemetry.attempt(index, entry, url, result)
        if target is None:
            return None
        entry.ended_on(target)
        self._summary.add_attempt(fleet.urls[target], latency, result.error is None)
        return target if fleet.ended(target, latency, result.error) else None

    def throttled(self, error: Exception) -> None:
        """If `error` is a 429: count it, and let the budget slow down."""
        if isinstance(error, APIError) and error.status_code == 429:
            self._summary.add_throttled()
            self._budget.on_throttled(error.retry_after_s)

    def withdraw(self, attempt: Attempt) -> None:
        """`attempt` ends without an answer: what it holds of the budgets goes back
        (what it reserved under ``max_cost`` counts as spent: it may have been billed)."""
        if attempt.reserved is not None:
            self._admission.settle_cost(attempt.reserved, None)
        if attempt.endpoint is not None:
            self._fleet.withdrawn(attempt.endpoint)

    def hedge_wait(self, now: float, exhausted: bool, read: int) -> float:
        """Seconds until a hedge could be sent (inf: none could; an answer, freeing a
        slot, wakes the loop then)."""
        hedging = self._hedging
        if hedging is None or self._hedge_held or not self.has_room():
            return float("inf")
        return hedging.wait(now, exhausted, read)

    def send_hedges(
        self, workers: Sequence[W], sends: Sends, now: float, tail: bool, read: int
    ) -> None:
        """A duplicate for each request running past the hedging threshold, while
        slots, budgets and the hedging fraction allow (`Hedging.due`)."""
        hedging = self._hedging
        if hedging is None:
            return
        due = hedging.due(now, tail and self.has_room(), read, self._hedgeable)
        while self.has_room() and (item := next(due, None)) is not None:
            index = item[1]
            reserved = self.may_send(self._ledger.entries[index], now)
            if reserved is None:
                hedging.put_back(item)  # a budget holds it: offered again later
                self._hedge_held = True
                return
            self.send(index, workers, sends, now, reserved, hedge=True)

    def _hedgeable(self, index: int, number: int) -> bool | None:
        """Whether attempt `number` of `index` may be hedged (None: it no longer runs)."""
        entry = self._ledger.entries.get(index)
        if entry is None or entry.running is None or entry.running.number != number:
            return None
        return entry.hedge is None and not entry.crashes  # a suspect runs alone
