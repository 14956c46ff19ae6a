"""One batch on a pool started for it and closed after it: the functions most callers use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, TypedDict

from typing_extensions import Unpack

from .pool import BatchPool, Postprocess, Result, in_input_order
from .request import OpenAIRequest

__all__ = ["PoolOptions", "arun_batch", "astream_batch", "run_batch", "stream_batch"]


class PoolOptions(TypedDict, total=False):
    """Keyword arguments every batch function passes to `BatchPool` (see its docstring)."""

    workers: int | None
    base_url: str | None
    api_key: str | None
    timeout: float
    max_retries: int
    postprocess: Postprocess | None
    start_method: str


def stream_batch(
    requests: Iterable[OpenAIRequest], *, max_concurrency: int = 5, **options: Unpack[PoolOptions]
) -> Iterator[Result]:
    """Fire the requests concurrently; yield ``(index, str | Exception)`` as each completes.

    Example::

        for index, result in stream_batch(requests, max_concurrency=50):
            if isinstance(result, Exception):
                print(index, "failed:", result)

    Results come in completion order. A failed request yields its Exception and the
    batch goes on. Arguments are checked now (and a list of requests, whole); the worker
    processes start on the first iteration and stop when the generator ends or is closed.
    Other keyword arguments are those of `BatchPool`.
    """
    pool = BatchPool(max_concurrency=max_concurrency, **options)
    return _stream_and_close(pool, pool.stream(requests))


def _stream_and_close(pool: BatchPool, results: Iterator[Result]) -> Iterator[Result]:
    with pool:
        yield from results


def run_batch(
    requests: Iterable[OpenAIRequest], *, max_concurrency: int = 5, **options: Unpack[PoolOptions]
) -> list[Any]:
    """Fire the requests concurrently; return ``str | Exception`` per request, in input order.

    Keyword arguments are those of `BatchPool`.
    """
    with BatchPool(max_concurrency=max_concurrency, **options) as pool:
        return pool.run(requests)


async def astream_batch(
    requests: Iterable[OpenAIRequest], *, max_concurrency: int = 5, **options: Unpack[PoolOptions]
) -> AsyncIterator[Result]:
    """`stream_batch` for code already inside an event loop; never blocks that loop.

    Example::

        async for index, result in astream_batch(requests, max_concurrency=50):
            ...
    """
    pool = BatchPool(max_concurrency=max_concurrency, **options)
    try:
        async for result in pool.astream(requests):
            yield result
    finally:
        # Joining workers takes a moment: not on the caller's loop.
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


async def arun_batch(
    requests: Iterable[OpenAIRequest], *, max_concurrency: int = 5, **options: Unpack[PoolOptions]
) -> list[Any]:
    """`run_batch` for code already inside an event loop; never blocks that loop."""
    stream = astream_batch(requests, max_concurrency=max_concurrency, **options)
    return in_input_order([result async for result in stream])
