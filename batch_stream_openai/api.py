"""One batch on a pool started for it and closed after it: the functions most callers use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from typing_extensions import Unpack

from .pool import BatchPool, StreamOptions
from .protocol import Postprocess
from .request import AnyRequest
from .stream import AsyncBatchStream, BatchStream, ResultPair

__all__ = ["BatchArguments", "arun_batch", "astream_batch", "run_batch", "stream_batch"]


class BatchArguments(StreamOptions, total=False):
    """Keyword arguments of the batch functions: `BatchPool`'s and `BatchPool.stream`'s."""

    max_concurrency_cap: int
    workers: int | None
    base_url: str | Sequence[str] | None
    endpoint_concurrency: int | None
    api_key: str | None
    timeout: float
    max_retries: int
    rpm: float | None
    tpm: float | None
    adaptive: bool
    hang_timeout: float | None
    initializer: Callable[[], object] | None
    start_method: str | None
    backend: str
    ray_address: str | None
    cache: str | Path | bool | None
    prices: Mapping[str, Mapping[str, float]] | None


_STREAM_KEYS = frozenset(StreamOptions.__annotations__)


def _pool_for(
    max_concurrency: int | Literal["auto"], options: BatchArguments
) -> tuple[BatchPool, StreamOptions]:
    """A pool for one batch; the per-batch options go to its stream."""
    pool_options: dict[str, Any] = {k: v for k, v in options.items() if k not in _STREAM_KEYS}
    stream_options: Any = {k: v for k, v in options.items() if k in _STREAM_KEYS}
    postprocess: Postprocess | None = stream_options.pop("postprocess", None)
    pool = BatchPool(max_concurrency=max_concurrency, postprocess=postprocess, **pool_options)
    return pool, stream_options


def stream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: int | Literal["auto"] = 5,
    **options: Unpack[BatchArguments],
) -> BatchStream:
    """Fire the requests concurrently; yield ``(index, str | Exception)`` as each completes.

    Example::

        stream = stream_batch(requests, max_concurrency=50)
        for index, result in stream:
            if isinstance(result, Exception):
                print(index, "failed:", result)
        print(stream.summary)

    Results come in completion order. A failed request yields its Exception and the
    batch goes on. Arguments are checked now (and a list of requests, whole); the worker
    processes start on the first iteration and stop when the stream ends or is closed.
    Keyword arguments are those of `BatchPool` and `BatchPool.stream`.
    """
    pool, stream_options = _pool_for(max_concurrency, options)
    try:
        chunks, summary, taken = pool.open_stream(requests, **stream_options)
    except BaseException:
        pool.close()
        raise
    return BatchStream(_closing(pool, chunks), summary, taken)


def _closing(
    pool: BatchPool, chunks: Generator[list[ResultPair], None, None]
) -> Generator[list[ResultPair], None, None]:
    with pool:
        yield from chunks


def run_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: int | Literal["auto"] = 5,
    **options: Unpack[BatchArguments],
) -> list[Any]:
    """Fire the requests concurrently; return ``str | Exception`` per request, in input order.

    Keyword arguments are those of `stream_batch`.
    """
    pool, stream_options = _pool_for(max_concurrency, options)
    with pool:
        return pool.run(requests, **stream_options)


def astream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: int | Literal["auto"] = 5,
    **options: Unpack[BatchArguments],
) -> AsyncBatchStream:
    """`stream_batch` for code already inside an event loop; never blocks that loop.

    Example::

        stream = astream_batch(requests, max_concurrency=50)
        async for index, result in stream:
            ...
        print(stream.summary)
    """
    pool, stream_options = _pool_for(max_concurrency, options)
    try:
        stream = pool.astream(requests, **stream_options)
    except BaseException:
        pool.close()
        raise
    return AsyncBatchStream(_aclosing(pool, stream), stream.summary)  # `stream` tells the journal


async def _aclosing(pool: BatchPool, stream: AsyncBatchStream) -> AsyncGenerator[ResultPair, None]:
    try:
        async for result in stream:
            yield result
    finally:
        await stream.aclose()
        # Joining workers takes a moment: not on the caller's loop.
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


async def arun_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: int | Literal["auto"] = 5,
    **options: Unpack[BatchArguments],
) -> list[Any]:
    """`run_batch` for code already inside an event loop; never blocks that loop."""
    pool, stream_options = _pool_for(max_concurrency, options)
    try:
        return await pool.arun(requests, **stream_options)
    finally:
        # Joining workers takes a moment: not on the caller's loop.
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
