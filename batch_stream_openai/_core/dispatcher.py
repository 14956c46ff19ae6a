"""One batch's policy, with no I/O: what to send where, what is owed, what is done.

The batch loop in `loop.py` asks `fill` what to send to which ready worker (and which
attempts to cancel), feeds each `Outcome` to `settle` and each exited worker to
`reclaim`, and yields what `take_results` returns. Workers are opaque keys here, so the
whole policy (budgets, retries, crash counting, quarantine, the cache and the cost cap,
the endpoints each attempt goes to, hedges) is tested without a single process.

The dispatcher decides; its collaborators keep their own state and are told what
happened through their verbs: the `Ledger` (who runs what), the `Policies` (the budget,
the retries, the cache and the cost cap, the endpoints, the hedging), the `Quarantine`
(requests whose workers died) and the `Delivery` (what the caller gets).

The ledger holds every request read from the input and not yet yielded: sent, waiting
for its next attempt or to be re-sent after its worker died, a cache hit on its way
through a worker's `postprocess`, or a duplicate waiting for an identical request's
answer. Requests to send (and hedges) take a slot of `max_concurrency`; everything in
the ledger together is bounded too (`_READ_AHEAD`), so memory does not grow with the
batch.
"""

from __future__ import annotations

import heapq
import pickle
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from .._policy.fleet import Fleet
from .._policy.hedging import Hedging
from .._policy.limits import Budget, token_estimate
from .._policy.quarantine import MAX_CRASHES_PER_REQUEST, Quarantine
from .._policy.retry import Retries
from .._spending.admission import Admission
from .._spending.cap import NOTHING_RESERVED, Reservation
from .._wire.answers import StoredAnswer
from .._wire.protocol import Cancel, Exit, Outcome, Task
from .._wire.sources import Answered
from ..errors import APIError, DeadlineExceededError, RequestError, WorkerCrashedError
from ..results import BatchSummary, Result, ResultPair
from .delivery import Delivery
from .intake import Intake
from .ledger import Attempt, Entry, Ledger

__all__ = ["MAX_CRASHES_PER_REQUEST", "POLL_INTERVAL_S", "Dispatcher", "Policies"]

# A worker, to the dispatcher: only a key (so its tests need no processes).
W = TypeVar("W", bound=Hashable)
# What to send: {worker: [Task, Cancel, ...]}.
Sends = dict[Any, list[Task | Cancel]]

# Longest the batch loop sleeps with nothing due, so it notices silent workers.
POLL_INTERVAL_S = 1.0
# Ledger entries allowed beyond `max_concurrency` (cache hits being post-processed,
# duplicates waiting for an answer): they cost no provider capacity, only memory.
_READ_AHEAD = 256


@dataclass(frozen=True)
class Policies:
    """What decides for one batch; each keeps its own state, the dispatcher calls verbs.

    Parameters:
        budget: the pool's concurrency and rate budget (shared by its batches).
        retries: when a failed attempt goes again (`_policy/retry.py`).
        admission: the response cache, in-flight dedup, the cost cap and the prices.
        fleet: the endpoints each OpenAI-routed attempt goes to (default: one, unnamed).
        hedging: hedge stragglers, or None.
    """

    budget: Budget
    retries: Retries
    admission: Admission = field(default_factory=Admission)
    fleet: Fleet = field(default_factory=lambda: Fleet([""]))
    hedging: Hedging | None = None


class Dispatcher(Generic[W]):
    """The ledger and policy of one batch.

    Example::

        dispatcher = Dispatcher(1, Intake(requests), Policies(budget, retries), Delivery())
        messages = dispatcher.fill(ready_workers)    # {worker: [Task, Cancel, ...]}
        dispatcher.settle(worker, outcome)            # an attempt ended
        dispatcher.reclaim(worker, exit)              # a worker died: re-send what it owed
        for index, value in dispatcher.take_results(): ...

    Parameters:
        batch_id: tags this batch's tasks; outcomes of other batches are ignored.
        intake: the batch's input, read lazily.
        policies: the budget, retries, admission, endpoints and hedging.
        delivery: where finished indices go (and the batch's summary).
        deadline: monotonic time by which every index must be done: then what is not
            yields `DeadlineExceededError` (what is running is given up).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        batch_id: int,
        intake: Intake,
        policies: Policies,
        delivery: Delivery,
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch_id = batch_id
        self._intake = intake
        self._budget = policies.budget
        self._retries = policies.retries
        self._admission = policies.admission
        self._fleet = policies.fleet
        self._hedging = policies.hedging
        self._delivery = delivery
        self._deadline = deadline
        self._clock = clock
        self._ledger: Ledger[W] = Ledger()
        self._due: deque[int] = deque()  # to send now: re-sends, retries, replays, ...
        self._backoff: list[tuple[float, int]] = []  # heap of (retry time, index)
        self._quarantine: Quarantine[W] = Quarantine()  # requests whose workers died
        self._blocked_until = 0.0  # when the budget lets the next send go (monotonic)
        # Set when nothing more may be sent (the cost cap is reached, the deadline passed):
        # what is not sent, and what is read from then on, fails with this error.
        self._refusal: Callable[[int], RequestError] | None = None
        self._read = 0  # requests read from the input
        self._workers_seen = False  # the last `fill` had ready workers
        self._hedge_held = False  # a budget held a hedge back: wait for an answer
        self._cancels: Sends = {}  # attempts to stop: the other copy won
        self.abandoned = False  # requests given up while in flight (to cancel in workers)

    def __repr__(self) -> str:
        return (
            f"<Dispatcher batch={self.batch_id} owed={len(self._ledger)} due={len(self._due)} "
            f"backoff={len(self._backoff)} quarantine={len(self._quarantine)}>"
        )

    @property
    def summary(self) -> BatchSummary:
        return self._delivery.summary

    @property
    def finished(self) -> bool:
        """Everything read has been yielded, and nothing more will be read."""
        return self._intake.done and not self._ledger.entries and not self._delivery.waiting

    @property
    def input_error(self) -> BaseException | None:
        """What the input raised (or the bad item it gave): raised once all is yielded."""
        return self._intake.error

    @property
    def in_flight(self) -> int:
        """Requests read and not yet finished."""
        return len(self._ledger)

    def owing_since(self, worker: W) -> float | None:
        """Since when `worker` holds requests of this batch without a break (None: idle)."""
        return self._ledger.owing_since(worker)

    def take_results(self) -> list[ResultPair]:
        """The results finished since the last call, for the caller."""
        return self._delivery.take()

    def next_wake(self) -> float:
        """Seconds until something becomes due (a retry, the budget), at most the poll."""
        now = self._clock()
        wake = 0.0 if self._refusal and not self._intake.exhausted else POLL_INTERVAL_S
        if self._deadline is not None:
            wake = min(wake, self._deadline - now)
        if self._blocked_until > now:
            wake = min(wake, self._blocked_until - now)
        if self._backoff:
            wake = min(wake, self._backoff[0][0] - now)
        return max(0.0, min(wake, self._hedge_due(now)))

    def _hedge_due(self, now: float) -> float:
        """Seconds until a hedge could be sent (inf: none could; an answer, freeing a
        slot, wakes the loop then)."""
        if self._hedging is None or not self._workers_seen or self._hedge_held:
            return float("inf")
        if self._ledger.slots >= self._capacity():
            return float("inf")
        return self._hedging.wait(now, self._intake.exhausted, self._read)

    def _capacity(self) -> float:
        return min(self._budget.concurrency(), self._fleet.capacity())

    def peek(self) -> None:
        """Read the first request ahead, so that an empty input is known to be empty."""
        if (item := self._intake.next()) is not None:
            self._intake.hold(item)

    def fill(self, workers: Sequence[W]) -> Sends:
        """What to send now, to which of the ready `workers`: re-sends and retries first,
        then hedges, then new requests while the concurrency, rate and cost budgets
        allow; and the attempts to cancel, which lost to their other copy."""
        sends: Sends = dict(self._cancels)
        self._cancels = {}
        now = self._clock()
        if self._deadline is not None and now >= self._deadline and self._refusal is None:
            self._give_up_running()
        self._workers_seen = bool(workers)
        if workers:
            self._send_due(workers, sends, now)
            capacity = self._capacity()
            if self._hedging is not None:  # before new requests: a straggler holds it up
                self._send_hedges(self._hedging, workers, sends, now, capacity)
            while self._ledger.slots < capacity and len(self._ledger) < capacity + _READ_AHEAD:
                item = None if self._refusal else self._intake.next()
                if item is None or not self._admit(*item, workers, sends, now):
                    break
        if self._refusal is not None:
            self._refuse_more(self._refusal)
        return sends

    def _send_due(self, workers: Sequence[W], sends: Sends, now: float) -> None:
        """Send what is due: retries whose backoff is over, re-sends, suspects alone."""
        while self._backoff and self._backoff[0][0] <= now:
            self._due.append(heapq.heappop(self._backoff)[1])

        def send_suspect(index: int, among: list[W]) -> W | None:
            reserved = self._may_send(self._ledger.entries[index], now)
            return None if reserved is None else self._send(index, among, sends, now, reserved)

        self._quarantine.release(workers, self._ran_a_crash, send_suspect)
        innocent = self._quarantine.innocent(workers)
        while self._due and innocent:
            reserved = self._may_send(self._ledger.entries[self._due[0]], now)
            if reserved is None:
                break
            self._send(self._due.popleft(), innocent, sends, now, reserved)

    def _send_hedges(
        self, hedging: Hedging, workers: Sequence[W], sends: Sends, now: float, capacity: float
    ) -> None:
        """A duplicate for each request running past the hedging threshold, while
        slots, budgets and the hedging fraction allow (`Hedging.due`)."""
        tail = self._intake.exhausted and self._ledger.slots < capacity
        due = hedging.due(now, tail, self._read, self._hedgeable)
        while self._ledger.slots < capacity and (item := next(due, None)) is not None:
            index = item[1]
            reserved = self._may_send(self._ledger.entries[index], now)
            if reserved is None:
                hedging.put_back(item)  # a budget holds it: offered again later
                self._hedge_held = True
                return
            self._send(index, workers, sends, now, reserved, hedge=True)

    def _hedgeable(self, index: int, number: int) -> bool | None:
        """Whether attempt `number` of `index` may be hedged (None: it no longer runs)."""
        entry = self._ledger.entries.get(index)
        if entry is None or entry.running is None or entry.running.number != number:
            return None
        return entry.hedge is None and not entry.crashes  # a suspect runs alone

    def settle(self, worker: W, outcome: Outcome) -> None:
        """An attempt ended: finish its request, or schedule its next attempt."""
        entry = self._ledger.entries.get(outcome.index)
        # Outcomes of another batch, or of an attempt since re-sent elsewhere or
        # cancelled, are owed to nobody: taking them would break exactly-once.
        if outcome.batch_id != self.batch_id or entry is None:
            return
        attempt = entry.copy_on(worker, outcome.attempt)
        if attempt is None:
            return
        index = outcome.index
        self._hedge_held = False
        other = self._ledger.end(index, attempt)  # the copy still running, if any
        self._quarantine.settled(worker, index)
        result = outcome.value()
        if entry.replay:
            self._finish(index, entry, result)
            return
        result = self._admission.priced(result, entry.model, entry.retry.standard)
        if attempt.reserved is not None:
            self._admission.settle_cost(attempt.reserved, result)
        blamed = self._ended(entry, attempt, result)
        error = result.error
        if error is None:
            used = result.usage.total_tokens if result.usage is not None else None
            self._budget.on_answer(attempt.charge, used, outcome.pause_s)
            if other is not None:
                self._cancel(index, entry, other)  # the first answer wins
        elif other is not None:  # the other copy may still answer
            self._count_throttled(error)
            return
        elif self._retry_later(index, entry, error, blamed):
            return
        self._finish(index, entry, result)

    def _ended(self, entry: Entry, attempt: Attempt, result: Result) -> int | None:
        """Tell the fleet and the hedging how an attempt went; the endpoint to blame for
        its failure, if any."""
        latency = result.latency_s
        if self._hedging is not None and result.error is None:
            # As the parent sees it: what a running request's age is compared with.
            self._hedging.answered(self._clock() - attempt.sent_at)
        target = attempt.endpoint
        if target is None:
            return None
        entry.ended_on(target)
        self.summary.add_attempt(self._fleet.urls[target], latency, result.error is None)
        return target if self._fleet.ended(target, latency, result.error) else None

    def _cancel(self, index: int, entry: Entry, attempt: Attempt) -> None:
        """Stop `attempt`: its other copy answered first."""
        self._cancels.setdefault(attempt.worker, []).append(
            Cancel(self.batch_id, index, attempt.number)
        )
        self._ledger.end(index, attempt)
        self._withdraw(attempt)

    def _withdraw(self, attempt: Attempt) -> None:
        """`attempt` ends without an answer: what it holds of the budgets goes back
        (what it reserved under ``max_cost`` counts as spent: it may have been billed)."""
        if attempt.reserved is not None:
            self._admission.settle_cost(attempt.reserved, None)
        if attempt.endpoint is not None:
            self._fleet.withdrawn(attempt.endpoint)

    def reclaim(self, worker: W, exit_: Exit) -> None:
        """A worker exited: what it owed is re-sent, or fails after too many deaths."""
        self._quarantine.forget(worker)
        for index, lost in self._ledger.take_owed(worker).items():
            entry = self._ledger.entries[index]
            for attempt in lost:
                self._withdraw(attempt)
            if exit_.was_ready:
                entry.crashed()
            if entry.running is not None:
                continue  # its other copy still runs
            verdict = Quarantine.verdict(entry.crashes)
            if verdict == "give up":
                error = WorkerCrashedError.describe(
                    index, exit_.exitcode, entry.crashes, exit_.hung
                )
                self._finish(index, entry, Result(index, error=error))
            elif verdict == "quarantine":
                self._quarantine.add(index)
            else:
                self._due.append(index)

    def stop_reading(self, error: BaseException) -> None:
        """Read nothing more; `error` is raised once everything read has been yielded."""
        self._intake.stop(error)

    def fail_everything(self, describe: Callable[[int], RequestError]) -> None:
        """Nothing left can run: each index not yet done yields `describe(index)`.

        The requests in flight are given up too: the caller gets them as failed now.
        """
        self._intake.stop()
        if (held := self._intake.take_held()) is not None:
            self._finish(held[0], None, Result(held[0], error=describe(held[0])))
        self._give_up(describe)
        for index, entry in list(self._ledger.entries.items()):
            self._finish(index, entry, Result(index, error=describe(index)))
        self._due.clear()
        self._backoff.clear()

    def _admit(
        self, index: int, request: Any, workers: Sequence[W], sends: Sends, now: float
    ) -> bool:
        """Take in one new request: answer it from the cache, park it behind an identical
        one, or send it. False when a budget holds it back (it is kept for later)."""
        self._read += 1
        answered, key = self._known_answer(index, request)
        if answered:
            return True
        try:
            entry = self._entry(request, key)
        except RequestError as error:
            error.index = index
            self._finish(index, None, Result(index, error=error))
            return True
        if self._admission.wait_for(key, index):
            self._ledger.add(index, entry, counted=False)  # waits for the first one's answer
            return True
        reserved = self._may_send(entry, now)
        if reserved is None:
            self._read -= 1  # read again later
            self._intake.hold((index, request))
            return False
        self._ledger.add(index, entry, counted=True)
        self._admission.claim(key, index)
        self._send(index, workers, sends, now, reserved)
        return True

    def _known_answer(self, index: int, item: Any) -> tuple[bool, bytes | None]:
        """Answer `item` if it needs no provider (no budget, no deadline): the answer it
        carries, or the cache's. Whether it was answered, and its cache key."""
        if isinstance(item, Answered):
            if item.result.cached:
                self.summary.add_cached(item.paid, deduplicated=False)
            self._answer_with(index, item.result)
            return True, None
        key = self._admission.key_of(item)
        if (stored := self._admission.stored(key)) is not None:
            self._answer_from_cache(index, stored, item, duplicate=False)
            return True, key
        return False, key

    def _entry(self, request: Any, key: bytes | None) -> Entry:
        """A ledger entry for a new request; raises ResultTransferError if it cannot go."""
        payload = Task.pickle_payload(request)
        routed = request.uses_openai_sdk
        if not self._budget.counts_tokens and not self._admission.caps_cost:
            return Entry(payload, 0, request.model, key=key, routed=routed)
        prompt_tokens, cap = token_estimate(request)
        tokens = prompt_tokens + (cap or 0)
        return Entry(payload, tokens, request.model, prompt_tokens, cap, key, routed=routed)

    def _may_send(self, entry: Entry, now: float) -> Reservation | None:
        """Whether the budgets and the endpoints let `entry` go now: what it holds of the
        cost cap (`NOTHING_RESERVED` without one), or None when it may not go yet."""
        if entry.replay:
            return NOTHING_RESERVED
        if self._refusal is not None:
            return None
        if entry.routed and not self._fleet.has_room():
            return None  # every endpoint is full: an answer will make room
        wait = self._budget.delay(entry.tokens)
        if wait > 0:
            self._blocked_until = now + wait
            return None
        reserved = self._admission.reserve_cost(entry.model, entry.prompt_tokens, entry.output_cap)
        if reserved is None and self._admission.cost_exhausted:
            # With nothing in flight to settle below its reservation, it never will fit.
            self._refusal = self._admission.refusal
        return reserved

    def _send(
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
        if hedge:
            assert self._hedging is not None
            self._hedging.sent_one()
            self.summary.add_hedge()
        elif not entry.replay:
            self._retries.sent(entry.retry, now)
            if self._hedging is not None:
                self._hedging.started(index, number, now)
        sends.setdefault(worker, []).append(entry.task(self.batch_id, index, target))
        return worker

    def _where(self, entry: Entry, among: Sequence[W], hedge: bool) -> tuple[W, int | None]:
        """The worker and the endpoint for `entry`'s next attempt: the least busy ones; a
        hedge goes elsewhere than the copy it duplicates, where it can."""
        busy = self._ledger.busy
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
        target = self._fleet.pick(avoid)
        assert target is not None  # `_may_send` saw room
        self._fleet.sent(target)
        return worker, target

    def _ran_a_crash(self, worker: W) -> bool:
        """Whether `worker` runs a request that was on a worker that died."""
        return any(self._ledger.entries[i].crashes for i in self._ledger.owed(worker))

    def _retry_later(self, index: int, entry: Entry, error: Exception, blamed: int | None) -> bool:
        """Schedule the next attempt if the retry policy wants one; count 429s either way."""
        self._count_throttled(error)
        now = self._clock()
        wait = self._retries.after(entry.retry, error, blamed, now)
        if wait is None:
            return False
        if wait == 0:
            self._due.append(index)
        else:
            heapq.heappush(self._backoff, (now + wait, index))
        return True

    def _count_throttled(self, error: Exception) -> None:
        """A 429: count it, and let the budget slow down."""
        if isinstance(error, APIError) and error.status_code == 429:
            self.summary.add_throttled()
            self._budget.on_throttled(error.retry_after_s)

    def _answer_from_cache(
        self, index: int, stored: StoredAnswer, request: Any, duplicate: bool
    ) -> None:
        """Finish `index` with a stored answer (read as its first answer was read),
        through a worker if there is a postprocess."""
        self.summary.add_cached(stored.cost_usd, duplicate)
        result = stored.result(index, request, cost_usd=0.0)
        self._answer_with(index, replace(result, cached=True))

    def _answer_with(self, index: int, result: Result) -> None:
        """Finish `index` with an answer it already has, through a worker's `postprocess`."""
        result = replace(result, index=index)
        if not self._admission.replays or result.error is not None:
            self._finish(index, None, result)
            return
        self._ledger.add(index, Entry(Task.pickle_payload(result), 0, replay=True), counted=False)
        self._due.append(index)

    def _refuse_more(self, refusal: Callable[[int], RequestError]) -> None:
        """Nothing more may be sent: fail what is not sent, and what is read from now on
        (but what is answered already: a cache hit, a Batch API job's answer).

        The input is read a bounded chunk at a time, so a long generator's refusals
        stream out like results instead of piling up.
        """
        entries = self._ledger.entries
        for index, entry in [(i, e) for i, e in entries.items() if e.running is None]:
            if not entry.replay:
                self._finish(index, entry, Result(index, error=refusal(index)))
        self._due = deque(i for i in self._due if i in entries)
        self._backoff = [(t, i) for t, i in self._backoff if i in entries]
        self._quarantine.keep_only(entries)
        for _ in range(_READ_AHEAD):
            if (item := self._intake.next()) is None:
                break
            index, request = item
            if not self._known_answer(index, request)[0]:  # an answer is never refused
                self._finish(index, None, Result(index, error=refusal(index)))

    def _give_up_running(self) -> None:
        """The deadline passed: what runs is given up, and nothing more is sent."""
        self._refusal = self._too_late
        self._give_up(self._too_late)

    def _give_up(self, describe: Callable[[int], RequestError]) -> None:
        """Every attempt running is given up: its request yields `describe(index)`."""
        for index, attempts in self._ledger.give_up():
            for attempt in attempts:
                self._withdraw(attempt)
            self._finish(index, self._ledger.entries[index], Result(index, error=describe(index)))
            self.abandoned = True
        self._quarantine.clear()

    @staticmethod
    def _too_late(index: int) -> DeadlineExceededError:
        return DeadlineExceededError("not done by the batch's deadline", index=index)

    def _finish(self, index: int, entry: Entry | None, result: Result) -> None:
        """`index` is done: out of the ledger, its duplicates answered, to the caller."""
        if entry is not None:
            self._ledger.remove(index)
            self._answer_duplicates(entry.key, index, result)
        self._delivery.deliver(index, entry, result)

    def _answer_duplicates(self, key: bytes | None, index: int, result: Result) -> None:
        """The request that others waited for is done: answer them, or send them now."""
        waiting = self._admission.done(key, index, result)
        stored = StoredAnswer.of(result) if waiting else None
        for other in waiting:
            if stored is not None:  # the same request: the same answer
                request = pickle.loads(self._ledger.remove(other).payload)
                self._answer_from_cache(other, stored, request, duplicate=True)
            else:  # it failed without an answer: each is sent on its own
                self._ledger.count(self._ledger.entries[other])
                self._due.append(other)
