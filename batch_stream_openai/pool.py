"""`BatchPool`: settings, lifecycle, and the batch loop that drives the other parts.

Data flow (one batch)::

    caller's iterable                                    +--------- worker 0 -----------+
         |  read lazily, one item per free slot      +-->| reader thread -> asyncio     |
         v                                           |   | loop: one attempt per task,  |
    Dispatcher.fill() -- ledger: index -> worker ----+   | postprocess in a thread      |
         ^    task pipe per worker, fed by a thread -+   | -> outbox thread             |
         |                                           +-->           worker 1 ...        |
         |    result pipe per worker (lists of Outcome)         |
         +-- Supervisor.wait(): multiprocessing.connection.wait(pipes + sentinels)
         |     -> Dispatcher.settle() / reclaim()
         v
    caller: for index, value in stream: ...

- **Caller**: iterates the stream. The loop runs between the items it takes, so a slow
  caller slows dispatch (bounded memory) but never the requests already in flight.
- **Dispatcher** (`dispatcher.py`, no I/O): keeps at most `max_concurrency` requests in
  its ledger (sent, or waiting for their next attempt), so at most that many HTTP
  requests are in flight across all workers; decides retries (every attempt passes the
  rate budget), re-sends what a dead worker owed, and which results are done.
- **Supervisor** (`supervisor.py`): keeps the workers alive (start-up, heartbeats,
  watchdog, respawn pace) and hands the loop only outcomes and exits.
- **Task pipes** (parent -> one worker): written by a feeder thread per worker, so the
  loop never blocks on a worker that stopped reading; they carry at most
  `max_concurrency` tasks in all, and only ready workers get any.
- **Result pipes** (one worker -> parent): at most what that worker owes; a worker
  killed mid-write tears only its own pipe, which the parent then discards.
- **Workers** (`backends/`, `worker.py`, `engine.py`): run everything they are given
  concurrently, one attempt per task. A worker that exits while owing results is
  replaced and what it owed is re-sent; an index whose workers keep dying yields
  `WorkerCrashedError`. Every index is yielded exactly once.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import multiprocessing
import multiprocessing.util
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from typing import Any, TypedDict

import cloudpickle
import psutil
from typing_extensions import Unpack

from .backends import Worker, check_backend, worker_factory
from .config import ClientConfig, RetryPolicy, Secret, WorkerConfig
from .dispatcher import Dispatcher
from .errors import PoolClosedError, WorkerCrashedError
from .limits import Budget
from .progress import ProgressBar
from .protocol import BatchOptions, Cancel, Postprocess
from .request import AnyRequest
from .results import BatchSummary
from .retry import RetrySchedule
from .stream import AsyncBatchStream, BatchStream, ResultPair
from .supervisor import MAIN_GUARD_HINT, Supervisor
from .validation import (
    RequestChecker,
    check_api_key,
    check_base_url,
    check_bool,
    check_callable,
    check_int,
    check_positive,
    check_workers,
    pickled_callable,
)

__all__ = ["BatchPool", "PoolState", "StreamOptions", "default_workers", "in_input_order"]

# Priority of the pool's exit handler among multiprocessing's: it must stop the workers
# before multiprocessing joins its children at exit, whatever the import order was.
_EXIT_PRIORITY = 100


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


class StreamOptions(TypedDict, total=False):
    """Per-batch keyword arguments of `BatchPool.stream` and friends."""

    postprocess: Postprocess | None
    return_results: bool
    progress: bool


class _Interrupted(BaseException):
    """The async caller was cancelled while the loop waited (see `BatchPool.astream`)."""


class BatchPool:
    """A pool of workers that streams many batches of requests.

    Example::

        with BatchPool(workers=2, max_concurrency=64) as pool:
            for index, result in pool.stream(requests):
                ...
            results = pool.run(more_requests)

    Parameters:
        max_concurrency: requests in flight at most, across all workers together.
        workers: worker processes; default `default_workers(max_concurrency)`, never
            more than `max_concurrency`. ``0`` means ``backend="thread"`` with one thread.
        base_url: OpenAI-compatible endpoint; default ``OPENAI_BASE_URL`` or the SDK's.
        api_key: OpenAI API key; default ``OPENAI_API_KEY``. Never logged.
        timeout: seconds one attempt of one request may take, all of it.
        max_retries: retries after the first attempt, for retryable errors only.
        postprocess: a callable applied to each answer's text inside the workers, so
            CPU-heavy parsing runs on every core; lambdas and closures work (cloudpickle).
            What it returns is what the stream yields; what it raises becomes that index's
            `PostprocessError`. `stream()` and `run()` can override it per batch.
        rpm: requests per minute at most, across all workers (None: no limit). Every
            attempt counts, retries included.
        tpm: tokens per minute at most, across all workers, estimated from the prompts and
            corrected by the usage each answer reports (None: no limit).
        adaptive: on 429s halve the concurrency (growing back by one per window of
            successes) and wait what the server asks (30 s at most for the whole pool);
            pause while the ``x-ratelimit-remaining-*`` headers say a budget is spent.
        hang_timeout: seconds a worker that owes results may stay silent (event loop
            blocked) or spend in one postprocess call before it is ended and its
            requests re-sent. None: never.
        initializer: called once in each worker before it serves; cloudpickled. If it
            raises, workers cannot start and the batch fails with its traceback.
        start_method: ``"spawn"`` (default) or ``"forkserver"``; never ``"fork"``.
        backend: ``"process"`` (default: worker processes on this machine), ``"thread"``
            (the same worker code in threads of this process), or ``"ray"`` (one Ray
            async actor per worker, across a cluster; needs the ``[ray]`` extra). The
            dispatcher, ledger, budgets and streaming stay here either way.
        ray_address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None
            starts or joins a local one. Only with ``backend="ray"``.
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
        backend: str = "process",
        ray_address: str | None = None,
    ) -> None:
        check_int("max_concurrency", max_concurrency, minimum=1)
        check_callable("postprocess", postprocess)
        check_int("max_retries", max_retries, minimum=0)
        check_positive("timeout", timeout)
        for name, limit in (("rpm", rpm), ("tpm", tpm), ("hang_timeout", hang_timeout)):
            if limit is not None:
                check_positive(name, limit)
        check_bool("adaptive", adaptive)
        check_api_key(api_key)
        check_base_url(base_url)
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        backend = check_backend(backend)
        if workers == 0:
            if backend == "ray":
                raise ValueError("workers=0 (in-process mode) needs backend='process' or 'thread'")
            backend, workers = "thread", 1
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.workers = check_workers(workers, max_concurrency, backend) or default_workers(
            max_concurrency
        )
        self.postprocess = postprocess
        self.budget = Budget(max_concurrency, rpm, tpm, adaptive)
        self._retries = RetrySchedule(RetryPolicy(max_attempts=max_retries + 1))
        # Ray actors may read OPENAI_API_KEY on their own nodes: no key check here for them.
        self._checker = RequestChecker(needs_key=backend != "ray" and api_key is None)
        config = WorkerConfig(
            client=ClientConfig(
                api_key=Secret(api_key) if api_key is not None else None,
                base_url=base_url,
                timeout=float(timeout),
                max_connections=max_concurrency,
            ),
            initializer=initializer,
        )
        config_blob = pickled_callable(
            "initializer", initializer, lambda: cloudpickle.dumps(config)
        )
        self._supervisor = Supervisor(
            worker_factory(
                backend, config_blob, start_method=start_method, ray_address=ray_address
            ),
            self.workers,
            hang_timeout,
        )
        self._state = PoolState.CREATED
        self._batch_ids = itertools.count(1)
        self._streaming = False
        self._interrupt_requested = False
        # multiprocessing's own exit handler joins every child; this one runs before it.
        self._finalizer = multiprocessing.util.Finalize(
            self, self._supervisor.stop_all, exitpriority=_EXIT_PRIORITY
        )

    def __repr__(self) -> str:
        return (
            f"<BatchPool {self._state.value} backend={self.backend} workers={self.workers} "
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
            for worker in self._supervisor.workers
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
        item by item (an item that is not a request, or an exception from the iterable,
        is raised once every item read before it has been yielded). Closing the stream
        early cancels what is still in flight.

        Parameters:
            postprocess: overrides the pool's for this batch.
            return_results: yield `Result` objects (text, parsed JSON, usage, latency,
                attempts, ids, error) instead of ``str | Exception``.
            progress: show a progress bar on stderr.
        """
        chunks, summary = self.open_stream(requests, "stream", **options)
        return BatchStream(chunks, summary)

    def run(self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]) -> list[Any]:
        """Send every request and return the results in input order (`stream` options)."""
        chunks, summary = self.open_stream(requests, "run", **options)
        return in_input_order(BatchStream(chunks, summary))

    def astream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> AsyncBatchStream:
        """`stream()` for callers inside an event loop: waiting never blocks the loop.

        The waiting happens in a thread, one hop per group of results that arrived
        together. Cancelling the caller (``asyncio.wait_for``, ``task.cancel()``) stops
        the batch within about a second and leaves the pool ready for the next one.
        """
        chunks, summary = self.open_stream(requests, "astream", **options)
        return AsyncBatchStream(self._async_pairs(chunks), summary)

    async def _async_pairs(
        self, chunks: Generator[list[ResultPair], None, None]
    ) -> AsyncGenerator[ResultPair, None]:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[list[ResultPair] | None] | None = None
        try:
            while True:
                pending = loop.run_in_executor(None, next, chunks, None)
                # Shielded: a cancelled caller must not cancel this future while its thread
                # still runs the loop; it is awaited below, once the loop has stopped.
                chunk = await asyncio.shield(pending)
                pending = None
                if chunk is None:
                    return
                for result in chunk:
                    yield result
        finally:
            if pending is not None:  # cancelled while the loop was waiting in its thread
                self._interrupt_requested = True
                self._supervisor.wake()
                await asyncio.wait([pending])
            await loop.run_in_executor(None, chunks.close)

    async def arun(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> list[Any]:
        """`run()` for callers inside an event loop."""
        return in_input_order([result async for result in self.astream(requests, **options)])

    def open_stream(
        self,
        requests: Iterable[AnyRequest],
        operation: str = "stream",
        **options: Unpack[StreamOptions],
    ) -> tuple[Generator[list[ResultPair], None, None], BatchSummary]:
        """Check the arguments now; return the generator of result groups and its summary."""
        self._check_open(operation)
        postprocess = options.get("postprocess")
        check_callable("postprocess", postprocess)
        rich = options.get("return_results", False)
        check_bool("return_results", rich)
        check_bool("progress", options.get("progress", False))
        checked = isinstance(requests, Sequence)
        if checked:
            self._checker.check_all(requests)  # type: ignore[arg-type]
        elif not isinstance(requests, Iterable):
            raise TypeError(
                f"requests must be an iterable of OpenAIRequest, got {type(requests).__name__}"
            )
        postprocess = postprocess or self.postprocess
        batch_id = next(self._batch_ids)
        options_message = BatchOptions(
            batch_id,
            pickled_callable("postprocess", postprocess, lambda: cloudpickle.dumps(postprocess))
            if postprocess is not None
            else None,
            with_body=rich,
        )
        dispatcher: Dispatcher[Worker] = Dispatcher(
            batch_id,
            requests,
            budget=self.budget,
            retries=self._retries,
            rich=rich,
            check_item=None if checked else self._checker,
        )
        total = len(requests) if isinstance(requests, Sequence) else None
        progress = ProgressBar(dispatcher.summary, total) if options.get("progress") else None
        chunks = self._run_batch(dispatcher, options_message, progress)
        return chunks, dispatcher.summary

    def _run_batch(
        self, dispatcher: Dispatcher[Worker], options: BatchOptions, progress: ProgressBar | None
    ) -> Generator[list[ResultPair], None, None]:
        """The batch loop: fill, yield what is done, wait, settle; until all is yielded."""
        self._begin_batch()
        supervisor = self._supervisor
        try:
            dispatcher.peek()
            if not dispatcher.finished:
                self._start_workers()
            supervisor.begin([options])
            while True:
                for worker, tasks in dispatcher.fill(supervisor.ready()).items():
                    worker.send(tasks)
                if progress is not None:
                    progress.update(in_flight=dispatcher.in_flight)
                if done := dispatcher.take_results():
                    yield done
                if dispatcher.finished:
                    break
                heard, exits = supervisor.wait(dispatcher.next_wake(), dispatcher.owes)
                self._check_interrupt()
                for worker, outcomes in heard:
                    for outcome in outcomes:
                        dispatcher.settle(worker, outcome)
                for worker, exit_ in exits:
                    dispatcher.reclaim(worker, exit_)
                if supervisor.broken is not None:
                    self._wind_down(dispatcher, supervisor.broken)
            if dispatcher.input_error is not None:
                raise dispatcher.input_error
        finally:
            dispatcher.summary.finished_at = time.monotonic()
            if progress is not None:
                progress.close()
            self._streaming = False
            supervisor.begin([])
            if dispatcher.in_flight and self._state is PoolState.RUNNING:
                supervisor.broadcast([Cancel(options.batch_id)])

    def _begin_batch(self) -> None:
        self._check_open("stream")
        if self._streaming:
            raise RuntimeError(
                "this BatchPool is already streaming a batch; finish or close that "
                "generator before starting another"
            )
        self._streaming = True
        self._interrupt_requested = False

    def _start_workers(self) -> None:
        if self._state is PoolState.CREATED:
            self._check_can_start()
            self._state = PoolState.RUNNING
            self._supervisor.start()

    def _check_can_start(self) -> None:
        process = multiprocessing.current_process()
        if getattr(process, "_inheriting", False):
            raise RuntimeError(MAIN_GUARD_HINT)
        if self.backend == "process" and process.daemon:
            raise RuntimeError(
                "cannot start worker processes inside a postprocess (or any daemon process: "
                "those may not have children). Return what the next step needs from "
                "postprocess and start that batch in your main process, or use "
                "backend='thread' for a pool inside a worker."
            )

    def _check_interrupt(self) -> None:
        self._check_open("stream")
        if self._interrupt_requested:
            self._interrupt_requested = False
            raise _Interrupted

    def _wind_down(self, dispatcher: Dispatcher[Worker], broken: BaseException) -> None:
        """Workers cannot start: finish with the live ones, fail what none can run."""
        dispatcher.stop_reading(broken)
        if not self._supervisor.workers:
            dispatcher.fail_everything(
                lambda index: WorkerCrashedError(
                    f"the request could not run: {broken.args[0]}", exitcode=None, index=index
                )
            )

    def _check_open(self, operation: str) -> None:
        if self._state is PoolState.CLOSED:
            raise PoolClosedError(f"Cannot call {operation}() on a closed BatchPool")


def in_input_order(results: Iterable[ResultPair]) -> list[Any]:
    """The values of ``(index, value)`` pairs, in index order."""
    by_index = dict(results)
    return [by_index[index] for index in range(len(by_index))]
