"""One batch's ledger and policy, with no I/O: what to send where, what is owed, what is done.

The batch loop in `pool.py` asks `fill` what to send to which ready worker, feeds each
`Outcome` to `settle` and each exited worker to `reclaim`, and yields what
`take_results` returns. Workers are opaque keys here, so the whole policy (budgets,
retries, crash counting, quarantine, the cache and the cost cap) is tested without a
single process.

The ledger holds every request read from the input and not yet yielded: sent, waiting
for its next attempt or to be re-sent after its worker died, a cache hit on its way
through a worker's `postprocess`, or a duplicate waiting for an identical request's
answer. Requests to send count against `max_concurrency`; everything in the ledger
together is bounded too (`_READ_AHEAD`), so memory does not grow with the batch.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from .admission import Admission
from .errors import (
    APIError,
    BudgetExceededError,
    DeadlineExceededError,
    RequestError,
    WorkerCrashedError,
)
from .intake import Answered, Intake
from .limits import Budget, token_estimate
from .protocol import Outcome, Task
from .quarantine import MAX_CRASHES_PER_REQUEST, Quarantine
from .results import BatchSummary, Result
from .retry import RetrySchedule
from .stream import ResultPair
from .supervisor import Exit

__all__ = ["MAX_CRASHES_PER_REQUEST", "POLL_INTERVAL_S", "Dispatcher"]

# A worker, to the dispatcher: only a key (so its tests need no processes).
W = TypeVar("W", bound=Hashable)

# Longest the batch loop sleeps with nothing due, so it notices silent workers.
POLL_INTERVAL_S = 1.0
# Ledger entries allowed beyond `max_concurrency` (cache hits being post-processed,
# duplicates waiting for an answer): they cost no provider capacity, only memory.
_READ_AHEAD = 256


@dataclass
class _Entry:
    """A ledger entry: a request owed to the caller and where it currently runs."""

    payload: bytes  # the pickled request (or, for a replay, the cached Result)
    tokens: int  # estimated, charged to the token budget on every attempt
    model: str = ""
    prompt_tokens: int = 0  # for the cost reservation
    output_cap: int | None = None
    key: bytes | None = None  # its response-cache key, when the cache is on
    replay: bool = False  # a cache hit sent to a worker only for `postprocess`
    counted: bool = False  # counted against the concurrency (a request to send)
    attempts: int = 0  # attempts sent so far (retries and re-sends after a crash)
    crashes: int = 0  # workers that died while running it
    worker: Any = None  # the worker it runs on; None while waiting to be (re-)sent
    first_sent_at: float = 0.0  # monotonic
    charge: list[float] | None = None  # the token budget's record of the last attempt
    reserved: float = 0.0  # USD reserved for the attempt in flight (`max_cost`)
    standard: bool = False  # sent at the standard tier: flex had no capacity for it
    standard_from: int = 0  # attempts made at the flex tier before that


class Dispatcher(Generic[W]):
    """The ledger and policy of one batch.

    Example::

        dispatcher = Dispatcher(1, requests, budget=budget, retries=schedule)
        tasks = dispatcher.fill(ready_workers)       # {worker: [Task, ...]}
        dispatcher.settle(worker, outcome)            # an attempt ended
        dispatcher.reclaim(worker, exit)              # a worker died: re-send what it owed
        for index, value in dispatcher.take_results(): ...

    Parameters:
        batch_id: tags this batch's tasks; outcomes of other batches are ignored.
        requests: the caller's iterable, read lazily.
        budget: the pool's concurrency and rate budget (shared by its batches).
        retries: when a failed attempt is tried again.
        admission: the response cache, in-flight dedup and cost cap (None: none).
        rich: yield `Result` objects instead of ``str | Exception``.
        check_item: validates each item read (raises for a bad one); None when the
            caller's requests were checked before the batch started.
        indexed: `requests` yields ``(index, item)`` pairs in any order, where an item is
            a request or an `Answered`, and may yield `PENDING` for "nothing yet".
        deadline: monotonic time by which every index must be done: then what is not
            yields `DeadlineExceededError` (what is running is given up).
        flex_fallback: a request that flex (``service_tier="flex"``) had no capacity for,
            retries included, is sent at the standard tier.
        summary: the batch's live counts.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        batch_id: int,
        requests: Iterable[Any],
        *,
        budget: Budget,
        retries: RetrySchedule,
        admission: Admission | None = None,
        rich: bool = False,
        check_item: Callable[[int, object], None] | None = None,
        summary: BatchSummary | None = None,
        clock: Callable[[], float] = time.monotonic,
        indexed: bool = False,
        deadline: float | None = None,
        flex_fallback: bool = False,
    ) -> None:
        self.batch_id = batch_id
        self.summary = summary if summary is not None else BatchSummary()
        self._intake = Intake(requests, indexed=indexed, check_item=check_item)
        self._budget = budget
        self._retries = retries
        self._admission = admission or Admission()
        self._rich = rich
        self._clock = clock
        self._ledger: dict[int, _Entry] = {}  # {index: <_Entry>}
        self._requests = 0  # ledger entries that are requests to send (not replays)
        self._owed_by: dict[W, set[int]] = {}  # {worker: {3, 8, ...}}
        self._owing_since: dict[W, float] = {}  # {worker: when it last went from idle to owing}
        self._due: deque[int] = deque()  # to send now: re-sends, retries, replays, ...
        self._backoff: list[tuple[float, int]] = []  # heap of (retry time, index)
        self._quarantine: Quarantine[W] = Quarantine()  # requests whose workers died
        self._blocked_until = 0.0  # when the budget lets the next send go (monotonic)
        # Set when nothing more may be sent (the cost cap is reached, the deadline passed):
        # what is not sent, and what is read from then on, fails with this error.
        self._refusal: Callable[[int], RequestError] | None = None
        self._deadline = deadline
        self._flex_fallback = flex_fallback
        self.abandoned = False  # requests given up while in flight (to cancel in workers)
        self._done: list[ResultPair] = []  # results not yet taken

    def __repr__(self) -> str:
        return (
            f"<Dispatcher batch={self.batch_id} owed={len(self._ledger)} due={len(self._due)} "
            f"backoff={len(self._backoff)} quarantine={len(self._quarantine)}>"
        )

    @property
    def finished(self) -> bool:
        """Everything read has been yielded, and nothing more will be read."""
        return self._intake.done and not self._ledger and not self._done

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
        return self._owing_since.get(worker)

    def take_results(self) -> list[ResultPair]:
        """The results finished since the last call, for the caller."""
        done, self._done = self._done, []
        return done

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
        return max(0.0, wake)

    def peek(self) -> None:
        """Read the first request ahead, so that an empty input is known to be empty."""
        if (item := self._intake.next()) is not None:
            self._intake.hold(item)

    def fill(self, workers: Sequence[W]) -> dict[W, list[Task]]:
        """What to send now, to which of the ready `workers`: re-sends and retries first,
        then new requests while the concurrency, rate and cost budgets allow."""
        sends: dict[W, list[Task]] = {}
        now = self._clock()
        if self._deadline is not None and now >= self._deadline and self._refusal is None:
            self._give_up_running()
        if workers:
            self._fill(workers, sends, now)
        if self._refusal is not None:
            self._refuse_more(self._refusal)
        return sends

    def _fill(self, workers: Sequence[W], sends: dict[W, list[Task]], now: float) -> None:
        while self._backoff and self._backoff[0][0] <= now:
            self._due.append(heapq.heappop(self._backoff)[1])

        def send_suspect(index: int, among: list[W]) -> W | None:
            if not self._may_send(self._ledger[index], now):
                return None
            return self._send(index, among, sends, now)

        self._quarantine.release(workers, self._ran_a_crash, send_suspect)
        innocent = self._quarantine.innocent(workers)
        while self._due and innocent and self._may_send(self._ledger[self._due[0]], now):
            self._send(self._due.popleft(), innocent, sends, now)
        capacity = self._budget.concurrency()
        while self._requests < capacity and len(self._ledger) < capacity + _READ_AHEAD:
            item = None if self._refusal else self._intake.next()
            if item is None or not self._admit(*item, workers, sends, now):
                break

    def settle(self, worker: W, outcome: Outcome) -> None:
        """An attempt ended: finish its request, or schedule its next attempt."""
        entry = self._ledger.get(outcome.index)
        # Outcomes of another batch, or of an attempt since re-sent elsewhere, are owed to
        # nobody: taking them would break exactly-once.
        if (
            outcome.batch_id != self.batch_id
            or entry is None
            or entry.worker != worker
            or outcome.attempt != entry.attempts
        ):
            return
        self._owed_by[worker].discard(outcome.index)
        if not self._owed_by[worker]:
            del self._owing_since[worker]
        entry.worker = None
        self._quarantine.settled(worker, outcome.index)
        result = outcome.value()
        if entry.replay:
            self._finish(outcome.index, entry, result)
            return
        self._admission.settle_cost(entry.reserved, result)
        entry.reserved = 0.0
        error = result.error
        if error is None:
            used = result.usage.total_tokens if result.usage is not None else None
            self._budget.on_answer(entry.charge, used, outcome.pause_s)
        elif self._retry_later(outcome.index, entry, error):
            return
        self._finish(outcome.index, entry, result)

    def reclaim(self, worker: W, exit_: Exit) -> None:
        """A worker exited: what it owed is re-sent, or fails after too many deaths."""
        self._quarantine.forget(worker)
        self._owing_since.pop(worker, None)
        for index in sorted(self._owed_by.pop(worker, ())):
            entry = self._ledger[index]
            entry.worker = None
            self._admission.settle_cost(entry.reserved, None)
            entry.reserved = 0.0
            if exit_.was_ready:
                entry.crashes += 1
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
        for index in list(self._ledger):
            self._finish(index, self._ledger[index], Result(index, error=describe(index)))
        self._owed_by.clear()
        self._owing_since.clear()
        self._due.clear()
        self._backoff.clear()
        self._quarantine.clear()

    def _admit(
        self,
        index: int,
        request: Any,
        workers: Sequence[W],
        sends: dict[W, list[Task]],
        now: float,
    ) -> bool:
        """Take in one new request: answer it from the cache, park it behind an identical
        one, or send it. False when a budget holds it back (it is kept for later)."""
        if isinstance(request, Answered):
            self._answer_with(index, request.result)
            return True
        key = self._admission.key_of(request)
        if (stored := self._admission.stored(key)) is not None:
            self._answer_from_cache(index, stored, duplicate=False)  # no provider, no budget
            return True
        try:
            entry = self._entry(request, key)
        except RequestError as error:
            error.index = index
            self._finish(index, None, Result(index, error=error))
            return True
        if self._admission.wait_for(key, index):
            self._ledger[index] = entry  # a duplicate: it waits for the first one's answer
            return True
        if not self._may_send(entry, now):
            self._intake.hold((index, request))
            return False
        self._ledger[index] = entry
        entry.counted = True
        self._requests += 1
        self._admission.claim(key, index)
        self._send(index, workers, sends, now)
        return True

    def _entry(self, request: Any, key: bytes | None) -> _Entry:
        """A ledger entry for a new request; raises ResultTransferError if it cannot go."""
        payload = Task.pickle_payload(request)
        if not self._budget.counts_tokens and self._admission.spending is None:
            return _Entry(payload, 0, key=key)
        prompt_tokens, cap = token_estimate(request)
        return _Entry(payload, prompt_tokens + (cap or 0), request.model, prompt_tokens, cap, key)

    def _may_send(self, entry: _Entry, now: float) -> bool:
        """Whether the budgets let `entry` go now; the cost budget is reserved if so."""
        if entry.replay:
            return True
        if self._refusal is not None:
            return False
        wait = self._budget.delay(entry.tokens)
        if wait > 0:
            self._blocked_until = now + wait
            return False
        reserved = self._admission.reserve_cost(entry.model, entry.prompt_tokens, entry.output_cap)
        if reserved is None:
            # With nothing in flight to settle below its reservation, it never will fit.
            if self._admission.cost_exhausted:
                self._refusal = self._over_budget
            return False
        entry.reserved = reserved
        return True

    def _send(self, index: int, among: Sequence[W], sends: dict[W, list[Task]], now: float) -> W:
        worker = min(among, key=lambda w: len(self._owed_by.get(w, ())))
        entry = self._ledger[index]
        entry.worker = worker
        entry.attempts += 1
        if entry.attempts == 1:
            entry.first_sent_at = now
        owed = self._owed_by.setdefault(worker, set())
        if not owed:  # not `now`: reading the input may have taken a while since
            self._owing_since[worker] = self._clock()
        owed.add(index)
        if not entry.replay:
            entry.charge = self._budget.spend(entry.tokens)
        task = Task(
            self.batch_id, index, entry.attempts, entry.payload, entry.replay, entry.standard
        )
        sends.setdefault(worker, []).append(task)
        return worker

    def _ran_a_crash(self, worker: W) -> bool:
        """Whether `worker` runs a request that was on a worker that died."""
        return any(self._ledger[i].crashes for i in self._owed_by.get(worker, ()))

    def _retry_later(self, index: int, entry: _Entry, error: Exception) -> bool:
        """Schedule the next attempt if the policy wants one; count 429s either way."""
        if isinstance(error, APIError) and error.status_code == 429:
            self.summary.rate_limited += 1
            self._budget.on_throttled(error.retry_after_s)
        now = self._clock()
        tries = entry.attempts - entry.standard_from  # the tier's own
        wait = self._retries.next_wait(error, tries, now - entry.first_sent_at)
        if wait is None:
            if entry.standard or not self._flex_fallback or not _flex_unavailable(error):
                return False
            # Flex had no capacity for it, retries included: the standard tier then.
            entry.standard, entry.standard_from, wait = True, entry.attempts, 0.0
        heapq.heappush(self._backoff, (now + wait, index))
        return True

    def _answer_from_cache(self, index: int, result: Result, duplicate: bool) -> None:
        """Finish `index` with a stored answer, through a worker if there is a postprocess."""
        self.summary.add_cached(result.cost_usd, duplicate)
        self._answer_with(index, replace(result, cached=True, cost_usd=0.0, output=result.text))

    def _answer_with(self, index: int, result: Result) -> None:
        """Finish `index` with an answer it already has, through a worker's `postprocess`."""
        result = replace(result, index=index)
        if not self._admission.replays or result.error is not None:
            self._finish(index, None, result)
            return
        self._ledger[index] = _Entry(Task.pickle_payload(result), 0, replay=True)
        self._due.append(index)

    def _refuse_more(self, refusal: Callable[[int], RequestError]) -> None:
        """Nothing more may be sent: fail what is not sent, and what is read from now on.

        The input is read a bounded chunk at a time, so a long generator's refusals
        stream out like results instead of piling up.
        """
        for index in [i for i, e in self._ledger.items() if e.worker is None and not e.replay]:
            self._finish(index, self._ledger[index], Result(index, error=refusal(index)))
        self._due = deque(i for i in self._due if i in self._ledger)
        self._backoff = [(t, i) for t, i in self._backoff if i in self._ledger]
        self._quarantine.keep_only(self._ledger)
        for _ in range(_READ_AHEAD):
            if (item := self._intake.next()) is None:
                break
            self._finish(item[0], None, Result(item[0], error=refusal(item[0])))

    def _give_up_running(self) -> None:
        """The deadline passed: what runs is given up, and nothing more is sent."""
        self._refusal = self._too_late
        for worker, owed in self._owed_by.items():
            for index in sorted(owed):
                entry = self._ledger[index]
                self._admission.settle_cost(entry.reserved, None)
                self._finish(index, entry, Result(index, error=self._too_late(index)))
            self.abandoned = self.abandoned or bool(owed)
            self._owing_since.pop(worker, None)
        self._owed_by.clear()
        self._quarantine.clear()

    def _too_late(self, index: int) -> DeadlineExceededError:
        return DeadlineExceededError("not done by the batch's deadline", index=index)

    def _over_budget(self, index: int) -> BudgetExceededError:
        cap = self._admission.spending.max_cost if self._admission.spending else 0.0
        return BudgetExceededError(
            f"not sent: it could take the batch's spend past max_cost=${cap:g}", index=index
        )

    def _finish(self, index: int, entry: _Entry | None, result: Result) -> None:
        attempts = entry.attempts if entry is not None else result.attempts
        if entry is not None:
            del self._ledger[index]
            self._requests -= entry.counted
            self._answer_duplicates(entry.key, index, result)
        self.summary.add(result, attempts)
        if self._rich:
            latency = self._clock() - entry.first_sent_at if entry is not None else 0.0
            result = replace(result, index=index, attempts=attempts, latency_s=latency)
            self._done.append((index, result))
        else:
            self._done.append((index, result.value))

    def _answer_duplicates(self, key: bytes | None, index: int, result: Result) -> None:
        """The request that others waited for is done: answer them, or send them now."""
        for other in self._admission.done(key, index, result):
            if result.error is None:
                del self._ledger[other]
                self._answer_from_cache(other, result, duplicate=True)
            else:  # each is sent on its own
                self._ledger[other].counted = True
                self._requests += 1
                self._due.append(other)


def _flex_unavailable(error: Exception) -> bool:
    """A 429 saying the flex tier has no capacity now (``resource_unavailable``)."""
    return isinstance(error, APIError) and error.code == "resource_unavailable"
