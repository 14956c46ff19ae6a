"""`BatchStream`: the iterator a batch returns, with the batch's live summary."""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any

from .results import BatchSummary

__all__ = ["BatchStream", "ResultPair"]

# (index, value): the text or the Exception, a `Result`, or what `postprocess` made.
ResultPair = tuple[int, Any]


class BatchStream(Iterator[ResultPair]):
    """Yields ``(index, result)`` as requests complete; `summary` counts them as it goes.

    Example::

        stream = stream_batch(requests)
        for index, result in stream:
            ...
        print(stream.summary)

    Closing it (``close()``, ``break`` then garbage collection, or ``with``) cancels
    what is still in flight.
    """

    def __init__(self, chunks: Generator[list[ResultPair], None, None], summary: BatchSummary):
        self._chunks = chunks
        self._buffer: deque[ResultPair] = deque()
        self.summary = summary

    def __repr__(self) -> str:
        return f"<BatchStream {self.summary}>"

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> ResultPair:
        while not self._buffer:
            self._buffer.extend(next(self._chunks))
        return self._buffer.popleft()

    def __enter__(self) -> BatchStream:
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
