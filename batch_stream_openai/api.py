"""One batch on a pool started for it and closed after it: the functions most callers use.

Their keyword arguments are declared once, in `options.py`; the options part of each
docstring (``help(stream_batch)``) is built from it. The overloads tell an editor what is
yielded: ``str | Exception`` per prompt request, a vector per `EmbeddingRequest`, a
`Result` with ``return_results=True``, what `postprocess` returns with one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

from typing_extensions import Unpack

from ._core.options import options_doc, refuse_idle
from .pool import BatchPool, PerBatchOptions, StreamOptions
from .request import AnyRequest, EmbeddingRequest, OpenAIRequest, RawRequest
from .results import Result
from .stream import AsyncBatchStream, BatchStream

__all__ = ["BatchArguments", "arun_batch", "astream_batch", "run_batch", "stream_batch"]

T = TypeVar("T")
Concurrency = int | Literal["auto"]
Vector = list[float] | list[list[float]]


class BatchArguments(PerBatchOptions, total=False):
    """Keyword arguments of the batch functions (but `max_concurrency`, `return_results`
    and `postprocess`, which the overloads name): `BatchPool`'s and `BatchPool.stream`'s."""

    max_concurrency_cap: int
    workers: int | None
    base_url: str | Sequence[str] | None
    endpoint_concurrency: int | None
    routing: str
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
    metrics_port: int | None


_STREAM_KEYS = frozenset(PerBatchOptions.__annotations__)


def _pool_for(
    max_concurrency: Concurrency,
    return_results: bool,
    postprocess: Callable[[Any], Any] | None,
    options: BatchArguments,
) -> tuple[BatchPool, StreamOptions]:
    """A pool for one batch; the per-batch options go to its stream."""
    refuse_idle({"max_concurrency": max_concurrency, **options})
    pool_options: dict[str, Any] = {k: v for k, v in options.items() if k not in _STREAM_KEYS}
    per_batch = {k: v for k, v in options.items() if k in _STREAM_KEYS}
    stream_options = cast(StreamOptions, {**per_batch, "return_results": return_results})
    pool = BatchPool(max_concurrency=max_concurrency, postprocess=postprocess, **pool_options)
    return pool, stream_options


@overload
def stream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[True],
    postprocess: Callable[[Any], Any] | None = ...,
    **options: Unpack[BatchArguments],
) -> BatchStream[Result]: ...
@overload
def stream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: Callable[[Any], T],
    **options: Unpack[BatchArguments],
) -> BatchStream[T | Exception]: ...
@overload
def stream_batch(
    requests: Iterable[EmbeddingRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: None = ...,
    **options: Unpack[BatchArguments],
) -> BatchStream[Vector | Exception]: ...
@overload
def stream_batch(
    requests: Iterable[OpenAIRequest | RawRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: None = ...,
    **options: Unpack[BatchArguments],
) -> BatchStream[str | Exception]: ...
@overload
def stream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: bool = ...,
    postprocess: Callable[[Any], Any] | None = ...,
    **options: Unpack[BatchArguments],
) -> BatchStream[Any]: ...
def stream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = 5,
    return_results: bool = False,
    postprocess: Callable[[Any], Any] | None = None,
    **options: Unpack[BatchArguments],
) -> BatchStream[Any]:
    """Fire the requests concurrently; yield ``(index, str | Exception)`` as each completes.

    Example:

    >>> stream = stream_batch(requests, max_concurrency=50)
    >>> for index, result in stream:
    ...     if isinstance(result, Exception):
    ...         print(index, "failed:", result)
    >>> stream.summary.ok
    3

    Results come in completion order. A failed request yields its Exception and the
    batch goes on. Arguments are checked now (and a list of requests, whole); the worker
    processes start on the first iteration and stop when the stream ends or is closed
    (``with stream_batch(...) as stream:``, ``stream.close()``, or running out).
    """
    pool, stream_options = _pool_for(max_concurrency, return_results, postprocess, options)
    try:
        stream = pool.stream(requests, **stream_options)
    except BaseException:
        pool.close()
        raise
    stream.add_done_callback(lambda _completed: pool.close())
    return stream


@overload
def run_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[True],
    postprocess: Callable[[Any], Any] | None = ...,
    **options: Unpack[BatchArguments],
) -> list[Result]: ...
@overload
def run_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: Callable[[Any], T],
    **options: Unpack[BatchArguments],
) -> list[T | Exception]: ...
@overload
def run_batch(
    requests: Iterable[EmbeddingRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: None = ...,
    **options: Unpack[BatchArguments],
) -> list[Vector | Exception]: ...
@overload
def run_batch(
    requests: Iterable[OpenAIRequest | RawRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: Literal[False] = ...,
    postprocess: None = ...,
    **options: Unpack[BatchArguments],
) -> list[str | Exception]: ...
@overload
def run_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = ...,
    return_results: bool = ...,
    postprocess: Callable[[Any], Any] | None = ...,
    **options: Unpack[BatchArguments],
) -> list[Any]: ...
def run_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = 5,
    return_results: bool = False,
    postprocess: Callable[[Any], Any] | None = None,
    **options: Unpack[BatchArguments],
) -> list[Any]:
    """Fire the requests concurrently; return ``str | Exception`` per request, in input order.

    Keyword arguments are those of `stream_batch`.
    """
    pool, stream_options = _pool_for(max_concurrency, return_results, postprocess, options)
    with pool:
        return pool.run(requests, **stream_options)


def astream_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = 5,
    return_results: bool = False,
    postprocess: Callable[[Any], Any] | None = None,
    **options: Unpack[BatchArguments],
) -> AsyncBatchStream[Any]:
    """`stream_batch` for code already inside an event loop; never blocks that loop.

    Example:

    >>> import asyncio
    >>> async def main():
    ...     stream = astream_batch(requests, max_concurrency=50)
    ...     async for index, result in stream:
    ...         pass
    ...     return stream.summary.ok
    >>> asyncio.run(main())
    3
    """
    pool, stream_options = _pool_for(max_concurrency, return_results, postprocess, options)
    try:
        stream = pool.astream(requests, **stream_options)
    except BaseException:
        pool.close()
        raise
    stream.add_done_callback(lambda _completed: pool.close())  # in a thread
    return stream


async def arun_batch(
    requests: Iterable[AnyRequest],
    *,
    max_concurrency: Concurrency = 5,
    return_results: bool = False,
    postprocess: Callable[[Any], Any] | None = None,
    **options: Unpack[BatchArguments],
) -> list[Any]:
    """`run_batch` for code already inside an event loop; never blocks that loop."""
    pool, stream_options = _pool_for(max_concurrency, return_results, postprocess, options)
    try:
        return await pool.arun(requests, **stream_options)
    finally:
        # Joining workers takes a moment: not on the caller's loop.
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


for _function in (stream_batch, run_batch, astream_batch, arun_batch):
    _function.__doc__ = f"{_function.__doc__}\n{options_doc(indent=4)}"
