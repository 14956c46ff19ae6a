"""The Batch API route (``mode="batch"``): the caller's requests as provider batch jobs.

A thread of the parent reads the caller's input and writes each request's line into the
open group of its endpoint and model (the API wants one model per file), on disk. A
group becomes a job when it holds `batch_size` lines (or nears the 200 MB file limit),
or the input ends: uploaded (``POST /v1/files``), started (``POST /v1/batches``), polled
(after 1 s, then twice as long each time, up to `poll_interval`). What a finished job
answered goes back to the batch loop as `Answered` items, so answers pass through the
workers' `postprocess` and the caller gets the same pairs and `Result` objects as
online. The route is the batch loop's input: it iterates ``(index, item)`` pairs, and
`PENDING` while it waits for a job.

- The response cache comes first: a request answered before is answered from it (and
  every answer a job gives is stored in it).
- A line that failed with a retryable status (429, 5xx) goes into a later job, up to
  `max_retries` times; any other failure is that index's `APIError`.
- A job that ended ``expired``, ``cancelled`` or ``failed``: the lines it did answer are
  used, the others go into a later job. One refused for the enqueued-token limit is
  created again after a backoff, its lines not counted as failed. One whose upload or
  creation is refused (a 413 from a proxy, say) fails its own lines; reading goes on.
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

import copy
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from .._backends.process import block_group_signals
from .._policy.limits import token_estimate
from .._spending.admission import Admission
from .._spending.cap import NOTHING_RESERVED, Spending
from .._spending.prices import PriceTable
from .._wire.answers import StoredAnswer
from .._wire.sources import PENDING, Answered
from ..errors import APIError, BatchFileError, BudgetExceededError, RequestError
from ..results import BatchSummary, Result
from .client import BatchClient
from .journal import CONFIRMED, YIELDED, JobRecord, Journal, Line, auto_journal
from .lines import Job, batch_line, line_digest, line_result

__all__ = ["MAX_FILE_BYTES", "JobOptions", "JobRoute"]

# The API takes input files up to 200 MB; a margin for the multipart framing.
MAX_FILE_BYTES = 190 * 2**20
# A job refused for the enqueued-token limit is created again after this many polls,
# doubling each time, waiting at most `_MAX_REFUSED_WAIT_S`.
_MAX_REFUSED_WAIT_S = 600.0
# The first look at a new job; each next one waits twice as long, up to `poll_interval`.
_FIRST_POLL_S = 1.0
# Items handed to the batch loop and not yet taken, at most.
_MAX_QUEUED = 4096
_FINAL = frozenset({"completed", "expired", "cancelled", "failed"})


@dataclass(frozen=True)
class JobOptions:
    """How the route batches and waits (see `BatchPool.stream` for each)."""

    batch_size: int = 50_000
    poll_interval: float = 30.0
    max_retries: int = 5
    deadline: float | None = None  # monotonic
    online_reserve: float | None = None  # seconds kept for the online rest
    online_rate: float = 10.0  # requests per second this pool is expected to do online


class JobRoute:
    """The caller's requests as Batch API jobs, iterated by the loop as ``(index, item)``.

    Parameters:
        requests: the caller's iterable (read in the route's thread).
        client: the Batch API calls.
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
        client: BatchClient,
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
        self._summary = summary
        self._client = client
        self._journal = journal if journal is not None else Journal(None)  # until the first
        self._automatic = journal is None
        self._options = options
        self._prices = prices
        self._check_item = check_item
        self._spending = spending
        self._admission = admission
        self._replay = replay or journal is None
        self._wake = wake
        # Bounded: a finished job of 50,000 lines waits here while the loop takes them.
        self._out: queue.Queue[tuple[int, Any]] = queue.Queue(_MAX_QUEUED)
        self._groups: dict[tuple[str, str], Job] = {}  # open, by (endpoint, model)
        self._jobs: list[Job] = []  # submitted (or refused, to be created again)
        self._attempts: dict[int, int] = {}  # {index: attempts} of lines sent again
        self._sent_online: set[int] = set()  # handed to the loop as requests
        self._yielded_before: set[int] = set()  # an earlier run yielded them: replayed
        self._online = False  # past the deadline's switch: everything goes online
        self._reading = False  # the input is being read
        self._read = 0  # items read from the input
        self._next_poll = 0.0
        self._poll_wait = min(_FIRST_POLL_S, options.poll_interval)
        self._done_jobs = 0
        self._stop = threading.Event()
        self._ended = threading.Event()
        self.error: BaseException | None = None  # raised once everything is yielded
        self._thread = threading.Thread(target=self._run, name="batch-jobs", daemon=True)

    def __repr__(self) -> str:
        return f"<JobRoute jobs={len(self._jobs)} open_groups={len(self._groups)}>"

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
        for group in self._groups.values():
            group.close_files()
        journal = self._journal
        if completed:
            journal.confirm()
        owed = journal.owed()
        if owed and journal.temporary:
            self._cancel_open_jobs(owed)
        elif owed and self._automatic:
            warnings.warn(
                f"{owed} requests of this batch are in Batch API jobs that are still running "
                f"or answered and not yielded; the journal {journal.path} keeps them: run the "
                "same batch again to have them without paying twice",
                RuntimeWarning,
                stacklevel=2,
            )
        journal.close(delete=self._automatic and not owed)

    def _cancel_open_jobs(self, owed: int) -> None:
        """A temporary journal is lost at the end: cancel what it would re-attach to."""
        running = [job.record.batch_id for job in self._jobs if job.record.batch_id]
        for batch_id in running:
            self._client.cancel(batch_id)
        if running:
            warnings.warn(
                f"cancelled {len(running)} Batch API jobs ({owed} requests not yielded): the "
                "journal of this batch was temporary (another run held the automatic one)",
                RuntimeWarning,
                stacklevel=3,
            )

    def _report(self) -> None:
        """Show the jobs' states in the batch's summary (and so its progress bar)."""
        states = {"done": self._done_jobs} if self._done_jobs else {}
        for job in self._jobs:
            states[job.status] = states.get(job.status, 0) + 1
        self._summary.jobs = states
        self._summary.job_lines = (
            sum(job.counts[0] for job in self._jobs),
            sum(job.counts[1] for job in self._jobs),
        )

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        block_group_signals()  # a SIGTERM is the main thread's to handle
        try:
            item = self._next_input()
            if self._automatic and item is not None:
                self._open_automatic_journal(*item)
            self._reattach()
            self._reading = True
            while item is not None and not self._stop.is_set():
                if not self._consider(*item):
                    break
                if time.monotonic() >= self._next_poll:
                    self._poll()
                item = self._next_input()
            self._reading = False
            for group in list(self._groups.values()):
                self._submit(group)
            while self._jobs and not self._stop.is_set():
                self._poll()
                if self._jobs:
                    self._stop.wait(self._next_wait())
        except BaseException as error:  # a bug, or the API refusing us: fail what is open
            self._fail_open(error)
        finally:
            self._reading = False
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
        path = auto_journal(self._client.base_url + endpoint, line)
        try:
            journal = Journal(path)
        except BatchFileError:
            return
        self._journal.close()
        self._journal = journal

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
            line = None
        if line is None:
            self._take(index, request)
        elif line.answer is not None:
            if line.delivered != CONFIRMED or self._replay:
                stored = StoredAnswer.from_json(line.answer)
                replayed = line.delivered in (YIELDED, CONFIRMED)
                result = stored.result(index, request, cost_usd=0.0 if replayed else None)
                self._give(index, Answered(replace(result, replayed=replayed)))
        elif line.delivered == CONFIRMED and not self._replay:
            pass  # the caller had it (a failure without an answer, or a file run's line)
        elif not any(job.record.key == line.job for job in self._jobs):
            if line.delivered:  # yielded before (a failure without an answer): flagged
                self._yielded_before.add(index)
            self._take(index, request)  # no job will answer it
        return True

    @staticmethod
    def _same(index: int, request: Any, line: Line) -> bool:
        """Whether `request` is the one the journal sent as `index` (a digest of None: not
        recorded, as for the lines a file run has in its output already)."""
        return line.digest is None or line_digest(batch_line(index, request)[2]) == line.digest

    def _take(self, index: int, request: Any) -> None:
        """A new request: online (past the switch), from the cache, refused (`max_cost`),
        or spooled."""
        if self._online:
            self._send_online(index, request)
            return
        key = self._admission.key_of(request)
        if (stored := self._admission.stored(key)) is not None:
            result = replace(stored.result(index, request, cost_usd=0.0), cached=True)
            self._give(index, Answered(result, paid=stored.cost_usd))
            return
        reserved = None
        if self._spending is not None:
            prompt_tokens, cap = token_estimate(request)
            # Reserved when spooled, hours before any answer: nothing to wait for.
            reserved = self._spending.reserve(
                request.model, prompt_tokens, cap, tier="batch", learn_first=False
            )
            if reserved is None:
                cap_usd = self._spending.max_cost
                error = BudgetExceededError(
                    f"not sent: it could take the batch's spend past max_cost=${cap_usd:g}",
                    index=index,
                )
                self._give(index, Answered(Result(index, error=error)))
                return
        group = self._spool(index, request)
        if reserved is not None:
            group.reserved[index] = reserved

    def _send_online(self, index: int, request: Any) -> None:
        self._sent_online.add(index)
        self._journal.sent_alone(index, line_digest(batch_line(index, request)[2]))
        self._give(index, request)

    def _spool(self, index: int, request: Any) -> Job:
        """Write `request` into its endpoint and model's open group (a full one is
        submitted first); the group."""
        endpoint, model, data = batch_line(index, request)
        group = self._groups.get((endpoint, model))
        if group is not None and (
            group.lines >= self._options.batch_size or group.size + len(data) > MAX_FILE_BYTES
        ):
            self._submit(group)
            group = None
        if group is None:
            key = f"job-{time.time_ns():x}"
            group = Job(JobRecord(key, endpoint, model, "spooled"), self._journal.job_dir(key))
            self._groups[(endpoint, model)] = group
        group.write(index, data, request)
        return group

    def _submit(self, job: Job) -> None:
        """Record, upload and start a group's job."""
        self._groups.pop((job.record.endpoint, job.record.model), None)
        job.close_files()
        self._journal.add_job(job.record, job.lines_sent)
        job.lines_sent = []
        self._jobs.append(job)
        self._start(job)

    def _start(self, job: Job, resumed: bool = False) -> None:
        """Upload the job's lines and create it; a resumed job is looked for first (the
        run before may have died between creating it and writing its id down). A refusal
        (after the client's retries) fails the job's own lines."""
        record = job.record
        try:
            if record.file_id is None:
                record.file_id = self._client.upload(job.folder / "input.jsonl")
                record.state = "uploaded"
                self._journal.update(record)
            if record.batch_id is None:
                record.batch_id = (resumed and self._client.find(record.key)) or (
                    self._client.create(record.file_id, record.endpoint, record.key)
                )
                record.state = "submitted"
                self._journal.update(record)
        except Exception as error:
            self._fail_job(job, self._client.refusal(error))
            return
        job.status = "validating"
        self._poll_wait = min(_FIRST_POLL_S, self._options.poll_interval)

    def _fail_job(self, job: Job, error: RequestError) -> None:
        """The provider refused `job` (its upload, creation or status): each of its lines
        yields `error` (not kept: a re-run tries again)."""
        for index in sorted(self._pending(job)):
            if self._spending is not None and index in job.reserved:
                self._spending.settle(job.reserved.pop(index), None, error)
            failed = copy.copy(error)
            failed.index = index
            self._give(index, Answered(Result(index, error=failed)))
        self._journal.keep_answers([], job.record)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """`job` is done with: its files go, and the lines waiting to be re-sent go now."""
        shutil.rmtree(job.folder, ignore_errors=True)
        self._jobs.remove(job)
        self._done_jobs += 1
        if not self._reading:  # lines to send again go now (else with the input's)
            for group in list(self._groups.values()):
                self._submit(group)

    def _refused(self, job: Job) -> None:
        """The job cannot be created now (the enqueued-token limit): try again later."""
        job.refusals += 1
        job.status = "refused"
        wait = self._options.poll_interval * 2 ** (job.refusals - 1)
        job.retry_at = time.monotonic() + min(_MAX_REFUSED_WAIT_S, wait)
        job.record.batch_id = None

    def _reattach(self) -> None:
        """Take up the jobs a previous run left open (none without a kept journal)."""
        for record in self._journal.open_jobs():
            job = Job(record, self._journal.job_dir(record.key))
            self._jobs.append(job)
            if record.state == "downloaded":
                self._read_answers(job, "completed")
            elif record.state in ("spooled", "uploaded"):
                self._start(job, resumed=True)
            else:
                job.status = "in_progress"

    def _next_wait(self) -> float:
        """Seconds until the next look at the jobs: 1, 2, 4, ... up to `poll_interval`."""
        wait = self._poll_wait
        self._poll_wait = min(wait * 2, self._options.poll_interval)
        return wait

    def _poll(self) -> None:
        """Look at every open job once; take in those that are done."""
        self._next_poll = time.monotonic() + self._options.poll_interval
        if self._must_go_online():
            self._go_online()
        for job in list(self._jobs):
            if job.status == "refused":
                if time.monotonic() >= job.retry_at:
                    self._start(job)
                continue
            if job.record.batch_id is not None:
                self._look_at(job)
        self._report()

    def _look_at(self, job: Job) -> None:
        """Ask for one job's status; take in its answers once it is done."""
        assert job.record.batch_id is not None
        try:
            batch = self._client.retrieve(job.record.batch_id)
        except Exception as error:  # deleted at the provider, say
            self._fail_job(job, self._client.refusal(error))
            return
        job.status = batch.status
        if (counts := batch.request_counts) is not None:
            job.counts = (counts.completed + counts.failed, counts.total)
        if batch.status not in _FINAL:
            return
        if batch.status == "failed" and self._client.refused(batch):
            self._refused(job)
            return
        self._download(job, batch)
        self._read_answers(job, batch.status, failure=self._client.failure(batch))

    def _download(self, job: Job, batch: Any) -> None:
        """Keep the job's output and error files beside the journal, then delete them (and
        the input file) at the provider."""
        for name, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                job.keep(name, self._client.content(file_id))
        job.record.state = "downloaded"
        self._journal.update(job.record)
        for file_id in (batch.output_file_id, batch.error_file_id, job.record.file_id):
            if file_id:
                self._client.delete(file_id)

    def _read_answers(self, job: Job, status: str, failure: APIError | None = None) -> None:
        """Hand each pending index of a finished job back: its answer, an error, or a
        later attempt (another job, or online past the switch). Its answers are kept in
        the journal (and the cache) before they are handed back."""
        pending = self._pending(job)
        requests = job.requests(pending)
        results: dict[int, Result] = {}
        again: list[int] = []
        for line in job.answers():
            index = int(line.get("custom_id", -1))
            if index in pending and index not in results:
                self._answered(job, line, requests[index], results, again)
        for index in sorted(pending - results.keys() - set(again)):  # the job ended first
            error, tries = failure, self._attempts.get(index, 0) + 1
            if error is None and status != "cancelled" and tries > self._options.max_retries:
                message = f"batch jobs ended ({status}) before answering it, {tries} times"
                error = APIError(message, status_code=0)
            if error is not None:
                results[index] = Result(index, error=error.for_index(index))
            else:
                self._again(index, requests[index], count=status != "cancelled")
        self._keep(job, results, requests)
        for index, result in results.items():
            self._give(index, Answered(result))
        for index in again:
            self._again(index, requests[index], count=True)
        self._forget(job)

    def _answered(
        self,
        job: Job,
        line: dict[str, Any],
        request: Any,
        results: dict[int, Result],
        again: list[int],
    ) -> None:
        """One output or error line: its index's result, or a later attempt."""
        index = int(line["custom_id"])
        attempts = self._attempts.get(index, 0) + 1
        result = line_result(line, request, attempts, self._prices, job.record.batch_id)
        if self._spending is not None:
            output = result.usage.output_tokens if result.usage is not None else 0
            reserved = job.reserved.pop(index, NOTHING_RESERVED)
            self._spending.settle(reserved, result.cost_usd, result.error, output)
        error = result.error
        retryable = isinstance(error, APIError) and error.retryable
        if retryable and attempts <= self._options.max_retries:
            again.append(index)
        else:
            results[index] = result

    def _keep(self, job: Job, results: dict[int, Result], requests: dict[int, Any]) -> None:
        """Keep a job's answers in the journal (marking it read) and in the cache."""
        answers = []
        for index, result in results.items():
            if (answer := StoredAnswer.of(result, errors_too=True)) is not None:
                answers.append((index, answer.to_json()))
            if (stored := StoredAnswer.of(result)) is not None:
                self._admission.keep(self._admission.key_of(requests[index]), stored)
        self._journal.keep_answers(answers, job.record)

    def _again(self, index: int, request: Any, *, count: bool) -> None:
        """Send `index` once more: in a later job, or online past the switch."""
        if count:
            self._attempts[index] = self._attempts.get(index, 0) + 1
        if self._online:
            self._send_online(index, request)
            return
        self._spool(index, request)

    def _must_go_online(self) -> bool:
        """Whether what is still in jobs must now go online to be done by the deadline."""
        options = self._options
        if options.deadline is None or self._online:
            return False
        left = options.deadline - time.monotonic()
        if options.online_reserve is not None:
            return left <= options.online_reserve
        open_lines = sum(g.lines for g in self._groups.values()) + sum(
            len(self._pending(job)) for job in self._jobs
        )
        return left <= open_lines / options.online_rate + 2 * options.poll_interval

    def _go_online(self) -> None:
        """Cancel the open jobs (their answered lines are used when they end) and hand
        the spooled groups' requests to the loop."""
        self._online = True
        for job in list(self._jobs):
            if job.status != "refused":
                assert job.record.batch_id is not None
                self._client.cancel(job.record.batch_id)
                continue
            self._jobs.remove(job)  # never created: all of it goes online
            for index, request in job.requests(self._pending(job)).items():
                self._send_online(index, request)
        for group in list(self._groups.values()):
            self._groups.pop((group.record.endpoint, group.record.model))
            group.close_files()
            for index, request in group.requests(set(group.indices)).items():
                self._send_online(index, request)

    def _pending(self, job: Job) -> set[int]:
        return self._journal.pending(job.record.key)

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
        """The route cannot go on: every index it still owes yields `error`."""
        owed = [i for group in self._groups.values() for i in group.indices]
        for job in self._jobs:
            owed.extend(self._pending(job))
        self._groups.clear()
        self._jobs.clear()
        message = self._client.masked(f"the Batch API route failed: {error!r}")
        for index in sorted(set(owed)):
            failed = RequestError(message, index=index)
            self._give(index, Answered(Result(index, error=failed)))

