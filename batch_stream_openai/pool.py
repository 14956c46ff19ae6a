"""`BatchPool`: settings, lifecycle, and the batch loop that drives the other parts.

Data flow (one batch)::

    caller's iterable                                    +--------- worker 0 -----------+
         |  read lazily, one item per free slot      +-->| reader thread -> asyncio     |
         v                                           |   | loop: one attempt per task,  |
    Dispatcher.fill() -- ledger: index -> worker ----+   | postprocess in a thread      |
         ^    task pipe per worker, never blocking -+   | -> outbox thread             |
         |                                           +-->           worker 1 ...        |
         |    result pipe per worker (lists of Outcome)         |
         +-- Supervisor.wait(): one selector over result pipes, sentinels, full task pipes
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
- **Task pipes** (parent -> one worker): written without blocking; what a full pipe
  does not take waits in that worker's buffer until it has room, so the loop never
  blocks on a worker that stopped reading. They carry at most `max_concurrency` tasks in
  all, and only ready workers get any.
- **Result pipes** (one worker -> parent): at most what that worker owes; a worker
  killed mid-write tears only its own pipe, which the parent then discards.
- **Workers** (`backends/`, `worker.py`, `engine.py`): run everything they are given
  concurrently, one attempt per task. A worker that exits while owing results is
  replaced and what it owed is re-sent; an index whose workers keep dying yields
  `WorkerCrashedError`. Every index is yielded exactly once.
"""

from __future__ import annotations

import enum
import itertools
import multiprocessing
import multiprocessing.util
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence, Sized
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

import cloudpickle
from typing_extensions import Unpack

from ._backends import Worker, worker_factory
from ._core.checks import (
    RequestChecker,
    check_bool,
    check_callable,
    check_hedge,
    check_positive,
    pickled_callable,
)
from ._core.dispatcher import Dispatcher
from ._core.loop import BatchLoop
from ._core.modes import BatchMode, delivering
from ._core.options import options_doc, refuse_idle
from ._core.progress import ProgressBar
from ._core.settings import PoolSettings, default_workers
from ._core.supervisor import MAIN_GUARD_HINT, Supervisor
from ._policy.fleet import Fleet
from ._policy.hedging import Hedging
from ._policy.limits import Budget
from ._policy.retry import RetrySchedule
from ._spending.admission import Admission
from ._spending.cache import ResponseCache
from ._spending.cap import Spending
from ._spending.prices import PriceTable
from ._wire.protocol import BatchOptions, Postprocess
from .errors import PoolClosedError
from .request import AnyRequest
from .results import BatchSummary, ResultPair
from .stream import AsyncBatchStream, BatchStream, async_pairs, in_input_order

__all__ = [
    "BatchPool",
    "OpenedStream",
    "PerBatchOptions",
    "PoolState",
    "StreamOptions",
    "default_workers",
]

# Priority of the pool's exit handler among multiprocessing's: it must stop the workers
# before multiprocessing joins its children at exit, whatever the import order was.
_EXIT_PRIORITY = 100


class PoolState(enum.Enum):
    """Lifecycle of a `BatchPool`."""

    CREATED = "created"  # no worker started yet; the first batch starts them
    RUNNING = "running"  # workers started; batches can stream one after the other
    CLOSED = "closed"  # close() was called; the pool cannot be used again


class OpenedStream(NamedTuple):
    """A batch, checked and ready to run: what `BatchStream` is built of."""

    chunks: Generator[list[ResultPair], None, None]  # groups of results, as they come
    summary: BatchSummary
    taken: Callable[[int], None] | None  # told each index the caller takes (batch mode)


class PerBatchOptions(TypedDict, total=False):
    """Per-batch keyword arguments but those that shape what is yielded (see `options.py`)."""

    progress: bool
    max_cost: float | None
    mode: str
    deadline: float | datetime | None
    journal: str | Path | None
    batch_size: int | None
    poll_interval: float | None
    online_reserve: float | None
    flex_fallback: bool | None
    hedge: bool | float


class StreamOptions(PerBatchOptions, total=False):
    """Per-batch keyword arguments of `BatchPool.stream` and friends (see `options.py`)."""

    postprocess: Postprocess | None
    return_results: bool


class BatchPool:
    """A pool of workers that streams many batches of requests.

    Example::

        with BatchPool(workers=2, max_concurrency=64) as pool:
            for index, result in pool.stream(requests):
                ...
            results = pool.run(more_requests)

    It takes the options marked as the pool's below; `stream`, `run`, `astream` and
    `arun` take the others (each batch its own; a batch's `postprocess` wins).

    Attributes:
        fleet: the endpoints (`fleet.Fleet`): each one's requests in flight, whether it
            is set aside, and with ``"auto"`` its limit (``fleet.endpoints[0].limit``).
    """

    def __init__(
        self,
        *,
        max_concurrency: int | Literal["auto"] = 5,
        max_concurrency_cap: int = 1024,
        workers: int | None = None,
        base_url: str | Sequence[str] | None = None,
        endpoint_concurrency: int | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 5,
        postprocess: Postprocess | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        adaptive: bool = True,
        hang_timeout: float | None = 30.0,
        initializer: Callable[[], object] | None = None,
        start_method: str | None = None,
        backend: str = "process",
        ray_address: str | None = None,
        cache: str | Path | bool | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.settings = settings = PoolSettings.check(
            max_concurrency=max_concurrency,
            max_concurrency_cap=max_concurrency_cap,
            workers=workers,
            base_url=base_url,
            endpoint_concurrency=endpoint_concurrency,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            postprocess=postprocess,
            rpm=rpm,
            tpm=tpm,
            adaptive=adaptive,
            hang_timeout=hang_timeout,
            initializer=initializer,
            start_method=start_method,
            backend=backend,
            ray_address=ray_address,
            cache=cache,
            prices=prices,
        )
        self.backend, self.workers = settings.backend, settings.workers
        self.max_concurrency, self.postprocess = max_concurrency, postprocess
        self.budget = Budget(settings.max_concurrency, rpm, tpm, adaptive)
        self.fleet = Fleet(
            settings.endpoint_urls,
            endpoint_concurrency,
            settings.max_concurrency if settings.auto_concurrency else None,
        )
        self._retries = RetrySchedule(settings.retry_policy())
        self._prices = PriceTable(settings.prices)
        # Ray actors may read OPENAI_API_KEY on their own nodes: no key check here for them.
        self._checker = RequestChecker(needs_key=self.backend != "ray" and api_key is None)
        self._cache = ResponseCache(settings.cache) if settings.cache is not None else None
        start_worker = worker_factory(
            self.backend,
            settings.worker_config_blob(),
            start_method=settings.start_method,
            ray_address=ray_address,
        )
        self._supervisor = Supervisor(start_worker, self.workers, hang_timeout)
        self._state = PoolState.CREATED
        self._batch_ids = itertools.count(1)
        self._loop: BatchLoop | None = None  # the batch streaming now
        # Requests per second this pool did online (its last batch): what a deadline in
        # batch mode expects of the online rest. A guess until a batch has run.
        self._online_rate = settings.max_concurrency / 10.0
        # multiprocessing's own exit handler joins every child; this one runs before it.
        self._finalizer = multiprocessing.util.Finalize(
            self, _shut_down, args=(self._supervisor, self._cache), exitpriority=_EXIT_PRIORITY
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
    ) -> BatchStream[Any]:
        """Send every request; yield ``(index, str | Exception)`` in completion order.

        A failed request yields its Exception and the batch goes on. A list is checked
        whole before any worker starts; any other iterable is read lazily and checked
        item by item (an item that is not a request, or an exception from the iterable,
        is raised once every item read before it has been yielded). Closing the stream
        early cancels what is still in flight.

        Its options (each batch its own) are listed in the class docstring.
        """
        return BatchStream(*self.open_stream(requests, "stream", **options))

    def run(self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]) -> list[Any]:
        """Send every request and return the results in input order (`stream` options)."""
        return in_input_order(BatchStream(*self.open_stream(requests, "run", **options)))

    def astream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> AsyncBatchStream[Any]:
        """`stream()` for callers inside an event loop: waiting never blocks the loop.

        The waiting happens in a thread, one hop per group of results that arrived
        together. Cancelling the caller (``asyncio.wait_for``, ``task.cancel()``) stops
        the batch within about a second and leaves the pool ready for the next one.
        """
        return self._astream(requests, "astream", options)

    def _astream(
        self, requests: Iterable[AnyRequest], operation: str, options: StreamOptions
    ) -> AsyncBatchStream[Any]:
        chunks, summary, taken = self.open_stream(requests, operation, **options)
        return AsyncBatchStream(async_pairs(chunks, self._interrupt), summary, taken)

    def _interrupt(self) -> None:
        """Stop the batch streaming now at its next turn (from any thread)."""
        if self._loop is not None:
            self._loop.interrupt()

    async def arun(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> list[Any]:
        """`run()` for callers inside an event loop."""
        stream = self._astream(requests, "arun", options)
        return in_input_order([result async for result in stream])

    def open_stream(
        self,
        requests: Iterable[AnyRequest],
        operation: str = "stream",
        **options: Unpack[StreamOptions],
    ) -> OpenedStream:
        """Check the arguments now; return the generator of result groups, its summary,
        and what to tell of each index the caller takes (batch mode's journal)."""
        self._check_open(operation)
        refuse_idle(options)
        postprocess = options.get("postprocess") or self.postprocess
        check_callable("postprocess", postprocess)
        rich = options.get("return_results", False)
        check_bool("return_results", rich)
        check_bool("progress", options.get("progress", False))
        hedge = check_hedge(options.get("hedge", False))
        spending = self._spending(options.get("max_cost"))
        checker = self._checker if spending is None else self._checker.with_prices(self._prices)
        check_item = self._check_requests(requests, checker)
        route = BatchMode.check(options, self.settings.max_retries, self._online_rate)
        summary = BatchSummary()
        admission = Admission(
            self._cache,
            self.settings.routed_base_url,
            spending,
            replays=postprocess is not None,
            prices=self._prices,
            tier="flex" if route.mode == "flex" else "default",
        )
        jobs = None
        if route.mode == "batch":
            jobs = route.route(
                requests,
                base_url=self.settings.routed_base_url,
                api_key=self.settings.secret,
                prices=self._prices,
                check_item=check_item,
                spending=spending,
                admission=admission,
                replay=operation in ("run", "arun"),
                wake=self._supervisor.wake,
                summary=summary,
            )
        batch_id = next(self._batch_ids)
        dispatcher: Dispatcher[Worker] = Dispatcher(
            batch_id,
            requests if jobs is None else jobs,
            budget=self.budget,
            retries=self._retries,
            admission=admission,
            rich=rich,
            check_item=check_item if jobs is None else None,
            indexed=jobs is not None,
            summary=summary,
            deadline=route.deadline if jobs is None else None,
            flex_fallback=route.mode == "flex" and route.flex_fallback,
            fleet=self.fleet,
            hedging=Hedging(hedge) if hedge is not None else None,
            on_finish=jobs.finished if jobs is not None else None,
        )
        total = len(requests) if isinstance(requests, Sized) else None
        progress = ProgressBar(summary, total) if options.get("progress") else None
        message = self._options_message(batch_id, postprocess, rich, route)
        loop = BatchLoop(dispatcher, self._supervisor, message, admission, progress)
        if jobs is not None:
            chunks = delivering(self._run(loop, online=False), jobs)
            return OpenedStream(chunks, summary, jobs.taken)
        return OpenedStream(self._run(loop), summary, None)

    @staticmethod
    def _check_requests(
        requests: object, checker: RequestChecker
    ) -> Callable[[int, object], None] | None:
        """Check a list whole now; the check for each item of any other iterable."""
        if isinstance(requests, Sequence):
            checker.check_all(requests)
            return None
        if not isinstance(requests, Iterable):
            raise TypeError(
                f"requests must be an iterable of OpenAIRequest, got {type(requests).__name__}"
            )
        return checker

    def _options_message(
        self, batch_id: int, postprocess: Postprocess | None, rich: bool, route: BatchMode
    ) -> BatchOptions:
        """What the workers are told of the batch before its first task."""
        blob = None
        if postprocess is not None:
            blob = pickled_callable(
                "postprocess", postprocess, lambda: cloudpickle.dumps(postprocess)
            )
        return BatchOptions(
            batch_id,
            blob,
            # The cache and the batch journal keep answers whole (`StoredAnswer`).
            with_body=rich or self._cache is not None or route.mode == "batch",
            service_tier=route.service_tier,
            timeout=route.attempt_timeout(self.settings.timeout),
        )

    def _spending(self, max_cost: object) -> Spending | None:
        if max_cost is None:
            return None
        check_positive("max_cost", max_cost)
        assert isinstance(max_cost, (int, float))
        return Spending(float(max_cost), self._prices)

    def _run(self, loop: BatchLoop, online: bool = True) -> Generator[list[ResultPair], None, None]:
        """The batch, on this pool: one at a time, workers started on the first."""
        self._check_open("stream")
        if self._loop is not None:
            raise RuntimeError(
                "this BatchPool is already streaming a batch; finish or close that "
                "generator before starting another"
            )
        self._loop = loop
        self.fleet.begin()  # what an earlier batch left in flight was cancelled
        try:
            loop.dispatcher.peek()
            if not loop.dispatcher.finished:
                self._start_workers()
            yield from loop.run()
        finally:
            self._loop = None
            if online and loop.dispatcher.summary.requests_per_s > 0:
                self._online_rate = loop.dispatcher.summary.requests_per_s

    def _start_workers(self) -> None:
        if self._state is PoolState.CREATED:
            self._check_can_start()
            self._state = PoolState.RUNNING
            self._supervisor.start()
            self._prices.warm()  # while the workers start

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

    def _check_open(self, operation: str) -> None:
        if self._state is PoolState.CLOSED:
            raise PoolClosedError(f"Cannot call {operation}() on a closed BatchPool")


BatchPool.__doc__ = f"{BatchPool.__doc__}\n{options_doc(indent=4)}"


def _shut_down(supervisor: Supervisor, cache: ResponseCache | None) -> None:
    """Stop the workers, then commit the cache: at close, garbage collection or exit."""
    supervisor.stop_all()
    if cache is not None:
        cache.close()
