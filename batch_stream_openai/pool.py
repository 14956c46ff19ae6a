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

Rooms (subpackages), each importing only the rooms below it::

    cli.py, files/        the command line; Batch API JSONL files (run_batch_file)
    api.py, __init__.py   stream_batch, run_batch and their async twins
    pool.py               BatchPool: settings, workers, one batch at a time
    _core/                one batch in the parent: options, the loop, the dispatcher
                          (no I/O) with its ledger, sender and delivery, the supervisor
    _batchapi/            mode="batch": jobs at the provider, the journal
    _observe/             OpenTelemetry metrics and spans, recorded in the parent
    _backends/            starting workers: processes, threads, Ray actors
    _worker/              the worker side: task server, the HTTP call
    _spending/            prices, the cost cap, the response cache, admission
    _policy/              decisions with no I/O: limits, retries, endpoints, hedging
    _wire/                what both sides share: messages, config, bodies, answers
    stream, results, request, errors    the public types
    _pickling, _images, _signals        small helpers

- **Caller**: iterates the stream. The loop runs between the items it takes, so a slow
  caller slows dispatch (bounded memory) but never the requests already in flight.
- **Dispatcher** (`_core/dispatcher.py`, no I/O): keeps at most `max_concurrency`
  requests in its ledger (sent, or waiting for their next attempt), so at most that many
  HTTP requests are in flight across all workers; decides retries (every attempt passes
  the rate budget), re-sends what a dead worker owed, and which results are done.
- **Supervisor** (`_core/supervisor.py`): keeps the workers alive (start-up, heartbeats,
  watchdog, respawn pace) and hands the loop only outcomes and exits.
- **Task pipes** (parent -> one worker): written without blocking; what a full pipe
  does not take waits in that worker's buffer until it has room, so the loop never
  blocks on a worker that stopped reading. They carry at most `max_concurrency` tasks in
  all, and only ready workers get any.
- **Result pipes** (one worker -> parent): at most what that worker owes; a worker
  killed mid-write tears only its own pipe, which the parent then discards.
- **Workers** (`_backends/`, `_worker/`): run everything they are given concurrently,
  one attempt per task. A worker that exits while owing results is replaced and what it
  owed is re-sent; an index whose workers keep dying yields `WorkerCrashedError`. Every
  index is yielded exactly once.
"""

from __future__ import annotations

import enum
import functools
import itertools
import multiprocessing
import multiprocessing.util
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

from typing_extensions import Unpack

from ._backends import worker_factory
from ._core.batch import Batch, PoolParts, build_batch
from ._core.checks import (
    RequestChecker,
)
from ._core.loop import BatchLoop, PoolHooks
from ._core.options import options_doc
from ._core.settings import PoolSettings, default_workers
from ._core.supervisor import MAIN_GUARD_HINT, Supervisor
from ._observe.prometheus import serve_metrics
from ._policy.fleet import Fleet
from ._policy.limits import Budget
from ._policy.retry import RetrySchedule
from ._spending.cache import ResponseCache
from ._spending.prices import PriceTable, warm_up
from ._wire.protocol import Postprocess
from .errors import PoolClosedError
from .request import AnyRequest
from .results import ResultPair
from .stream import AsyncBatchStream, BatchStream, async_pairs, in_input_order

__all__ = [
    "BatchPool",
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
    group_prefixes: bool
    prompt_cache_key: str | None


class StreamOptions(PerBatchOptions, total=False):
    """Per-batch keyword arguments of `BatchPool.stream` and friends (see `options.py`)."""

    postprocess: Postprocess | None
    return_results: bool


class BatchPool:
    """A pool of workers that streams many batches of requests.

    Example:

    >>> with BatchPool(workers=2, max_concurrency=64) as pool:
    ...     first = sorted(index for index, result in pool.stream(requests))
    ...     again = pool.run(requests)  # the same workers, in input order
    >>> first, len(again)
    ([0, 1, 2], 3)

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
        routing: str = "cache_aware",
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
        metrics_port: int | None = None,
    ) -> None:
        # Every keyword argument above, as given (the option list is declared once, in
        # `_core/options.py`; a test checks this signature against it).
        given = {name: value for name, value in locals().items() if name != "self"}
        self.settings = settings = PoolSettings.check(**given)
        self.backend, self.workers = settings.backend, settings.workers
        self.max_concurrency, self.postprocess = max_concurrency, postprocess
        self.budget = Budget(settings.max_concurrency, rpm, tpm, adaptive)
        self.fleet = Fleet(
            settings.endpoint_urls,
            endpoint_concurrency,
            settings.max_concurrency if settings.auto_concurrency else None,
            routing=settings.routing,
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
        self._parts = PoolParts(
            settings,
            self.budget,
            self.fleet,
            self._retries,
            self._prices,
            self._checker,
            self._cache,
            self._supervisor,
            postprocess,
            serve_metrics(metrics_port) if metrics_port is not None else None,
        )
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
        early cancels what is still in flight. Its options (each batch its own) are
        listed in the class docstring.
        """
        batch = self._batch(requests, "stream", options)
        stream: BatchStream[Any] = BatchStream(self._run(batch), batch.summary, _taken(batch))
        if batch.route is not None:
            stream.add_done_callback(batch.route.close)
        return stream

    def run(self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]) -> list[Any]:
        """Send every request and return the results in input order (`stream` options).

        With ``mode="batch"`` and a journal, what earlier runs yielded is given back
        too (``Result.replayed``), not only the rest."""
        batch = self._batch(requests, "run", options)
        stream: BatchStream[Any] = BatchStream(self._run(batch), batch.summary, _taken(batch))
        if batch.route is not None:
            stream.add_done_callback(batch.route.close)
        return in_input_order(stream)

    def astream(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> AsyncBatchStream[Any]:
        """`stream()` for callers inside an event loop: waiting never blocks the loop.

        The waiting happens in a thread, one hop per group of results that arrived
        together. Cancelling the caller (``asyncio.wait_for``, ``task.cancel()``) stops
        the batch within about a second and leaves the pool ready for the next one.
        """
        return self._async(self._batch(requests, "astream", options))

    async def arun(
        self, requests: Iterable[AnyRequest], **options: Unpack[StreamOptions]
    ) -> list[Any]:
        """`run()` for callers inside an event loop."""
        stream = self._async(self._batch(requests, "arun", options))
        return in_input_order([result async for result in stream])

    def _batch(self, requests: Iterable[AnyRequest], operation: str, options: Any) -> Batch:
        """The batch, its arguments checked now (nothing starts before it is iterated)."""
        self._check_open(operation)
        return build_batch(
            self._parts,
            next(self._batch_ids),
            requests,
            options,
            replay=operation in ("run", "arun"),
            online_rate=self._online_rate,
        )

    def _run(self, batch: Batch) -> Generator[list[ResultPair], None, None]:
        """The batch loop, with what the pool does around it."""
        ended = functools.partial(self._ended, online=batch.route is None)
        return batch.loop.run(PoolHooks(self._started, self._start_workers, ended))

    def _async(self, batch: Batch) -> AsyncBatchStream[Any]:
        pairs = async_pairs(self._run(batch), self._interrupt)
        stream: AsyncBatchStream[Any] = AsyncBatchStream(pairs, batch.summary, _taken(batch))
        if batch.route is not None:
            stream.add_done_callback(batch.route.close)
        return stream

    def _interrupt(self) -> None:
        """Stop the batch streaming now at its next turn (from any thread)."""
        if self._loop is not None:
            self._loop.interrupt()

    def _started(self, loop: BatchLoop) -> None:
        """A batch starts on this pool: one at a time."""
        self._check_open("stream")
        if self._loop is not None:
            raise RuntimeError(
                "this BatchPool is already streaming a batch; finish or close that "
                "stream before starting another"
            )
        self._loop = loop
        self.fleet.begin()  # what an earlier batch left in flight was cancelled

    def _ended(self, loop: BatchLoop, online: bool) -> None:
        """A batch ended; an online one teaches the pool its rate (a deadline's guess)."""
        self._loop = None
        if online and loop.dispatcher.summary.requests_per_s > 0:
            self._online_rate = loop.dispatcher.summary.requests_per_s

    def _start_workers(self) -> None:
        if self._state is PoolState.CREATED:
            self._check_can_start()
            self._state = PoolState.RUNNING
            self._supervisor.start()
            warm_up()  # the price table loads while the workers start

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


def _taken(batch: Batch) -> Callable[[int], None] | None:
    """What to tell of each index the caller takes: the Batch API route keeps it."""
    return batch.route.taken if batch.route is not None else None


def _shut_down(supervisor: Supervisor, cache: ResponseCache | None) -> None:
    """Stop the workers, then commit the cache: at close, garbage collection or exit."""
    supervisor.stop_all()
    if cache is not None:
        cache.close()
