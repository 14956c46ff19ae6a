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

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from .._observe.tally import State
from .._policy.quarantine import MAX_CRASHES_PER_REQUEST, Quarantine
from .._wire.protocol import Cancel, Exit, Outcome
from ..errors import DeadlineExceededError, RequestError, WorkerCrashedError
from ..results import BatchSummary, Result, ResultPair
from .delivery import Delivery
from .intake import Intake, Item
from .known import KnownAnswers
from .ledger import Attempt, Entry, Ledger, Schedule
from .sender import Policies, Sender, Sends

__all__ = ["MAX_CRASHES_PER_REQUEST", "POLL_INTERVAL_S", "Dispatcher", "Policies"]

# A worker, to the dispatcher: only a key (so its tests need no processes).
W = TypeVar("W", bound=Hashable)

# Longest the batch loop sleeps with nothing due, so it notices silent workers.
POLL_INTERVAL_S = 1.0
# Ledger entries allowed beyond `max_concurrency` (cache hits being post-processed,
# duplicates waiting for an answer): they cost no provider capacity, only memory.
_READ_AHEAD = 256


class Dispatcher(Generic[W]):
    """The ledger and policy of one batch.

    Example (workers are plain names here; the batch loop passes its worker handles):

    >>> from batch_stream_openai._policy.limits import Budget
    >>> from batch_stream_openai._policy.retry import Retries, RetryPolicy, RetrySchedule
    >>> retries = Retries(RetrySchedule(RetryPolicy()), endpoints=1, flex_fallback=False)
    >>> policies = Policies(Budget(2, rpm=None, tpm=None, adaptive=False), retries)
    >>> dispatcher = Dispatcher(1, Intake(requests), policies, Delivery())
    >>> sends = dispatcher.fill(["a", "b"])  # {worker: [Task, Cancel, ...]}: 2 in flight
    >>> [(worker, task.index) for worker, tasks in sends.items() for task in tasks]
    [('a', 0), ('b', 1)]
    >>> dispatcher.reclaim("b", Exit(exitcode=-9, was_ready=True))  # "b" died: 1 again
    >>> task = sends["a"][0]
    >>> dispatcher.settle("a", Outcome.of(task, Result(task.index, text="0", output="0")))
    >>> dispatcher.take_results()
    [(0, '0')]
    >>> [task.index for task in dispatcher.fill(["a"])["a"]]  # the re-send and the next
    [1, 2]

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
        self._delivery = delivery
        self._deadline = deadline
        self._clock = clock
        self._ledger: Ledger[W] = Ledger()
        self._sender: Sender[W] = Sender(batch_id, self._ledger, policies, delivery.summary, clock)
        self._schedule = Schedule()  # re-sends, retries, replays: due now or later
        self._known: KnownAnswers[W] = KnownAnswers(
            self._ledger, self._schedule, policies.admission, delivery.summary, self._finish
        )
        self._quarantine: Quarantine[W] = Quarantine()  # requests whose workers died
        self._read = 0  # requests read from the input
        self._workers_seen = False  # the last `fill` had ready workers
        self._cancels: Sends = {}  # attempts to stop: the other copy won
        self.abandoned = False  # requests given up while in flight (to cancel in workers)

    def __repr__(self) -> str:
        return (
            f"<Dispatcher batch={self.batch_id} owed={len(self._ledger)} {self._schedule} "
            f"quarantine={len(self._quarantine)}>"
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
    def unfinished(self) -> int:
        """Requests read and not yet finished (running, or waiting to be sent)."""
        return len(self._ledger)

    def state(self) -> State:
        """The gauges of the batch (sent, waiting, the limit, the jobs, the endpoints)."""
        running, sender, jobs = self._ledger.running, self._sender, dict(self.summary.jobs)
        return State(running, self.unfinished - running, sender.capacity(), jobs, sender.gauges())

    def owing_since(self, worker: W) -> float | None:
        """Since when `worker` holds requests of this batch without a break (None: idle)."""
        return self._ledger.owing_since(worker)

    def take_results(self) -> list[ResultPair]:
        """The results finished since the last call, for the caller."""
        return self._delivery.take()

    def next_wake(self) -> float:
        """Seconds until something becomes due (a retry, the budget), at most the poll."""
        now = self._clock()
        refused = self._sender.refusal is not None
        wake = 0.0 if refused and not self._intake.exhausted else POLL_INTERVAL_S
        if self._deadline is not None:
            wake = min(wake, self._deadline - now)
        if self._sender.blocked_until > now:
            wake = min(wake, self._sender.blocked_until - now)
        if (retry_at := self._schedule.next_at()) is not None:
            wake = min(wake, retry_at - now)
        if self._workers_seen:
            wake = min(wake, self._sender.hedge_wait(now, self._intake.exhausted, self._read))
        return max(0.0, wake)

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
        refusal = self._sender.refusal
        if self._deadline is not None and now >= self._deadline and refusal is None:
            self._give_up_running()
        self._workers_seen = bool(workers)
        if workers:
            self._send_due(workers, sends, now)
        # Not to a worker that runs a suspect or is drained for one: suspects run alone.
        if innocent := self._quarantine.innocent(workers):
            # Hedges before new requests: a straggler holds the batch up.
            tail = self._intake.exhausted
            self._sender.send_hedges(innocent, sends, now, tail, self._read)
            capacity = self._sender.capacity()
            while self._ledger.slots < capacity and len(self._ledger) < capacity + _READ_AHEAD:
                item = None if self._sender.refusal else self._intake.next()
                if item is None or not self._admit(item, innocent, sends, now):
                    break
        if (refusal := self._sender.refusal) is not None:
            self._refuse_more(refusal)
        return sends

    def _send_due(self, workers: Sequence[W], sends: Sends, now: float) -> None:
        """Send what is due: retries whose backoff is over, re-sends, suspects alone."""
        self._schedule.release(now)
        sender = self._sender

        def send_suspect(index: int, among: list[W]) -> W | None:
            reserved = sender.may_send(self._ledger.entries[index], now)
            return None if reserved is None else sender.send(index, among, sends, now, reserved)

        self._quarantine.release(workers, self._ledger.load, send_suspect)
        innocent = self._quarantine.innocent(workers)
        while innocent and (index := self._schedule.first()) is not None:
            reserved = sender.may_send(self._ledger.entries[index], now)
            if reserved is None:
                break
            sender.send(self._schedule.pop(), innocent, sends, now, reserved)

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
        other = self._ledger.end(index, attempt)  # the copy still running, if any
        self._quarantine.settled(worker, index)
        result = outcome.value()
        if entry.replay:
            self._finish(index, entry, result)
            return
        saved = self._admission.price(result, entry.model, entry.retry.standard)
        if attempt.reserved is not None:
            self._admission.settle_cost(attempt.reserved, result)
        blamed = self._sender.ended(index, entry, attempt, result)
        error = result.error
        if error is None:
            self.summary.add_prompt_cache_saving(saved)
            used = result.usage.total_tokens if result.usage is not None else None
            self._budget.on_answer(attempt.charge, used, outcome.pause_s)
            if other is not None:
                self._cancel(index, entry, other)  # the first answer wins
        elif other is not None:  # the other copy may still answer
            self._sender.throttled(error)
            return
        elif self._retry_later(index, entry, error, blamed):
            return
        self._finish(index, entry, result)

    def _cancel(self, index: int, entry: Entry, attempt: Attempt) -> None:
        """Stop `attempt`: its other copy answered first."""
        self._cancels.setdefault(attempt.worker, []).append(
            Cancel(self.batch_id, index, attempt.number)
        )
        self._ledger.end(index, attempt)
        self._sender.withdraw(attempt)

    def reclaim(self, worker: W, exit_: Exit) -> None:
        """A worker exited: what it owed is re-sent, or fails after too many deaths."""
        self._quarantine.forget(worker)
        for index, lost in self._ledger.take_owed(worker).items():
            entry = self._ledger.entries[index]
            for attempt in lost:
                self._sender.withdraw(attempt)
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
                self._schedule.now(index)

    def stop_reading(self, error: BaseException) -> None:
        """Read nothing more; `error` is raised once everything read has been yielded."""
        self._intake.stop(error)

    def fail_everything(self, describe: Callable[[int], RequestError]) -> None:
        """Nothing left can run: each index not yet done yields `describe(index)`.

        The requests in flight are given up too: the caller gets them as failed now.
        """
        self._intake.stop()
        for unsent in self._intake.take_unsent():
            self._finish(unsent.index, None, Result(unsent.index, error=describe(unsent.index)))
        self._give_up(describe)
        for index, entry in list(self._ledger.entries.items()):
            self._finish(index, entry, Result(index, error=describe(index)))
        self._schedule.clear()

    def _admit(self, item: Item, workers: Sequence[W], sends: Sends, now: float) -> bool:
        """Take in one new request: answer it from the cache, park it behind an identical
        one, or send it. False when a budget holds it back (it is kept for later)."""
        self._read += 1
        index, request, prefix = item.index, item.request, item.prefix
        answered, key = self._known.answer(index, request)
        if answered:
            self._intake.answered(prefix)
            return True
        try:
            estimate = self._budget.counts_tokens or self._admission.caps_cost
            entry = Entry.of(index, request, key, estimate, prefix)
        except RequestError as error:  # it cannot be pickled: that index fails alone
            self._intake.answered(prefix)
            self._finish(index, None, Result(index, error=error))
            return True
        if self._admission.wait_for(key, index):
            self._ledger.add(index, entry, counted=False)  # waits for the first one's answer
            return True
        reserved = self._sender.may_send(entry, now)
        if reserved is None:
            self._read -= 1  # read again later
            self._intake.hold(item)
            return False
        self._ledger.add(index, entry, counted=True)
        self._admission.claim(key, index)
        self._sender.send(index, workers, sends, now, reserved)
        return True

    def _retry_later(self, index: int, entry: Entry, error: Exception, blamed: int | None) -> bool:
        """Schedule the next attempt if the retry policy wants one; count 429s either way."""
        self._sender.throttled(error)
        now = self._clock()
        wait = self._retries.after(entry.retry, error, blamed, now)
        if wait is None:
            return False
        if wait == 0:
            self._schedule.now(index)
        else:
            self._schedule.later(index, now + wait)
        return True

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
        self._schedule.keep_only(entries)
        self._quarantine.keep_only(entries)
        for _ in range(_READ_AHEAD):
            if (item := self._intake.next()) is None:
                break
            index, request = item.index, item.request
            if not self._known.answer(index, request)[0]:  # an answer is never refused
                self._finish(index, None, Result(index, error=refusal(index)))

    def _give_up_running(self) -> None:
        """The deadline passed: what runs is given up, and nothing more is sent."""
        self._sender.refuse(_too_late)
        self._give_up(_too_late)

    def _give_up(self, describe: Callable[[int], RequestError]) -> None:
        """Every attempt running is given up: its request yields `describe(index)`."""
        for index, attempts in self._ledger.give_up():
            for attempt in attempts:
                self._sender.withdraw(attempt)
            self._finish(index, self._ledger.entries[index], Result(index, error=describe(index)))
            self.abandoned = True
        self._quarantine.clear()

    def _finish(self, index: int, entry: Entry | None, result: Result) -> None:
        """`index` is done: out of the ledger, its duplicates answered, to the caller."""
        if entry is not None:
            self._ledger.remove(index)
            self._intake.answered(entry.prefix)
            self._known.duplicates(entry.key, index, result)
        self._delivery.deliver(index, entry, result)


def _too_late(index: int) -> DeadlineExceededError:
    """The error of a request not done by the batch's deadline."""
    return DeadlineExceededError("not done by the batch's deadline", index=index)
