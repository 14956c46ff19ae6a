"""The job route (``mode="batch"``): the caller's requests as provider batch jobs.

A thread of the parent reads the caller's input and spools each request into a batch
job at its model's provider (`jobs.py`: grouped by endpoint and model, uploaded,
started, polled; OpenAI's Batch API or Anthropic's Message Batches, `provider.py`). What a
finished job answered goes back to the batch loop as `Answered` items, so answers pass
through the workers' `postprocess` and the caller gets the same pairs and `Result`
objects as online. The route is the batch loop's input: it iterates ``(index, item)``
pairs, and `PENDING` while it waits for a job.

- The response cache comes first: a request answered before is answered from it (and
  every answer a job gives is stored in it).
- A line that failed with a retryable status (429, 5xx) goes into a later job, up to
  `max_retries` times; any other failure is that index's `APIError`.
- A job that ended ``expired``, ``cancelled`` or ``failed``: the lines it did answer are
  used, the others go into a later job (a line that jobs ended without answering
  `max_retries` times goes online: every answer asked for is given). One refused for the
  enqueued-token limit is created again after a backoff, its lines not counted as failed.
  One whose upload or creation is refused (a 413 from a proxy, say) fails its own lines;
  reading goes on.
- Under a `deadline`: once what is still in jobs could not be done online in the time
  left, the open jobs are cancelled, their answered lines used, and the rest (and
  whatever is read from then on) is handed to the loop as requests, to run online.
- Every job and every answer is in the `Journal` (`journal.py`), so a new run of the same
  requests re-attaches instead of paying again. With ``journal=PATH`` a re-run of
  `stream` yields what no earlier run yielded (`run` returns everything); without one,
  the journal is kept in the user's cache directory, named after the batch's first
  request, until nothing is owed, and a re-run gives back everything (what earlier runs
  yielded with ``Result.replayed``), paying only for what no run got.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from .._signals import block_group_signals
from .._spending.admission import Admission
from .._spending.cap import Spending
from .._spending.prices import PriceTable
from .._wire.answers import StoredAnswer
from .._wire.sources import PENDING, Answered
from ..errors import BatchFileError, RequestError
from ..results import BatchSummary, Result
from .jobs import Jobs, JobServices
from .journal import CONFIRMED, YIELDED, Journal, Line, auto_journal
from .lines import batch_line, line_digest
from .options import JobOptions
from .provider import Providers

__all__ = ["JobRoute"]

# Items handed to the batch loop and not yet taken, at most.
_MAX_QUEUED = 4096


class JobRoute:
    """The caller's requests as Batch API jobs, iterated by the loop as ``(index, item)``.

    Parameters:
        requests: the caller's iterable (read in the route's thread).
        providers: each provider's batch API.
        journal: the caller's journal (opened and locked already), or None for the
            automatic one (see the module docstring).
        options: sizes, polling, retries, the deadline.
        prices: prices at the batch tier, for each `Result.cost_usd`.
        check_item: validates each item read (None: checked already).
        spending: the batch's `max_cost` (reserved per line when it is spooled), or None.
        admission: the batch's response cache (looked up and filled from the thread).
        replay: give back the answers earlier runs yielded too (`run`), not only the rest.
        wake: wakes the batch loop when something arrives.
        summary: the batch's summary, where the jobs' states are shown.
    """

    def __init__(
        self,
        requests: Iterable[Any],
        *,
        providers: Providers,
        journal: Journal | None,
        options: JobOptions,
        prices: PriceTable,
        check_item: Callable[[int, object], None] | None,
        spending: Spending | None,
        admission: Admission,
        replay: bool,
        wake: Callable[[], None],
        summary: BatchSummary,
    ) -> None:
        self._source = iter(requests)
        self._providers = providers
        self._journal = journal if journal is not None else Journal(None)  # until the first
        self._automatic = journal is None
        self._options = options
        self._services = JobServices(providers, prices, spending, admission, summary)
        self._jobs = self._jobs_of(self._journal)
        self._check_item = check_item
        self._admission = admission
        self._replay = replay or journal is None
        self._wake = wake
        # Bounded: a finished job of 50,000 lines waits here while the loop takes them.
        self._out: queue.Queue[tuple[int, Any]] = queue.Queue(_MAX_QUEUED)
        self._sent_online: set[int] = set()  # handed to the loop as requests
        self._yielded_before: set[int] = set()  # an earlier run yielded them: replayed
        self._reattached: set[int] = set()  # owed by jobs of an earlier run, not read yet
        self._read = 0  # items read from the input
        self._next_poll = 0.0
        self._stop = threading.Event()
        self._ended = threading.Event()
        self.error: BaseException | None = None  # raised once everything is yielded
        self._thread = threading.Thread(target=self._run, name="batch-jobs", daemon=True)

    def __repr__(self) -> str:
        return f"<JobRoute read={self._read} {self._jobs!r}>"

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._thread.is_alive() and not self._ended.is_set():
            self._thread.start()
        try:
            return self._out.get_nowait()
        except queue.Empty:
            if not self._ended.is_set() or not self._out.empty():
                return PENDING
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        raise StopIteration

    def taken(self, index: int) -> None:
        """The caller was handed `index` (the journal keeps it, and confirms the last)."""
        self._journal.taken(index)

    def finished(self, index: int, result: Result) -> None:
        """`index` has its result (the loop says so of every index): the answer of one
        sent online is kept in the journal, as a job's are."""
        if index in self._sent_online:
            self._sent_online.discard(index)
            if (answer := StoredAnswer.of(result, errors_too=True)) is not None:
                self._journal.keep_answers([(index, answer.to_json())], None)

    def close(self, completed: bool) -> None:
        """Stop the thread (jobs already submitted go on: the journal knows them).

        `completed`: the caller had every result. The automatic journal is deleted once
        it owes nothing; when it still does, a warning says where it is."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._jobs.close_files()
        journal = self._journal
        if completed:
            journal.confirm()
        owed = journal.owed()
        if owed and journal.temporary and (cancelled := self._jobs.cancel_running()):
            # A temporary journal is lost at the end: cancel what it would re-attach to.
            warnings.warn(
                f"cancelled {cancelled} Batch API jobs ({owed} requests not yielded): the "
                "journal of this batch was temporary (another run held the automatic one)",
                RuntimeWarning,
                stacklevel=2,
            )
        elif owed and self._automatic:
            warnings.warn(
                f"{owed} requests of this batch are in Batch API jobs that are still running "
                f"or answered and not yielded; the journal {journal.path} keeps them: run the "
                "same batch again to have them without paying twice",
                RuntimeWarning,
                stacklevel=2,
            )
        journal.close(delete=self._automatic and not owed)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        block_group_signals()  # a SIGTERM is the main thread's to handle
        try:
            item = self._next_input()
            if self._automatic and item is not None:
                self._open_automatic_journal(*item)
            self._reattached = self._jobs.reattach()
            self._jobs.reading(True)
            while item is not None and not self._stop.is_set():
                if not self._consider(*item):
                    break
                if time.monotonic() >= self._next_poll:
                    self._poll()
                item = self._next_input()
            self._jobs.reading(False)
            self._jobs.submit_all()
            while self._jobs and not self._stop.is_set():
                self._poll()
                if self._jobs:
                    self._stop.wait(self._jobs.next_wait())
        except BaseException as error:  # a bug, or the API refusing us: fail what is open
            self._fail_open(error)
        finally:
            self._jobs.reading(False)
            self._ended.set()
            self._wake()

    def _next_input(self) -> tuple[int, Any] | None:
        """The next ``(index, request)`` of the input; None at its end, or when it raised
        or gave a bad item (kept in `error`, raised once everything read is yielded)."""
        try:
            request = next(self._source)
            if self._check_item is not None:
                self._check_item(self._read, request)
        except StopIteration:
            return None
        except Exception as error:
            self.error = error
            return None
        self._read += 1
        return self._read - 1, request

    def _open_automatic_journal(self, index: int, request: Any) -> None:
        """The journal named after the batch's endpoint and first request (a temporary
        one while another run holds it)."""
        endpoint, _, line = batch_line(index, request)
        path = auto_journal(self._providers.base_url + endpoint, line)
        try:
            journal = Journal(path)
        except BatchFileError:
            return
        self._journal.close()
        self._journal = journal
        self._jobs = self._jobs_of(journal)

    def _jobs_of(self, journal: Journal) -> Jobs:
        return Jobs(journal, self._options, self._services, self._give, self._send_online)

    def _poll(self) -> None:
        self._next_poll = time.monotonic() + self._options.poll_interval
        if self._must_go_online():
            self._jobs.go_online()
        self._jobs.poll()

    def _must_go_online(self) -> bool:
        """Whether what is still in jobs must now go online to be done by the deadline."""
        options = self._options
        if options.deadline is None or self._jobs.online:
            return False
        left = options.deadline - time.monotonic()
        if options.online_reserve is not None:
            return left <= options.online_reserve
        return left <= self._jobs.open_lines() / options.online_rate + 2 * options.poll_interval

    def _consider(self, index: int, request: Any) -> bool:
        """A request read: given back from the journal, left to the job that has it, or
        taken as new. False when it is not the request the journal has at `index`."""
        line = self._journal.line(index)
        if line is not None and not self._same(index, request, line):
            if not self._automatic:
                self.error = ValueError(
                    f"request {index} is not the one the journal {self._journal.path} sent "
                    f"as {index}: a journal re-attaches the same requests in the same order; "
                    "pass a new journal for other requests"
                )
                return False
            self._journal.forget(index)  # another batch with the same first request
            self._reattached.discard(index)  # (its job, unless it answered already, skips it)
            line = None
        if index in self._reattached:  # its job answers it (it may have done so already)
            self._reattached.discard(index)
        elif line is None:
            self._take(index, request)
        elif line.answer is not None:
            self._answer_again(index, request, line.answer, line.delivered)
        elif line.delivered == CONFIRMED and not self._replay:
            pass  # the caller had it (a failure without an answer, or a file run's line)
        elif not self._jobs.has(line.job):
            if line.delivered:  # yielded before (a failure without an answer): flagged
                self._yielded_before.add(index)
            self._take(index, request)  # no job will answer it
        return True

    def _answer_again(self, index: int, request: Any, answer: str, delivered: int) -> None:
        """An index the journal has an answer for: given back, unless the caller had it
        (and `replay` is off). The cache gets it too: a run killed before the cache's next
        commit had kept it in the journal only."""
        stored = StoredAnswer.from_json(answer)
        if stored.error is None:
            key = self._admission.key_of(request)
            if self._admission.stored(key) is None:
                self._admission.keep(key, stored)
        if delivered != CONFIRMED or self._replay:
            replayed = delivered in (YIELDED, CONFIRMED)
            result = stored.result(index, request, cost_usd=0.0 if replayed else None)
            self._give(index, Answered(replace(result, replayed=replayed)))

    @staticmethod
    def _same(index: int, request: Any, line: Line) -> bool:
        """Whether `request` is the one the journal sent as `index` (a digest of None: not
        recorded, as for the lines a file run has in its output already)."""
        return line.digest is None or line_digest(batch_line(index, request)[2]) == line.digest

    def _take(self, index: int, request: Any) -> None:
        """A new request: online (past the switch), from the cache, or spooled."""
        if self._jobs.online:
            self._send_online(index, request)
            return
        key = self._admission.key_of(request)
        if (stored := self._admission.stored(key)) is not None:
            result = replace(stored.result(index, request, cost_usd=0.0), cached=True)
            self._give(index, Answered(result, paid=stored.cost_usd))
            return
        self._jobs.spool(index, request)

    def _send_online(self, index: int, request: Any) -> None:
        self._sent_online.add(index)
        self._journal.sent_alone(index, line_digest(batch_line(index, request)[2]))
        self._give(index, request)

    def _give(self, index: int, item: Any) -> None:
        """Hand `item` to the batch loop (waiting while it has many not yet taken)."""
        if isinstance(item, Answered) and index in self._yielded_before:
            self._yielded_before.discard(index)
            item = Answered(replace(item.result, replayed=True), item.paid)
        while not self._stop.is_set():
            try:
                self._out.put((index, item), timeout=0.1)
                break
            except queue.Full:
                self._wake()
        self._wake()

    def _fail_open(self, error: BaseException) -> None:
        """The route cannot go on: every index it still owes, and the rest of the input,
        yields `error`."""
        message = self._providers.masked(f"the job route failed: {error!r}")
        owed = self._jobs.give_up()
        while (item := self._next_input()) is not None and not self._stop.is_set():
            owed.append(item[0])  # the rest of the input: each index comes back once
        for index in owed:
            self._give(index, Answered(Result(index, error=RequestError(message, index=index))))
