"""`BatchStream` and `AsyncBatchStream`: what a batch returns, with its live summary."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .results import BatchSummary, ResultPair

__all__ = ["AsyncBatchStream", "BatchStream", "async_pairs", "in_input_order"]

# What a stream yields beside each index (``str | Exception``, `Result`, ...).
T = TypeVar("T")


class BatchStream(Iterator[tuple[int, T]]):
    """Yields ``(index, result)`` as requests complete; `summary` counts them as it goes.

    Example::

        stream = stream_batch(requests)
        for index, result in stream:
            ...
        print(stream.summary)

    Closing it (``close()``, ``break`` then garbage collection, or ``with``) cancels
    what is still in flight.
    """

    def __init__(
        self,
        chunks: Generator[list[ResultPair], None, None],
        summary: BatchSummary,
        taken: Callable[[int], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._buffer: deque[ResultPair] = deque()
        self._taken = taken  # told each index as the caller takes it (the batch journal)
        self.summary = summary

    def __repr__(self) -> str:
        return f"<BatchStream {self.summary}>"

    def __iter__(self) -> BatchStream[T]:
        return self

    def __next__(self) -> tuple[int, T]:
        while not self._buffer:
            self._buffer.extend(next(self._chunks))
        pair = self._buffer.popleft()
        if self._taken is not None:
            self._taken(pair[0])
        return pair

    def __enter__(self) -> BatchStream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the batch: what is in flight is cancelled, nothing more is yielded."""
        self._buffer.clear()
        self._chunks.close()


class AsyncBatchStream(AsyncIterator[tuple[int, T]]):
    """`BatchStream` for ``async for``: yields ``(index, result)``; `summary` counts them.

    Example::

        stream = astream_batch(requests)
        async for index, result in stream:
            ...
        print(stream.summary)

    Breaking out of the loop, ``aclose()``, or cancelling the task that iterates it
    cancels what is still in flight.
    """

    def __init__(
        self,
        pairs: AsyncGenerator[ResultPair, None],
        summary: BatchSummary,
        taken: Callable[[int], None] | None = None,
    ) -> None:
        self._pairs = pairs
        self._taken = taken  # told each index as the caller takes it (the batch journal)
        self.summary = summary

    def __repr__(self) -> str:
        return f"<AsyncBatchStream {self.summary}>"

    def __aiter__(self) -> AsyncBatchStream[T]:
        return self

    async def __anext__(self) -> tuple[int, T]:
        pair = await self._pairs.__anext__()
        if self._taken is not None:
            self._taken(pair[0])
        return pair

    async def aclose(self) -> None:
        """Stop the batch: what is in flight is cancelled, nothing more is yielded."""
        await self._pairs.aclose()


async def async_pairs(
    chunks: Generator[list[ResultPair], None, None], interrupt: Callable[[], None]
) -> AsyncGenerator[ResultPair, None]:
    """The pairs of `chunks`, each group waited for in a thread so the event loop runs.

    Cancelled while it waits, it calls `interrupt` (the batch loop stops at its next
    turn), lets the thread finish, then closes the batch.
    """
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
        if pending is not None:  # cancelled while it waited
            interrupt()
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # the Interrupted asked for: retrieved, not logged
        await loop.run_in_executor(None, chunks.close)


def in_input_order(results: Iterable[ResultPair]) -> list[Any]:
    """The values of ``(index, value)`` pairs, in index order."""
    by_index = dict(results)
    return [by_index[index] for index in range(len(by_index))]
