"""`stream_batch` and `run_batch`: one batch on a pool started and closed for it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .pool import BatchPool, Result
from .request import OpenAIRequest

__all__ = ["run_batch", "stream_batch"]


def stream_batch(
    requests: Iterable[OpenAIRequest],
    *,
    max_concurrency: int = 5,
    workers: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    max_retries: int = 5,
) -> Iterator[Result]:
    """Fire the requests concurrently; yield ``(index, str | Exception)`` as each completes.

    Example::

        for index, result in stream_batch(requests, max_concurrency=50):
            if isinstance(result, Exception):
                print(index, "failed:", result)

    Results come in completion order. A failed request yields its Exception and the
    batch goes on. Arguments are checked now (and a list of requests, whole); the worker
    processes start on the first iteration and stop when the generator ends or is closed.
    Parameters are those of `BatchPool`.
    """
    pool = BatchPool(
        max_concurrency=max_concurrency,
        workers=workers,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        max_retries=max_retries,
    )
    return _stream_and_close(pool, pool.stream(requests))


def _stream_and_close(pool: BatchPool, results: Iterator[Result]) -> Iterator[Result]:
    with pool:
        yield from results


def run_batch(
    requests: Iterable[OpenAIRequest],
    *,
    max_concurrency: int = 5,
    workers: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    max_retries: int = 5,
) -> list[str | Exception]:
    """Fire the requests concurrently; return ``str | Exception`` per request, in input order.

    Parameters are those of `BatchPool`.
    """
    with BatchPool(
        max_concurrency=max_concurrency,
        workers=workers,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        max_retries=max_retries,
    ) as pool:
        return pool.run(requests)
