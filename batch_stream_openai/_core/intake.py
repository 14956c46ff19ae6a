"""The caller's input as the dispatcher reads it: ``(index, item)`` pairs, lazily.

A plain iterable of requests is numbered as it is read. An indexed source (the Batch
API route, `jobs.py`) gives its own pairs in any order, where an item may be
`Answered` (a request that already has its answer), and gives `PENDING` instead of a
pair while it has nothing yet. An item that a budget holds back is kept (`hold`) and
comes first next time. An exception from the input, or a bad item, ends the reading;
it is kept in `error`, to be raised once everything read before it has been yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._wire.sources import PENDING

__all__ = ["Intake"]


class Intake:
    """The input of one batch.

    Parameters:
        requests: the caller's iterable (or, `indexed`, a source of pairs).
        indexed: `requests` yields ``(index, item)`` pairs, and may yield `PENDING`.
        check_item: validates each item read (raises for a bad one), or None.
    """

    def __init__(
        self,
        requests: Iterable[Any],
        *,
        indexed: bool = False,
        check_item: Callable[[int, object], None] | None = None,
    ) -> None:
        self._source: Iterator[Any] = iter(requests) if indexed else enumerate(requests)
        self._check_item = check_item
        self._held: tuple[int, Any] | None = None
        self.exhausted = False  # nothing more will be read
        self.error: BaseException | None = None  # to raise once all read is yielded

    def __repr__(self) -> str:
        return f"<Intake exhausted={self.exhausted} held={self._held is not None}>"

    @property
    def done(self) -> bool:
        """Nothing is held, and nothing more will be read."""
        return self.exhausted and self._held is None

    def next(self) -> tuple[int, Any] | None:
        """The held item, else the next one read; None when there is none (for now)."""
        if self._held is not None:
            return self.take_held()
        if self.exhausted:
            return None
        try:
            pair: tuple[int, Any] = next(self._source)
            if pair is PENDING:
                return None
            if self._check_item is not None:
                self._check_item(*pair)
        except StopIteration:
            self.exhausted = True
            return None
        except Exception as exc:  # the caller's iterable raised, or yielded something bad
            self.stop(exc)
            return None
        return pair

    def hold(self, item: tuple[int, Any]) -> None:
        """Keep `item` (a budget holds it back): `next` gives it first."""
        self._held = item

    def take_held(self) -> tuple[int, Any] | None:
        """The held item, no longer held (None if there is none)."""
        item, self._held = self._held, None
        return item

    def stop(self, error: BaseException | None = None) -> None:
        """Read nothing more; the first `error` given is raised once all read is yielded."""
        self.exhausted = True
        if self.error is None:
            self.error = error
