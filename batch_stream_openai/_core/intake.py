"""The caller's input as the dispatcher reads it: ``(index, item)`` pairs, lazily.

A plain iterable of requests is numbered as it is read. An indexed source (the Batch
API route, `jobs.py`) gives its own pairs in any order, where an item may be
`Answered` (a request that already has its answer), and gives `PENDING` instead of a
pair while it has nothing yet. An item that a budget holds back is kept (`hold`) and
comes first next time. An exception from the input, or a bad item, ends the reading;
it is kept in `error`, to be raised once everything read before it has been yielded.

Each item read gets its prefix key (`_wire/prefixes.py`) when something uses it (the
endpoints' cache-aware routing, ``prompt_cache_key``, the grouping); with
``group_prefixes`` the items go out in the order `grouping.py` gives them, from a
bounded window read ahead (an input slow to give its requests is not read ahead: that
would hold the answers up).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._wire.sources import PENDING
from .grouping import WINDOW, Item, PrefixGroups

__all__ = ["Intake", "Item"]

# Requests read into the window per one given out, while it fills: the first request
# goes at once, and the window is full after `WINDOW` of them.
_READS_PER_TAKE = 2
# An input that once takes this long to give a request is read only as requests are
# needed from then on: reading it ahead would hold the loop (and the answers) up.
_SLOW_READ_S = 0.002


class Intake:
    """The input of one batch.

    Parameters:
        requests: the caller's iterable (or, `indexed`, a source of pairs).
        indexed: `requests` yields ``(index, item)`` pairs, and may yield `PENDING`.
        check_item: validates each item read (raises for a bad one), or None.
        prefix_of: the prefix key of a request (`_wire/prefixes.py`), or None: items
            get none.
        group: give the items out grouped by prefix, from a window read ahead.
        drain: grouping for one endpoint: the requests of a warm prefix go together
            (`grouping.py`).
    """

    def __init__(
        self,
        requests: Iterable[Any],
        *,
        indexed: bool = False,
        check_item: Callable[[int, object], None] | None = None,
        prefix_of: Callable[[Any], int | None] | None = None,
        group: bool = False,
        drain: bool = True,
    ) -> None:
        self._source: Iterator[Any] = iter(requests) if indexed else enumerate(requests)
        self._check_item = check_item
        self._prefix_of = prefix_of
        self._groups = PrefixGroups(drain) if group and prefix_of is not None else None
        self._held: Item | None = None
        self._read_all = False  # nothing more will be read from the source
        self._ahead = True  # read ahead: no read took `_SLOW_READ_S` yet
        self.error: BaseException | None = None  # to raise once all read is yielded

    def __repr__(self) -> str:
        return f"<Intake exhausted={self.exhausted} held={self._held is not None}>"

    @property
    def exhausted(self) -> bool:
        """Nothing more will be given out but what is held."""
        return self._read_all and not self._groups

    @property
    def done(self) -> bool:
        """Nothing is held, and nothing more will be given out."""
        return self.exhausted and self._held is None

    def next(self) -> Item | None:
        """The held item, else the next one; None when there is none (for now)."""
        if self._held is not None:
            return self.take_held()
        groups = self._groups
        if groups is None:
            return self._read()
        for _ in range(_READS_PER_TAKE):
            if len(groups) >= (WINDOW if self._ahead else 1):
                break
            started = time.perf_counter()
            item = self._read()
            if time.perf_counter() - started >= _SLOW_READ_S:
                self._ahead = False
            if item is None:
                break
            groups.add(item)
        return groups.take()

    def answered(self, prefix: int | None) -> None:
        """A request with `prefix` was answered or failed: the others of its group need
        not wait for it."""
        if self._groups is not None:
            self._groups.answered(prefix)

    def _read(self) -> Item | None:
        """The next item of the source; None when there is none (for now)."""
        if self._read_all:
            return None
        try:
            pair: tuple[int, Any] = next(self._source)
            if pair is PENDING:
                return None
            if self._check_item is not None:
                self._check_item(*pair)
            prefix = None if self._prefix_of is None else self._prefix_of(pair[1])
        except StopIteration:
            self._read_all = True
            return None
        except Exception as exc:  # the caller's iterable raised, or yielded something bad
            self.stop(exc)
            return None
        return Item(pair[0], pair[1], prefix)

    def hold(self, item: Item) -> None:
        """Keep `item` (a budget holds it back): `next` gives it first."""
        self._held = item

    def take_held(self) -> Item | None:
        """The held item, no longer held (None if there is none)."""
        item, self._held = self._held, None
        return item

    def take_unsent(self) -> list[Item]:
        """What was read and not given out (held, or in the window), taken out."""
        held = self.take_held()
        return ([held] if held is not None else []) + (
            self._groups.drain() if self._groups is not None else []
        )

    def stop(self, error: BaseException | None = None) -> None:
        """Read nothing more from the source (what the window holds is still given out);
        the first `error` given is raised once all read is yielded."""
        self._read_all = True
        if self.error is None:
            self.error = error
