"""The batch jobs of one route, at every provider: spooled, submitted, polled, read back.

Lines are written into open groups (`groups.py`); a full group, or every group once the
input ends, becomes a job at its provider (`provider.py`): uploaded if the provider takes
files, created, and polled (after 1 s, then twice as long each time, up to
`poll_interval`). A finished job's answers are kept in the journal and the cache, then
handed back through `give`; a line to try again is spooled into a later job, and one
whose jobs ended without answering it `max_retries` times (expired, say), or any line
past the deadline's switch, is handed back through `send_online`.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._spending.admission import Admission
from .._spending.cap import Spending
from .._spending.prices import PriceTable
from .._wire.answers import StoredAnswer
from .._wire.sources import Answered
from ..errors import APIError, BudgetExceededError, RequestError
from ..results import BatchSummary, Result
from .groups import Groups
from .journal import Journal
from .lines import Job, line_result
from .options import JobOptions
from .provider import BatchProvider, JobState, Providers

__all__ = ["JobServices", "Jobs"]
# A job refused for the enqueued-token limit is created again after this many polls,
# doubling each time, waiting at most `_MAX_REFUSED_WAIT_S`.
_MAX_REFUSED_WAIT_S = 600.0
# The first look at a new job; each next one waits twice as long, up to `poll_interval`.
_FIRST_POLL_S = 1.0

# How answers go back to the route: (index, an `Answered` item or a request to send online).
Give = Callable[[int, Any], None]


@dataclass(frozen=True)
class JobServices:
    """What the jobs talk to: the providers, the prices, the cost cap, the cache, the
    summary (where the jobs' states are shown)."""

    providers: Providers
    prices: PriceTable
    spending: Spending | None
    admission: Admission
    summary: BatchSummary


class Jobs:
    """The open groups and the submitted jobs of one journal (see the module docstring).

    Parameters:
        journal: where every job and answer is recorded.
        options: sizes, polling, retries, the deadline.
        services: the providers, prices, cost cap, cache and summary.
        give: hands an index's `Answered` item back to the route.
        send_online: hands an index's request back to run online.
    """

    def __init__(
        self,
        journal: Journal,
        options: JobOptions,
        services: JobServices,
        give: Give,
        send_online: Give,
    ) -> None:
        self._journal = journal
        self._options = options
        self._services = services
        self._give = give
        self._send_online = send_online
        self._groups = Groups(journal, options, services.providers, services.spending)
        self._jobs: list[Job] = []  # submitted (or refused, to be created again)
        self._attempts: dict[int, int] = {}  # {index: attempts} of lines sent again
        self._input_ended = True  # lines to send again are submitted at once
        self._poll_wait = min(_FIRST_POLL_S, options.poll_interval)
        self._done = 0
        self.online = False  # past the deadline's switch: everything goes online

    def __repr__(self) -> str:
        return f"<Jobs jobs={len(self._jobs)} {self._groups!r}>"

    def __bool__(self) -> bool:
        """Whether a submitted job is still open."""
        return bool(self._jobs)

    def has(self, key: str | None) -> bool:
        """Whether the job recorded as `key` is open (it will answer its lines)."""
        return any(job.record.key == key for job in self._jobs)

    def reading(self, reading: bool) -> None:
        """While the input is read, lines to send again wait for the input's next job."""
        self._input_ended = not reading

    def spool(self, index: int, request: Any) -> None:
        """Write `request` into its open group (a group it fills becomes a job); one its
        provider cannot take, or that does not fit under ``max_cost``, yields its error."""
        try:
            full = self._groups.add(index, request)
        except (ValueError, BudgetExceededError) as error:
            failed = error if isinstance(error, RequestError) else RequestError(str(error))
            failed.index = index
            self._give(index, Answered(Result(index, error=failed)))
            return
        if full is not None:
            self._submit(full)

    def submit_all(self) -> None:
        """Every open group becomes a job."""
        for group in self._groups.take_all():
            self._submit(group)

    def reattach(self) -> set[int]:
        """Take up the jobs a previous run left open (none without a kept journal). Returns
        the indices they owe: theirs to answer, whether the input has reached them or not."""
        owed: set[int] = set()
        for record in self._journal.open_jobs():
            job = Job(record, self._journal.job_dir(record.key))
            owed |= self._pending(job)
            self._jobs.append(job)
            if record.state == "downloaded":
                self._read_answers(job, "completed")
            elif record.state in ("spooled", "uploaded"):
                self._start(job, resumed=True)
            else:
                job.status = "in_progress"
        return owed

    def next_wait(self) -> float:
        """Seconds until the next look at the jobs: 1, 2, 4, ... up to `poll_interval`."""
        wait = self._poll_wait
        self._poll_wait = min(wait * 2, self._options.poll_interval)
        return wait

    def poll(self) -> None:
        """Look at every open job once; take in those that are done."""
        for job in list(self._jobs):
            if job.status == "refused":
                if time.monotonic() >= job.retry_at:
                    self._start(job)
                continue
            if job.record.batch_id is not None:
                self._look_at(job)
        self._report()

    def cancel_running(self) -> int:
        """Cancel every job created at the provider; how many there were."""
        running = [job for job in self._jobs if job.record.batch_id]
        for job in running:
            self._provider(job).cancel(str(job.record.batch_id))
        return len(running)

    def close_files(self) -> None:
        self._groups.close_files()

    def give_up(self) -> list[int]:
        """Forget every group and job: the indices they still owed, in order."""
        owed = self._groups.indices()
        for job in self._jobs:
            owed.update(self._pending(job))
        self._groups.take_all()
        self._jobs.clear()
        return sorted(owed)

    def again(self, index: int, request: Any, *, count: bool) -> None:
        """Send `index` once more: in a later job, or online past the switch."""
        if count:
            self._attempts[index] = self._attempts.get(index, 0) + 1
        if self.online:
            self._send_online(index, request)
            return
        self.spool(index, request)

    def _submit(self, job: Job) -> None:
        """Record, upload and start a group's job."""
        self._journal.add_job(job.record, job.lines_sent)
        job.lines_sent = []
        self._jobs.append(job)
        self._start(job)

    def _start(self, job: Job, resumed: bool = False) -> None:
        """Upload the job's lines (if its provider takes files) and create it; a resumed
        job is looked for first (the run before may have died between creating it and
        writing its id down). A refusal (after the adapter's retries) fails its lines."""
        record = job.record
        provider = self._provider(job)
        path = job.folder / "input.jsonl"
        try:
            if record.file_id is None and provider.uploads:
                record.file_id = provider.upload(path)
                record.state = "uploaded"
                self._journal.update(record)
            if record.batch_id is None:
                found = resumed and provider.find(record, len(self._pending(job)))
                record.batch_id = found or provider.create(record, path)
                record.state = "submitted"
                self._journal.update(record)
        except Exception as error:
            self._fail(job, provider.refusal(error))
            return
        job.status = "validating"
        self._poll_wait = min(_FIRST_POLL_S, self._options.poll_interval)

    def _fail(self, job: Job, error: RequestError) -> None:
        """The provider refused `job` (its upload, creation or status): each of its lines
        yields `error` (not kept: a re-run tries again)."""
        spending = self._services.spending
        for index in sorted(self._pending(job)):
            if spending is not None and index in job.reserved:
                spending.settle(job.reserved.pop(index), None, error)
            failed = copy.copy(error)
            failed.index = index
            self._give(index, Answered(Result(index, error=failed)))
        self._journal.keep_answers([], job.record)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """`job` is done with: its files go, and the lines waiting to be re-sent go now."""
        shutil.rmtree(job.folder, ignore_errors=True)
        self._jobs.remove(job)
        self._done += 1
        if self._input_ended:  # lines to send again go now (else with the input's)
            self.submit_all()

    def _refused(self, job: Job) -> None:
        """The job cannot be created now (the enqueued-token limit): try again later."""
        job.refusals += 1
        job.status = "refused"
        wait = self._options.poll_interval * 2 ** (job.refusals - 1)
        job.retry_at = time.monotonic() + min(_MAX_REFUSED_WAIT_S, wait)
        job.record.batch_id = None

    def _look_at(self, job: Job) -> None:
        """Ask for one job's status; take in its answers once it is done."""
        batch_id = str(job.record.batch_id)
        provider = self._provider(job)
        try:
            state = provider.state(batch_id)
        except Exception as error:  # deleted at the provider, say
            self._fail(job, provider.refusal(error))
            return
        job.status = state.status
        job.counts = (state.answered, state.total)
        if not state.final:
            return
        if state.status == "failed" and state.refused:
            self._refused(job)
            return
        self._download(job, state)
        job.waited_s = max(0.0, time.time() - state.created_at)  # its answers' latency
        self._read_answers(job, state.status, failure=state.failure)

    def _download(self, job: Job, state: JobState) -> None:
        """Keep the job's answers beside the journal, then delete what it left at the
        provider (its files, or the job itself)."""
        provider = self._provider(job)
        provider.download(state, str(job.record.batch_id), job.folder)
        job.record.state = "downloaded"
        self._journal.update(job.record)
        provider.clean_up(job.record, state)

    def _read_answers(self, job: Job, status: str, failure: APIError | None = None) -> None:
        """Hand each pending index of a finished job back: its answer, an error, or a
        later attempt. Its answers are kept in the journal (and the cache) first."""
        pending = self._pending(job)
        requests = job.requests(pending)
        results: dict[int, Result] = {}
        again: list[int] = []
        for line in job.answers():
            index = int(line.get("custom_id", -1))
            if index in pending and index not in results:
                self._answered(job, line, requests[index], results, again)
        unanswered = sorted(pending - results.keys() - set(again))  # the job ended first
        for index in unanswered:
            self._release(job, index)
            if failure is not None:
                results[index] = Result(index, error=failure.for_index(index))
        self._keep(job, results, requests)
        for index, result in results.items():
            self._give(index, Answered(result))
        for index in again:
            self.again(index, requests[index], count=True)
        if failure is None:
            for index in unanswered:
                self._unanswered(index, requests[index], status)
        self._forget(job)

    def _unanswered(self, index: int, request: Any, status: str) -> None:
        """A line its job ended without answering goes again: in a later job, or online
        once jobs ended (expired, say) `max_retries` times without it."""
        if status == "cancelled":
            self.again(index, request, count=False)
        elif self._attempts.get(index, 0) + 1 > self._options.max_retries:
            self._send_online(index, request)
        else:
            self.again(index, request, count=True)

    def _release(self, job: Job, index: int) -> None:
        """`index` leaves `job` unanswered: its reservation under ``max_cost`` goes."""
        reserved = job.reserved.pop(index, None)
        if reserved is not None and self._services.spending is not None:
            self._services.spending.release(reserved)

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
        prices = self._services.prices
        result = line_result(line, request, attempts, prices, job.record.batch_id, job.waited_s)
        if (spending := self._services.spending) is not None:
            output = result.usage.output_tokens if result.usage is not None else 0
            reserved = job.reserved.pop(index, None)
            if reserved is not None:
                spending.settle(reserved, result.cost_usd, result.error, output)
            elif result.error is None:  # a job of an earlier run: reserved by that run
                spending.charge(result.cost_usd or 0.0)
        error = result.error
        retryable = isinstance(error, APIError) and error.retryable
        if retryable and attempts <= self._options.max_retries:
            again.append(index)
        else:
            results[index] = result

    def _keep(self, job: Job, results: dict[int, Result], requests: dict[int, Any]) -> None:
        """Keep a job's answers in the journal (marking it read) and in the cache."""
        admission = self._services.admission
        answers = []
        for index, result in results.items():
            if (answer := StoredAnswer.of(result, errors_too=True)) is not None:
                answers.append((index, answer.to_json()))
            if (stored := StoredAnswer.of(result)) is not None:
                admission.keep(admission.key_of(requests[index]), stored)
        self._journal.keep_answers(answers, job.record)

    def open_lines(self) -> int:
        """Lines not yet answered: spooled, or in open jobs."""
        return self._groups.lines + sum(len(self._pending(job)) for job in self._jobs)

    def go_online(self) -> None:
        """Cancel the open jobs (their answered lines are used when they end) and hand
        the spooled groups' requests back to run online."""
        self.online = True
        for job in list(self._jobs):
            if job.status != "refused":
                self._provider(job).cancel(str(job.record.batch_id))
                continue
            self._jobs.remove(job)  # never created: all of it goes online
            self._all_online(job, self._pending(job))
        for group in self._groups.take_all():
            self._all_online(group, set(group.indices))

    def _all_online(self, job: Job, indices: set[int]) -> None:
        for index, request in job.requests(indices).items():
            self._release(job, index)
            self._send_online(index, request)

    def _pending(self, job: Job) -> set[int]:
        return self._journal.pending(job.record.key)

    def _provider(self, job: Job) -> BatchProvider:
        return self._services.providers.of(job.record.model)

    def _report(self) -> None:
        """Show the jobs' states in the batch's summary (and so its progress bar)."""
        _show(self._services.summary, self._jobs, self._done)


def _show(summary: BatchSummary, jobs: list[Job], done: int) -> None:
    """The jobs' states, and their lines answered of all, in the batch's summary."""
    states = {"done": done} if done else {}
    for job in jobs:
        states[job.status] = states.get(job.status, 0) + 1
    summary.jobs = states
    summary.job_lines = (sum(job.counts[0] for job in jobs), sum(job.counts[1] for job in jobs))
