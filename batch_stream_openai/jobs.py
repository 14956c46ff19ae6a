"""The Batch API route (``mode="batch"``): the caller's requests as provider batch jobs.

A thread of the parent reads the caller's input and writes each request's line into the
open group of its endpoint and model (the API wants one model per file), on disk. A
group becomes a job when it holds `batch_size` lines (or nears the 200 MB file limit),
or the input ends: uploaded (``POST /v1/files``), started (``POST /v1/batches``), polled
every `poll_interval` seconds. What a finished job answered goes back to the batch loop
as `Answered` items, so answers pass through the workers' `postprocess` and the caller
gets the same pairs and `Result` objects as online. The route is the batch loop's
input: it iterates ``(index, item)`` pairs, and `PENDING` while it waits for a job.

- A line that failed with a retryable status (429, 5xx) goes into a later job, up to
  `max_retries` times; any other failure is that index's `APIError`.
- A job that ended ``expired``, ``cancelled`` or ``failed``: the lines it did answer are
  used, the others go into a later job. One refused for the enqueued-token limit is
  created again after a backoff, its lines not counted as failed.
- Under a `deadline`: once what is still in jobs could not be done online in the time
  left, the open jobs are cancelled, their answered lines used, and the rest (and
  whatever is read from then on) is handed to the loop as requests, to run online.
- Every job is in the `Journal` before and after each call that creates or ends
  something, so a new run with the same journal re-attaches instead of paying again.
"""

from __future__ import annotations

import json
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from .answers import answer_result, reading_of, usage_of
from .backends.process import block_group_signals
from .batchapi import BatchClient
from .bodies import http_call
from .costs import PriceTable
from .errors import APIError, BudgetExceededError, RequestError
from .intake import PENDING, Answered
from .journal import JobRecord, Journal
from .limits import token_estimate
from .protocol import Task
from .results import BatchSummary, Result
from .retry import retryable_status
from .spending import Spending

__all__ = ["MAX_FILE_BYTES", "JobOptions", "JobRoute"]

# The API takes input files up to 200 MB; a margin for the multipart framing.
MAX_FILE_BYTES = 190 * 2**20
# A job refused for the enqueued-token limit is created again after this many polls,
# doubling each time, waiting at most `_MAX_REFUSED_WAIT_S`.
_MAX_REFUSED_WAIT_S = 600.0
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


@dataclass
class _Job:
    """A group of lines on its way: spooled (open), submitted, or waiting to be re-created."""

    record: JobRecord
    folder: Path
    lines: int = 0
    size: int = 0  # bytes of input lines
    indices: list[int] = field(default_factory=list)
    status: str = "spooled"
    retry_at: float = 0.0  # monotonic: when a refused job is created again
    refusals: int = 0
    reserved: dict[int, float] = field(default_factory=dict)  # {index: USD} (max_cost)
    counts: tuple[int, int] = (0, 0)  # the provider's (answered, total) lines
    files: tuple[BinaryIO, BinaryIO] | None = None  # input lines, pickled requests

    def write(self, index: int, line: bytes, payload: bytes) -> None:
        """Add one request: its input line, and its pickle (to read its answer by)."""
        if self.files is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.files = (
                open(self.folder / "input.jsonl", "ab"),  # noqa: SIM115 (closed in close_files)
                open(self.folder / "requests.pickle", "ab"),  # noqa: SIM115
            )
        self.files[0].write(line)
        pickle.dump((index, payload), self.files[1])
        self.lines += 1
        self.size += len(line)
        self.indices.append(index)

    def close_files(self) -> None:
        if self.files is not None:
            for file in self.files:
                file.close()
            self.files = None


class JobRoute:
    """The caller's requests as Batch API jobs, iterated by the loop as ``(index, item)``.

    Parameters:
        requests: the caller's iterable (read in the route's thread).
        client: the Batch API calls.
        journal: where jobs are recorded (and their files kept).
        options: sizes, polling, retries, the deadline.
        prices: prices at the batch tier, for each `Result.cost_usd`.
        check_item: validates each item read (None: checked already).
        spending: the batch's `max_cost` (reserved per line when it is spooled), or None.
        wake: wakes the batch loop when something arrives.
        summary: the batch's summary, where the jobs' states are shown.
    """

    def __init__(
        self,
        requests: Iterable[Any],
        *,
        client: BatchClient,
        journal: Journal,
        options: JobOptions,
        prices: PriceTable,
        check_item: Callable[[int, object], None] | None,
        spending: Spending | None,
        wake: Callable[[], None],
        summary: BatchSummary,
    ) -> None:
        self._requests = requests
        self._summary = summary
        self._client = client
        self._journal = journal
        self._options = options
        self._prices = prices
        self._check_item = check_item
        self._spending = spending
        self._wake = wake
        self._out: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._groups: dict[tuple[str, str], _Job] = {}  # open, by (endpoint, model)
        self._jobs: list[_Job] = []  # submitted (or refused, to be created again)
        self._attempts: dict[int, int] = {}  # {index: attempts} of lines sent again
        self._online = False  # past the deadline's switch: everything goes online
        self._reading = False  # the input is being read
        self._next_poll = 0.0
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

    def delivered(self, indices: Iterable[int]) -> None:
        """The caller has had these indices (a re-run with the journal skips them)."""
        self._journal.delivered(indices)

    def close(self) -> None:
        """Stop the thread (jobs already submitted go on; the journal knows them)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for group in self._groups.values():
            group.close_files()
        if self._ended.is_set():
            self._journal.prune()
        self._journal.close()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        block_group_signals()  # a SIGTERM is the main thread's to handle
        try:
            self._reattach()
            self._read_input()
            for group in list(self._groups.values()):
                self._submit(group)
            while self._jobs and not self._stop.is_set():
                self._poll()
                self._stop.wait(self._options.poll_interval)
        except BaseException as error:  # a bug, or the API refusing us: fail what is open
            self._fail_open(error)
        finally:
            self._ended.set()
            self._wake()

    def _read_input(self) -> None:
        """Spool what the input holds (polling the open jobs as it goes); an error of the
        input (or a bad item) is kept, to be raised once everything read is yielded."""
        self._reading = True
        try:
            for index, request in enumerate(self._requests):
                if self._stop.is_set():
                    return
                if self._journal.known(index):
                    continue  # in a job of an earlier run, or delivered by one
                if self._check_item is not None:
                    self._check_item(index, request)
                self._take(index, request)
                if time.monotonic() >= self._next_poll:
                    self._poll()
        except Exception as error:
            self.error = error
        finally:
            self._reading = False

    def _take(self, index: int, request: Any) -> None:
        """A new request: online (past the switch), refused (`max_cost`), or spooled."""
        if self._online:
            self._give(index, request)
            return
        reserved = 0.0
        if self._spending is not None:
            prompt_tokens, cap = token_estimate(request)
            found = self._spending.reserve(request.model, prompt_tokens, cap)
            if found is None:
                cap_usd = self._spending.max_cost
                error = BudgetExceededError(
                    f"not sent: it could take the batch's spend past max_cost=${cap_usd:g}",
                    index=index,
                )
                self._give(index, Answered(Result(index, error=error)))
                return
            reserved = found
        endpoint, body = http_call(request)
        line = {"custom_id": str(index), "method": "POST", "url": endpoint, "body": body}
        self._spool(index, endpoint, str(body.get("model")), json.dumps(line), request)
        if reserved:
            self._groups[(endpoint, str(body.get("model")))].reserved[index] = reserved

    def _spool(self, index: int, endpoint: str, model: str, line: str, request: Any) -> None:
        data = line.encode() + b"\n"
        group = self._groups.get((endpoint, model))
        if group is not None and (
            group.lines >= self._options.batch_size or group.size + len(data) > MAX_FILE_BYTES
        ):
            self._submit(group)
            group = None
        if group is None:
            key = f"job-{time.time_ns():x}"
            group = _Job(JobRecord(key, endpoint, model, "spooled"), self._journal.job_dir(key))
            self._groups[(endpoint, model)] = group
        group.write(index, data, Task.pickle_payload(request))

    def _submit(self, job: _Job) -> None:
        """Record, upload and start a group's job."""
        self._groups.pop((job.record.endpoint, job.record.model), None)
        job.close_files()
        self._journal.add_job(job.record, job.indices)
        job.indices = []
        self._jobs.append(job)
        self._start(job)

    def _start(self, job: _Job, resumed: bool = False) -> None:
        """Upload the job's lines and create it; a resumed job is looked for first (the
        run before may have died between creating it and writing its id down)."""
        record = job.record
        if record.file_id is None:
            record.file_id = self._client.upload(job.folder / "input.jsonl")
            record.state = "uploaded"
            self._journal.update(record)
        if record.batch_id is None:
            record.batch_id = (resumed and self._client.find(record.key)) or self._client.create(
                record.file_id, record.endpoint, record.key
            )
            record.state = "submitted"
            self._journal.update(record)
        job.status = "validating"

    def _refused(self, job: _Job) -> None:
        """The job cannot be created now (the enqueued-token limit): try again later."""
        job.refusals += 1
        job.status = "refused"
        wait = self._options.poll_interval * 2 ** (job.refusals - 1)
        job.retry_at = time.monotonic() + min(_MAX_REFUSED_WAIT_S, wait)
        job.record.batch_id = None

    def _reattach(self) -> None:
        """Take up the jobs a previous run left open (none without a kept journal)."""
        for record in self._journal.open_jobs():
            job = _Job(record, self._journal.job_dir(record.key))
            self._jobs.append(job)
            if record.state in ("downloaded", "read"):
                self._read_answers(job, "completed")
            elif record.state in ("spooled", "uploaded"):
                self._start(job, resumed=True)
            else:
                job.status = "in_progress"

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
            assert job.record.batch_id is not None
            batch = self._client.retrieve(job.record.batch_id)
            job.status = batch.status
            if (counts := batch.request_counts) is not None:
                job.counts = (counts.completed + counts.failed, counts.total)
            if batch.status not in _FINAL:
                continue
            if batch.status == "failed" and self._client.refused(batch):
                self._refused(job)
                continue
            self._download(job, batch)
            self._read_answers(job, batch.status, failure=self._client.failure(batch))
        self._report()

    def _download(self, job: _Job, batch: Any) -> None:
        """Keep the job's output and error files beside the journal, then delete them (and
        the input file) at the provider."""
        for name, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id:
                (job.folder / f"{name}.jsonl").write_bytes(self._client.content(file_id))
        job.record.state = "downloaded"
        self._journal.update(job.record)
        for file_id in (batch.output_file_id, batch.error_file_id, job.record.file_id):
            if file_id:
                self._client.delete(file_id)

    def _read_answers(self, job: _Job, status: str, failure: APIError | None = None) -> None:
        """Hand each pending index of a finished job back: its answer, an error, or a
        later attempt (another job, or online past the switch)."""
        pending = self._pending(job)
        requests = _requests_of(job.folder, pending)
        answered: set[int] = set()
        for name in ("output", "errors"):
            path = job.folder / f"{name}.jsonl"
            if path.exists():
                for raw in path.read_bytes().splitlines():
                    answered.add(self._answer_line(job, json.loads(raw), pending, requests))
        for index in sorted(pending - answered):  # the job ended before answering these
            error, tries = failure, self._attempts.get(index, 0) + 1
            if error is None and status != "cancelled" and tries > self._options.max_retries:
                message = f"batch jobs ended ({status}) before answering it, {tries} times"
                error = APIError(message, status_code=0)
            if error is not None:
                self._give(index, Answered(Result(index, error=_for_index(error, index))))
            else:
                self._again(index, requests[index], count=status != "cancelled")
        job.record.state = "read"
        self._journal.update(job.record)
        self._jobs.remove(job)
        self._done_jobs += 1
        if not self._reading:  # lines to send again go now (else with the input's)
            for group in list(self._groups.values()):
                self._submit(group)

    def _answer_line(
        self, job: _Job, line: dict[str, Any], pending: set[int], requests: dict[int, Any]
    ) -> int:
        """Give one output or error line's index its result; returns the index (-1 if
        the line is not one this job still owes)."""
        index = int(line.get("custom_id", -1))
        if index not in pending:
            return -1
        request = requests[index]
        attempts = self._attempts.get(index, 0) + 1
        response = line.get("response") or {}
        status = int(response.get("status_code") or 0)
        data = response.get("body") or {}
        reserved = job.reserved.pop(index, 0.0)
        if status == 200:
            endpoint, body = http_call(request)
            usage = usage_of(data)
            cost = self._prices.cost(request.model, usage, tier="batch")
            result = answer_result(
                index,
                reading_of(request, endpoint, body),
                data,
                response.get("request_id"),
                attempts=attempts,
                usage=usage,
                cost_usd=cost,
            )
            if self._spending is not None:
                output = usage.output_tokens if usage is not None else 0
                self._spending.settle(reserved, cost, result.error, output)
            self._give(index, Answered(replace(result, batch_id=job.record.batch_id)))
            return index
        error = _line_error(line, status, index, attempts)
        if self._spending is not None:
            self._spending.settle(reserved, None, error)
        if error.retryable and attempts <= self._options.max_retries:
            self._again(index, request, count=True)
        else:
            self._give(
                index,
                Answered(
                    Result(
                        index,
                        attempts=attempts,
                        status_code=status,
                        body=data or None,
                        request_id=response.get("request_id"),
                        error=error,
                        batch_id=job.record.batch_id,
                    )
                ),
            )
        return index

    def _again(self, index: int, request: Any, *, count: bool) -> None:
        """Send `index` once more: in a later job, or online past the switch."""
        if count:
            self._attempts[index] = self._attempts.get(index, 0) + 1
        if self._online:
            self._give(index, request)
            return
        endpoint, body = http_call(request)
        line = {"custom_id": str(index), "method": "POST", "url": endpoint, "body": body}
        self._spool(index, endpoint, str(body.get("model")), json.dumps(line), request)

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
            for index, request in _requests_of(job.folder, self._pending(job)).items():
                self._give(index, request)
        for group in list(self._groups.values()):
            self._groups.pop((group.record.endpoint, group.record.model))
            group.close_files()
            for index, request in _requests_of(group.folder, set(group.indices)).items():
                self._give(index, request)

    def _pending(self, job: _Job) -> set[int]:
        return self._journal.pending(job.record.key)

    def _give(self, index: int, item: Any) -> None:
        self._out.put((index, item))
        self._wake()

    def _fail_open(self, error: BaseException) -> None:
        """The route cannot go on: every index it still owes yields `error`."""
        owed = [i for group in self._groups.values() for i in group.indices]
        for job in self._jobs:
            owed.extend(self._pending(job))
        self._groups.clear()
        self._jobs.clear()
        for index in sorted(set(owed)):
            failed = RequestError(f"the Batch API route failed: {error!r}", index=index)
            self._give(index, Answered(Result(index, error=failed)))


def _requests_of(folder: Path, indices: set[int]) -> dict[int, Any]:
    """The requests of a job's `indices`, from its pickled spool."""
    found: dict[int, Any] = {}
    with open(folder / "requests.pickle", "rb") as pickles:
        while True:
            try:
                index, payload = pickle.load(pickles)
            except EOFError:
                return found
            if index in indices:
                found[index] = pickle.loads(payload)


def _line_error(line: dict[str, Any], status: int, index: int, attempts: int) -> APIError:
    """The `APIError` of an output or error line that did not answer 200."""
    data = (line.get("response") or {}).get("body") or {}
    detail = data.get("error") if isinstance(data, dict) else None
    detail = detail or line.get("error") or {}
    code = detail.get("code") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return APIError(
        str(message or f"the batch line failed with status {status}"),
        status_code=status or 500,
        code=code,
        body=data or None,
        index=index,
        attempts=attempts,
        retryable=retryable_status(status or 500, code),
    )


def _for_index(error: APIError, index: int) -> APIError:
    """A copy of a job-wide `error` for one of its indices."""
    return APIError(
        error.message,
        status_code=error.status_code,
        code=error.code,
        body=error.body,
        index=index,
        attempts=1,
    )
