"""Parent side: worker lifecycle, dispatch, the in-flight ledger, and the result stream.

Data flow (one batch)::

    caller's iterable                                     +--------- worker 0 ----------+
         |  pulled lazily, one item per free slot     +-->| reader thread -> asyncio    |
         v                                            |   | loop: provider call + retry |
    BatchPool.stream() --- ledger: index -> worker ---+   | -> outbox thread            |
         ^    task pipe per worker (lists of Task) ---+   +-----------------------------+
         |                                            +-->          worker 1 ...
         |    result pipe per worker (lists of Outcome)          |
         +--- multiprocessing.connection.wait(pipes + sentinels) <+
         |
    caller: for index, value in stream: ...

- **Caller**: iterates the generator. Dispatch happens between the items it takes, so a
  slow caller slows dispatch (bounded memory) but never the requests already in flight.
- **Dispatcher** (the generator, in the caller's thread): keeps at most `max_concurrency`
  requests in the ledger (sent, or waiting to be re-sent), so at most that many HTTP
  requests are in flight across all workers. Reads the input lazily, one item per free
  slot: memory does not grow with the batch.
- **Task pipes** (parent -> one worker): carry at most `max_concurrency` tasks in all.
- **Result pipes** (one worker -> parent): at most what that worker owes; a worker
  killed mid-write tears only its own pipe, which the parent then discards.
- **Workers** (`worker.py`): run everything they are given concurrently; the parent's
  ledger is what bounds them. A worker that exits for any reason while owing results is
  replaced, and what it owed is re-sent; an index whose workers keep dying yields
  `WorkerCrashedError`. Every index is yielded exactly once.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import multiprocessing
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict

import cloudpickle
import psutil
from typing_extensions import Unpack

from .config import ClientConfig, RetryPolicy, WorkerConfig
from .errors import PoolClosedError, RequestError, WorkerCrashedError
from .limits import Budget, estimate_tokens
from .processes import Worker, WorkerProcess, WorkerThread
from .progress import ProgressBar
from .protocol import (
    BatchOptions,
    Cancel,
    Heartbeat,
    Outcome,
    Ready,
    StartupFailed,
    Task,
    Throttled,
)
from .request import AnyRequest
from .results import BatchSummary, Result
from .stream import BatchStream, ResultPair
from .validation import check_api_key, check_callable, check_int, check_positive, check_request
from .workerset import MAIN_GUARD_HINT, WorkerSet, stop_workers

__all__ = ["BatchPool", "PoolState", "StreamOptions", "default_workers", "in_input_order"]

Postprocess = Callable[[str], Any]

# Times an index may be re-sent after its worker died while running it; a request that
# kills every worker it lands on must not take the pool down with it.
MAX_CRASHES_PER_REQUEST = 3
# A request whose worker died this many times becomes a suspect: it runs only beside fresh
# requests. One death proves nothing (an OOM kill, an operator); two make it a suspect.
_QUARANTINE_AFTER_CRASHES = 2
# How often the dispatcher wakes up with nothing to read, to notice silent workers.
_POLL_INTERVAL_S = 1.0


class PoolState(enum.Enum):
    """Lifecycle of a `BatchPool`."""

    CREATED = "created"  # no worker started yet; the first batch starts them
    RUNNING = "running"  # workers started; batches can stream one after the other
    CLOSED = "closed"  # close() was called; the pool cannot be used again


def default_workers(max_concurrency: int) -> int:
    """Worker processes for a pool: one per physical core, fewer for small concurrency.

    One process keeps ~25 requests busy cheaply; past that the SDK's CPU cost per
    request wants more cores. Each worker costs ~60 MB, so memory caps the count too.
    """
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    by_memory = max(1, psutil.virtual_memory().available // (256 * 2**20))
    by_concurrency = -(-max_concurrency // 25)
    return int(max(1, min(cores, by_memory, by_concurrency)))


@dataclass
class _Assignment:
    """A ledger entry: a request owed to the caller and where it currently runs."""

    payload: bytes  # the pickled request, kept for re-sends
    tokens: int = 0  # estimated, spent from the token budget when sent
    worker: Worker | None = None  # None while waiting to be (re-)sent
    crashes: int = 0  # workers that died while running it


@dataclass
class _Batch:
    """The state of one `stream()` call."""

    options: BatchOptions
    source: Iterator[tuple[int, Any]]  # enumerate(caller's iterable)
    summary: BatchSummary
    ledger: dict[int, _Assignment] = field(default_factory=dict)  # {index: <_Assignment>}
    owed_by: dict[Worker, set[int]] = field(default_factory=dict)  # {worker: {3, 8, ...}}
    resend: deque[int] = field(default_factory=deque)  # indices whose worker died once
    quarantine: deque[int] = field(default_factory=deque)  # ... twice or more
    suspect_on: dict[Worker, int] = field(default_factory=dict)  # {worker: quarantined index}
    waiting: tuple[int, Any] | None = None  # read from the source, held back by the budget
    wake_at: float = 0.0  # when the budget lets the waiting request go (monotonic)
    exhausted: bool = False

    @property
    def finished(self) -> bool:
        return self.exhausted and self.waiting is None and not self.ledger


class StreamOptions(TypedDict, total=False):
    """Per-batch keyword arguments of `BatchPool.stream` and friends."""

    postprocess: Postprocess | None
    return_results: bool
    progress: bool


class BatchPool:
    """A pool of worker processes that streams many batches of requests.

    Example::

        with BatchPool(workers=2, max_concurrency=64) as pool:
            for index, result in pool.stream(requests):
                ...
            results = pool.run(more_requests)

    Parameters:
        max_concurrency: requests in flight at most, across all workers together.
        workers: worker processes; default `default_workers(max_concurrency)`.
        base_url: OpenAI-compatible endpoint; default ``OPENAI_BASE_URL`` or the SDK's.
        api_key: OpenAI API key; default ``OPENAI_API_KEY``. Never logged.
        timeout: seconds one attempt of one request may take.
        max_retries: retries after the first attempt, for retryable errors only.
        postprocess: a callable applied to each answer's text inside the workers, so
            CPU-heavy parsing runs on every core; lambdas and closures work (cloudpickle).
            What it returns is what the stream yields; what it raises becomes that index's
            `PostprocessError`. `stream()` and `run()` can override it per batch.
        rpm: requests per minute at most, across all workers (None: no limit).
        tpm: tokens per minute at most, across all workers, estimated from the prompts and
            corrected by the usage each answer reports (None: no limit).
        adaptive: on 429s halve the concurrency (growing back by one per window of
            successes) and wait what the server asks; pause while the
            ``x-ratelimit-remaining-*`` headers say a budget is spent. False: fixed.
        hang_timeout: seconds a worker that owes results may stay silent (event loop
            blocked) or spend in one postprocess call before it is terminated, then
            killed, and its requests re-sent. None: never.
        initializer: called once in each worker before it serves; cloudpickled. If it
            raises, workers cannot start and the batch fails with its traceback.
        start_method: ``"spawn"`` (default) or ``"forkserver"``; never ``"fork"``.
        backend: ``"local"`` (worker processes on this machine) or ``"ray"`` (one Ray
            async actor per worker, spread across the cluster's nodes; needs the ``[ray]``
            extra). The dispatcher, ledger, budgets and streaming stay here either way.
        ray_address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None
            starts or joins a local one. Only with ``backend="ray"``.

    ``workers=0`` runs the same worker code in a thread of this process instead: no
    subprocess, same results, one core (for debugging, or where subprocesses are banned).
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 5,
        workers: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 5,
        postprocess: Postprocess | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        adaptive: bool = True,
        hang_timeout: float | None = 30.0,
        initializer: Callable[[], object] | None = None,
        start_method: str = "spawn",
        backend: str = "local",
        ray_address: str | None = None,
    ) -> None:
        check_int("max_concurrency", max_concurrency, minimum=1)
        if workers is not None:
            check_int("workers", workers, minimum=0)
        check_callable("postprocess", postprocess)
        check_callable("initializer", initializer)
        check_int("max_retries", max_retries, minimum=0)
        check_positive("timeout", timeout)
        for name, limit in (("rpm", rpm), ("tpm", tpm), ("hang_timeout", hang_timeout)):
            if limit is not None:
                check_positive(name, limit)
        check_api_key(api_key)
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        if backend == "ray" and workers == 0:
            raise ValueError("workers=0 (in-process mode) needs backend='local'")
        self.max_concurrency = max_concurrency
        self.workers = default_workers(max_concurrency) if workers is None else workers
        self.postprocess = postprocess
        self.budget = Budget(max_concurrency, rpm, tpm, adaptive)
        config = WorkerConfig(
            client=ClientConfig(
                api_key=api_key,
                base_url=base_url,
                timeout=float(timeout),
                max_connections=max_concurrency,
            ),
            retry=RetryPolicy(max_attempts=max_retries + 1),
            initializer=initializer,
        )
        self._config_blob: bytes = cloudpickle.dumps(config)
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Workers fork from a server that has imported the SDK once: a respawn after a
            # crash costs milliseconds instead of the ~0.5 s of imports.
            self._context.set_forkserver_preload(["batch_stream_openai.worker"])
        self._workers = WorkerSet(
            self._worker_factory(backend, ray_address), max(1, self.workers), hang_timeout
        )
        self._state = PoolState.CREATED
        self._batch_ids = itertools.count(1)
        self._streaming = False
        self._finalizer = weakref.finalize(self, stop_workers, self._workers.workers)

    def __repr__(self) -> str:
        return (
            f"<BatchPool {self._state.value} workers={self.workers} "
            f"max_concurrency={self.max_concurrency} pids={self.pids}>"
        )

    def __enter__(self) -> BatchPool:
        self._check_open("__enter__")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def state(self) -> PoolState:
        """Where the pool is in its lifecycle."""
        return self._state

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (a worker known to have exited is left out)."""
        return [
            worker.pid
            for worker in self._workers.workers
            if worker.pid is not None and worker.exitcode is None
        ]

    def close(self) -> None:
        """Stop every worker (within about a second) and release the pool. Idempotent."""
        if self._state is PoolState.CLOSED:
            return
        self._state = PoolState.CLOSED
        self._finalizer()

    def stream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> BatchStream:
        """Send every request; yield ``(index, str | Exception)`` in completion order.

        A failed request yields its Exception and the batch goes on. A list is checked
        whole before any worker starts; any other iterable is read lazily and checked
        item by item. Closing the stream early cancels what is still in flight.

        Parameters:
            postprocess: overrides the pool's for this batch.
            return_results: yield `Result` objects (text, parsed JSON, usage, latency,
                attempts, ids, error) instead of ``str | Exception``.
            progress: show a progress bar on stderr.
        """
        chunks, summary = self.open_stream(requests, **options)
        return BatchStream(chunks, summary)

    def run(self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]) -> list[Any]:
        """Send every request and return the results in input order (`stream` options)."""
        return in_input_order(self.stream(requests, **options))

    async def astream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> AsyncIterator[ResultPair]:
        """`stream()` for callers inside an event loop: waiting never blocks the loop.

        The waiting happens in a thread, one hop per group of results that arrived together.
        """
        loop = asyncio.get_running_loop()
        chunks, _summary = self.open_stream(requests, **options)
        try:
            while (chunk := await loop.run_in_executor(None, next, chunks, None)) is not None:
                for result in chunk:
                    yield result
        finally:
            await loop.run_in_executor(None, chunks.close)

    async def arun(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> list[Any]:
        """`run()` for callers inside an event loop."""
        stream = self.astream(requests, **options)
        return in_input_order([result async for result in stream])

    def open_stream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> tuple[Generator[list[ResultPair], None, None], BatchSummary]:
        """Check the arguments now; return the generator of result groups and its summary."""
        self._check_open("stream")
        postprocess = options.get("postprocess")
        check_callable("postprocess", postprocess)
        if isinstance(requests, Sequence):
            for index, request in enumerate(requests):
                check_request(index, request)
        elif not isinstance(requests, Iterable):
            raise TypeError(
                f"requests must be an iterable of OpenAIRequest, got {type(requests).__name__}"
            )
        postprocess = postprocess or self.postprocess
        batch = _Batch(
            BatchOptions(
                next(self._batch_ids),
                cloudpickle.dumps(postprocess) if postprocess is not None else None,
                rich=bool(options.get("return_results")),
            ),
            enumerate(requests),
            BatchSummary(),
        )
        total = len(requests) if isinstance(requests, Sequence) else None
        progress = ProgressBar(batch.summary, total) if options.get("progress") else None
        return self._stream_chunks(batch, progress), batch.summary

    def _stream_chunks(
        self, batch: _Batch, progress: ProgressBar | None
    ) -> Generator[list[ResultPair], None, None]:
        self._check_open("stream")
        if self._streaming:
            raise RuntimeError(
                "this BatchPool is already streaming a batch; finish or close that "
                "generator before starting another"
            )
        self._streaming = True
        try:
            self._start_workers()
            self._workers.greet([batch.options])
            done = self._dispatch(batch)
            while True:
                if progress is not None:
                    progress.update(in_flight=len(batch.ledger))
                if done:
                    yield done
                if batch.finished:
                    break
                done = self._collect(batch)
                done += self._dispatch(batch)
        finally:
            batch.summary.finished_at = time.monotonic()
            if progress is not None:
                progress.close()
            self._streaming = False
            self._workers.greet([])
            if batch.ledger and self._state is PoolState.RUNNING:
                self._workers.broadcast([Cancel(batch.options.batch)])

    def _check_open(self, operation: str) -> None:
        if self._state is PoolState.CLOSED:
            raise PoolClosedError(f"Cannot call {operation}() on a closed BatchPool")

    def _start_workers(self) -> None:
        if self._state is PoolState.CREATED:
            if getattr(multiprocessing.current_process(), "_inheriting", False):
                raise RuntimeError(MAIN_GUARD_HINT)
            self._state = PoolState.RUNNING
            self._workers.start()

    def _worker_factory(self, backend: str, ray_address: str | None) -> Callable[[int], Worker]:
        """How this pool starts a worker, given its slot number."""
        if backend == "ray":
            from .ray_backend import RayWorker  # Ray is imported only when chosen

            return partial(RayWorker, self._config_blob, address=ray_address)
        kind = WorkerProcess if self.workers else WorkerThread
        return partial(kind, self._context, self._config_blob)

    def _dispatch(self, batch: _Batch) -> list[ResultPair]:
        """Send re-sends first, then new requests while the ledger and the budget allow.

        Returns the results of requests that failed before they could be sent.
        """
        unsendable: list[ResultPair] = []
        if not self._workers.any_ready:
            return unsendable  # paced requests must not pile up in pipes while workers start
        outgoing: dict[Worker, list[Any]] = {}

        def assign(index: int, among: list[Worker]) -> Worker:
            process = min(among, key=lambda p: len(batch.owed_by.get(p, ())))
            batch.ledger[index].worker = process
            batch.owed_by.setdefault(process, set()).add(index)
            task = Task(batch.options.batch, index, batch.ledger[index].payload)
            outgoing.setdefault(process, []).append(task)
            return process

        self._release_quarantine(batch, assign)
        workers = self._workers.workers
        without_suspect = [p for p in workers if p not in batch.suspect_on]
        while batch.resend and without_suspect:
            assign(batch.resend.popleft(), without_suspect)
        budget = self.budget
        while workers and len(batch.ledger) < budget.concurrency():
            if batch.waiting is None:
                try:
                    batch.waiting = next(batch.source)
                except StopIteration:
                    batch.exhausted = True
                    break
                check_request(*batch.waiting)
            index, request = batch.waiting
            tokens = estimate_tokens(request) if budget.counts_tokens else 0
            if (wait := budget.delay(tokens)) > 0:
                batch.wake_at = time.monotonic() + wait
                break
            batch.waiting = None
            try:
                payload = Task.pickle_request(request)
            except RequestError as error:
                error.index = index
                batch.summary.add(error, 0, None)
                unsendable.append(
                    (index, Result(index, error=error) if batch.options.rich else error)
                )
                continue
            budget.spend(tokens)
            batch.ledger[index] = _Assignment(payload, tokens)
            assign(index, workers)
        for process, tasks in outgoing.items():
            process.send(tasks)  # a dead worker is noticed by _collect, which re-sends
        return unsendable

    def _release_quarantine(
        self, batch: _Batch, assign: Callable[[int, list[Worker]], Worker]
    ) -> None:
        """Send each quarantined request to a worker with no other request that ever crashed.

        There it shares its worker only with fresh requests, so a poison (which is a
        suspect itself after two deaths) can kill an innocent suspect at most while still
        fresh: a poison cannot take innocents with it again and again, and random worker
        deaths cost no throughput (nothing waits for a worker to drain).
        """
        while batch.quarantine:
            clean = [
                p
                for p in self._workers.workers
                if p.ready
                and p not in batch.suspect_on
                and not any(batch.ledger[i].crashes for i in batch.owed_by.get(p, ()))
            ]
            if not clean:
                return
            index = batch.quarantine.popleft()
            batch.suspect_on[assign(index, clean)] = index

    def _collect(self, batch: _Batch) -> list[ResultPair]:
        """Wait for outcomes or deaths; return the results now owed to the caller."""
        self._check_open("stream")
        timeout = _POLL_INTERVAL_S
        if batch.waiting is not None:
            timeout = min(timeout, batch.wake_at - time.monotonic())
        done: list[ResultPair] = []
        heard, exited = self._workers.listen(timeout)
        for worker, messages in heard:
            self._handle(worker, messages, batch, done)
        for worker in exited:
            self._replace(worker, batch, done)
        self._workers.watch(lambda worker: bool(batch.owed_by.get(worker)))
        self._workers.pay_owed_spawns()
        return done

    def _handle(
        self, worker: Worker, messages: list[Any], batch: _Batch, done: list[ResultPair]
    ) -> None:
        for message in messages:
            if isinstance(message, Outcome):
                entry = batch.ledger.get(message.index)
                # Outcomes of a cancelled batch, or of a task since re-sent elsewhere, are owed
                # to nobody: yielding them would break exactly-once.
                stale = message.batch != batch.options.batch
                if stale or entry is None or entry.worker is not worker:
                    continue
                del batch.ledger[message.index]
                batch.owed_by[worker].discard(message.index)
                if batch.suspect_on.get(worker) == message.index:
                    del batch.suspect_on[worker]
                value = message.value()
                self._account(batch, entry, message, value)
                done.append((message.index, value))
            elif isinstance(message, Heartbeat):
                worker.postprocess_busy_s = message.postprocess_busy_s
            elif isinstance(message, Throttled):
                batch.summary.rate_limited += 1
                self.budget.on_throttled(message.retry_after_s)
            elif isinstance(message, Ready):
                self._workers.on_ready(worker)
            elif isinstance(message, StartupFailed):
                self._workers.on_startup_failed(message.error)

    def _account(self, batch: _Batch, entry: _Assignment, outcome: Outcome, value: Any) -> None:
        error = value.error if isinstance(value, Result) else value
        error = error if isinstance(error, BaseException) else None
        batch.summary.add(error, outcome.attempts, outcome.usage)
        if error is None:
            used = outcome.usage.total_tokens if outcome.usage is not None else None
            pause = outcome.rate_limits.pause_s() if outcome.rate_limits is not None else 0.0
            self.budget.on_answer(entry.tokens, used, pause)

    def _replace(self, worker: Worker, batch: _Batch, done: list[ResultPair]) -> None:
        """A worker exited: keep what it finished, re-send what it owed, start another."""
        self._handle(worker, worker.drain(), batch, done)
        exitcode = self._workers.remove(worker)
        batch.suspect_on.pop(worker, None)
        for index in sorted(batch.owed_by.pop(worker, ())):
            entry = batch.ledger[index]
            entry.worker = None
            if worker.ready:
                entry.crashes += 1
            if entry.crashes > MAX_CRASHES_PER_REQUEST:
                del batch.ledger[index]
                error = WorkerCrashedError.describe(index, exitcode, entry.crashes, worker.hung)
                batch.summary.add(error, entry.crashes, None)
                rich = Result(index, attempts=entry.crashes, error=error)
                done.append((index, rich if batch.options.rich else error))
            elif entry.crashes >= _QUARANTINE_AFTER_CRASHES:
                batch.quarantine.append(index)
            else:
                batch.resend.append(index)
        self._workers.replace(worker, exitcode)


def in_input_order(results: Iterable[ResultPair]) -> list[Any]:
    """The values of ``(index, value)`` pairs, in index order."""
    by_index = dict(results)
    return [by_index[index] for index in range(len(by_index))]
