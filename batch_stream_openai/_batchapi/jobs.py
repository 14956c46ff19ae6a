"""The Batch API jobs of one route: spooled, submitted, polled and read back.

Lines are written into the open group of their endpoint and model (the API wants one
model per file). A group becomes a job when it holds `batch_size` lines (or nears the
200 MB file limit), or the input ends: uploaded (``POST /v1/files``), started
(``POST /v1/batches``) and polled (after 1 s, then twice as long each time, up to
`poll_interval`). A finished job's answers are kept in the journal and the cache, then
handed back through `give`; a line to try again is spooled into a later job (or, past
the deadline's switch, handed back through `send_online`).
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._spending.admission import Admission
from .._spending.cap import NOTHING_RESERVED, Reservation, Spending
from .._spending.prices import PriceTable
from .._wire.answers import StoredAnswer
from .._wire.sources import Answered
from ..errors import APIError, RequestError
from ..results import BatchSummary, Result
from .client import BatchClient
from .journal import JobRecord, Journal
from .lines import Job, batch_line, line_result
from .options import JobOptions

__all__ = ["MAX_FILE_BYTES", "JobServices", "Jobs"]

# The API takes input files up to 200 MB; a margin for the multipart framing.
MAX_FILE_BYTES = 190 * 2**20
# A job refused for the enqueued-token limit is created again after this many polls,
# doubling each time, waiting at most `_MAX_REFUSED_WAIT_S`.
_MAX_REFUSED_WAIT_S = 600.0
# The first look at a new job; each next one waits twice as long, up to `poll_interval`.
_FIRST_POLL_S = 1.0
_FINAL = frozenset({"completed", "expired", "cancelled", "failed"})

# How answers go back to the route: (index, an `Answered` item or a request to send online).
Give = Callable[[int, Any], None]


@dataclass(frozen=True)
class JobServices:
    """What the jobs talk to: the provider, the prices, the cost cap, the cache, the
    summary (where the jobs' states are shown)."""

    client: BatchClient
    prices: PriceTable
    spending: Spending | None
    admission: Admission
    summary: BatchSummary


class Jobs:
    """The open groups and the submitted jobs of one journal (see the module docstring).

    Parameters:
        journal: where every job and answer is recorded.
        options: sizes, polling, retries, the deadline.
        services: the client, prices, cost cap, cache and summary.
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
        self._client = services.client
        self._give = give
        self._send_online = send_online
        self._groups: dict[tuple[str, str], Job] = {}  # open, by (endpoint, model)
        self._jobs: list[Job] = []  # submitted (or refused, to be created again)
        self._attempts: dict[int, int] = {}  # {index: attempts} of lines sent again
        self._input_ended = True  # lines to send again are submitted at once
        self._poll_wait = min(_FIRST_POLL_S, options.poll_interval)
        self._done = 0
        self.online = False  # past the deadline's switch: everything goes online

    def __repr__(self) -> str:
        return f"<Jobs jobs={len(self._jobs)} open_groups={len(self._groups)}>"

    def __bool__(self) -> bool:
        """Whether a submitted job is still open."""
        return bool(self._jobs)

    def has(self, key: str | None) -> bool:
        """Whether the job recorded as `key` is open (it will answer its lines)."""
        return any(job.record.key == key for job in self._jobs)

    def reading(self, reading: bool) -> None:
        """While the input is read, lines to send again wait for the input's next job."""
        self._input_ended = not reading

    def spool(self, index: int, request: Any, reserved: Reservation | None = None) -> None:
        """Write `request` into its endpoint and model's open group (a full one is
        submitted first)."""
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
        if reserved is not None:
            group.reserved[index] = reserved

    def submit_all(self) -> None:
        """Every open group becomes a job."""
        for group in list(self._groups.values()):
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
        running = [job.record.batch_id for job in self._jobs if job.record.batch_id]
        for batch_id in running:
            self._client.cancel(batch_id)
        return len(running)

    def close_files(self) -> None:
        for group in self._groups.values():
            group.close_files()

    def give_up(self) -> list[int]:
        """Forget every group and job: the indices they still owed, in order."""
        owed = {i for group in self._groups.values() for i in group.indices}
        for job in self._jobs:
            owed.update(self._pending(job))
        self._groups.clear()
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
            self._fail(job, self._client.refusal(error))
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
        assert job.record.batch_id is not None
        try:
            batch = self._client.retrieve(job.record.batch_id)
        except Exception as error:  # deleted at the provider, say
            self._fail(job, self._client.refusal(error))
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
        job.waited_s = max(0.0, time.time() - batch.created_at)  # its answers' latency
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
        later attempt. Its answers are kept in the journal (and the cache) first."""
        pending = self._pending(job)
        requests = job.requests(pending)
        results: dict[int, Result] = {}
        again: list[int] = []
        for line in job.answers():
            index = int(line.get("custom_id", -1))
            if index in pending and index not in results:
                self._answered(job, line, requests[index], results, again)
        for index in sorted(pending - results.keys() - set(again)):  # the job ended first
            error = self._unanswered(index, status, failure)
            if error is not None:
                results[index] = Result(index, error=error.for_index(index))
            else:
                self.again(index, requests[index], count=status != "cancelled")
        self._keep(job, results, requests)
        for index, result in results.items():
            self._give(index, Answered(result))
        for index in again:
            self.again(index, requests[index], count=True)
        self._forget(job)

    def _unanswered(self, index: int, status: str, failure: APIError | None) -> APIError | None:
        """The error of a line its job ended without answering (None: try it again)."""
        tries = self._attempts.get(index, 0) + 1
        if failure is None and status != "cancelled" and tries > self._options.max_retries:
            message = f"batch jobs ended ({status}) before answering it, {tries} times"
            return APIError(message, status_code=0)
        return failure

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
            reserved = job.reserved.pop(index, NOTHING_RESERVED)
            spending.settle(reserved, result.cost_usd, result.error, output)
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
        spooled = sum(group.lines for group in self._groups.values())
        return spooled + sum(len(self._pending(job)) for job in self._jobs)

    def go_online(self) -> None:
        """Cancel the open jobs (their answered lines are used when they end) and hand
        the spooled groups' requests back to run online."""
        self.online = True
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

    def _report(self) -> None:
        """Show the jobs' states in the batch's summary (and so its progress bar)."""
        states = {"done": self._done} if self._done else {}
        for job in self._jobs:
            states[job.status] = states.get(job.status, 0) + 1
        summary = self._services.summary
        summary.jobs = states
        summary.job_lines = (
            sum(job.counts[0] for job in self._jobs),
            sum(job.counts[1] for job in self._jobs),
        )
