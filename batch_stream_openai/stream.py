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

    Example:

    >>> from batch_stream_openai import stream_batch
    >>> with stream_batch(requests) as stream:
    ...     answers = dict(stream)
    >>> sorted(answers)
    [0, 1, 2]
    >>> print(stream.summary)  # doctest: +ELLIPSIS
    3 requests: 3 ok, 0 failed...

    Closing it (``close()``, the end of a ``with`` block, or garbage collection) cancels
    what is still in flight.

    Parameters:
        chunks: the batch loop: groups of ``(index, value)`` pairs as they finish.
        summary: the batch's live counts.
        taken: told each index as the caller takes it (the batch journal), or None.
    """

    def __init__(
        self,
        chunks: Generator[list[ResultPair], None, None],
        summary: BatchSummary,
        taken: Callable[[int], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._buffer: deque[ResultPair] = deque()
        self._taken = taken
        self._done_callbacks: list[Callable[[bool], None]] | None = []  # None: ran
        self.summary = summary

    def __repr__(self) -> str:
        return f"<BatchStream {self.summary}>"

    def __iter__(self) -> BatchStream[T]:
        return self

    def __next__(self) -> tuple[int, T]:
        while not self._buffer:
            try:
                self._buffer.extend(next(self._chunks))
            except StopIteration:
                self._end(completed=True)
                raise
            except BaseException:
                self._end(completed=False)
                raise
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

    def __del__(self) -> None:
        if getattr(self, "_done_callbacks", None) is not None:
            self.close()

    def add_done_callback(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(completed)`` once, when the stream ends: ``completed`` is True
        when every result was taken, False when it was closed first (or raised)."""
        if self._done_callbacks is None:
            raise RuntimeError("the stream has ended already")
        self._done_callbacks.append(callback)

    def close(self) -> None:
        """Stop the batch: what is in flight is cancelled, nothing more is yielded."""
        self._buffer.clear()
        self._chunks.close()
        self._end(completed=False)

    def _end(self, completed: bool) -> None:
        callbacks, self._done_callbacks = self._done_callbacks, None
        for callback in callbacks or ():
            callback(completed)


class AsyncBatchStream(AsyncIterator[tuple[int, T]]):
    """`BatchStream` for ``async for``: yields ``(index, result)``; `summary` counts them.

    Example:

    >>> import asyncio
    >>> from batch_stream_openai import astream_batch
    >>> async def main():
    ...     stream = astream_batch(requests)
    ...     answers = {index: result async for index, result in stream}
    ...     return sorted(answers), stream.summary.ok
    >>> asyncio.run(main())
    ([0, 1, 2], 3)

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
        self._done_callbacks: list[Callable[[bool], None]] | None = []  # None: ran
        self.summary = summary

    def __repr__(self) -> str:
        return f"<AsyncBatchStream {self.summary}>"

    def __aiter__(self) -> AsyncBatchStream[T]:
        return self

    async def __anext__(self) -> tuple[int, T]:
        try:
            pair = await self._pairs.__anext__()
        except StopAsyncIteration:
            await self._end(completed=True)
            raise
        except BaseException:
            await self._end(completed=False)
            raise
        if self._taken is not None:
            self._taken(pair[0])
        return pair

    def add_done_callback(self, callback: Callable[[bool], None]) -> None:
        """`BatchStream.add_done_callback`; the callback runs in a thread, never on the
        event loop (closing a pool joins its workers)."""
        if self._done_callbacks is None:
            raise RuntimeError("the stream has ended already")
        self._done_callbacks.append(callback)

    async def aclose(self) -> None:
        """Stop the batch: what is in flight is cancelled, nothing more is yielded."""
        await self._pairs.aclose()
        await self._end(completed=False)

    async def _end(self, completed: bool) -> None:
        callbacks, self._done_callbacks = self._done_callbacks, None
        loop = asyncio.get_running_loop()
        for callback in callbacks or ():
            await loop.run_in_executor(None, callback, completed)


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
