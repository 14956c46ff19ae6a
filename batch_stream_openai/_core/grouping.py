"""Requests that share a prefix, sent close together: the read-ahead window's order.

A server's prefix cache helps only while the prefix is still in it: requests with the
same prefix (`_wire/prefixes.py`) spread over a batch in the caller's order each find it
evicted. `PrefixGroups` holds a bounded window of the input read ahead (`WINDOW`
requests: memory stays flat) and gives out, in turn:

1. the first request of a prefix not seen before (and a request without a prefix), in
   the order read: its answer warms the server's cache for the rest of its group;
2. the others of a group whose first was answered (warm), up to `BURST` of one group
   in a row, the groups in turn: close together, so a cache holding the group sees
   them while it still does, yet a few groups at once, so a group does not crowd one
   endpoint of several (`fleet.py`'s routing sends a prefix where it went before).
   With several endpoints, of the next `LOOK_AHEAD` groups in turn the first whose
   endpoint has room for it goes (`fits`), so that no endpoint idles while another
   would have to take a group it does not hold;
3. only when nothing else is there, the others of a group whose first is still
   running: never is a slot left idle to wait for a cache.

Results still stream as they complete; `run_batch` still returns them in input order.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BURST", "LOOK_AHEAD", "WARM_MEMORY", "WINDOW", "Item", "PrefixGroups"]

# Requests read ahead of those sent at most (besides the dispatcher's own read-ahead).
WINDOW = 256
# Prefixes remembered as answered, least recent forgotten first.
WARM_MEMORY = 65_536
# Requests of one group given out in a row, at most, before the next group's turn.
BURST = 4
# Groups in turn looked at for one that fits where its prefix is (several endpoints).
LOOK_AHEAD = 8


@dataclass(frozen=True, slots=True)
class Item:
    """One request read from the input: its index, itself, and its prefix key."""

    index: int
    request: Any
    prefix: int | None = None


class PrefixGroups:
    """The window's requests, by prefix (see the module docstring).

    Example:

    >>> groups = PrefixGroups()
    >>> for index, prefix in enumerate(["a", "b", "a", "b", "a"]):
    ...     groups.add(Item(index, None, hash(prefix)))
    >>> [groups.take().index for _ in range(2)]  # the first of each prefix
    [0, 1]
    >>> groups.answered(hash("b"))  # "b" is warm now: its others go next
    >>> [groups.take().index for _ in range(3)]
    [3, 2, 4]
    """

    def __init__(self) -> None:
        self._firsts: deque[Item] = deque()  # firsts of new prefixes, and unkeyed requests
        self._others: dict[int, deque[Item]] = {}  # the rest of each group, in order
        self._warm_waiting: OrderedDict[int, None] = OrderedDict()  # warm, with others
        self._cold_waiting: OrderedDict[int, None] = OrderedDict()  # first running
        self._started: set[int] = set()  # prefixes whose first is out, not yet answered
        self._last: int | None = None  # the group of the request given out last
        self._burst = 0  # requests of it given out in a row
        self._warm: OrderedDict[int, None] = OrderedDict()  # prefixes answered lately
        self.size = 0  # requests in the window

    def __repr__(self) -> str:
        return f"<PrefixGroups size={self.size} groups={len(self._others)}>"

    def __len__(self) -> int:
        return self.size

    @property
    def remembered(self) -> int:
        """Prefixes remembered as answered (at most `WARM_MEMORY`)."""
        return len(self._warm)

    def add(self, item: Item) -> None:
        """One more request read."""
        self.size += 1
        prefix = item.prefix
        if prefix is None or (prefix not in self._started and prefix not in self._warm):
            if prefix is not None:
                self._started.add(prefix)
            self._firsts.append(item)
            return
        others = self._others.get(prefix)
        if others is None:
            others = self._others[prefix] = deque()
            waiting = self._warm_waiting if prefix in self._warm else self._cold_waiting
            waiting[prefix] = None
        others.append(item)

    def take(self, fits: Callable[[int], bool] | None = None) -> Item | None:
        """The request to send next (None: the window is empty); `fits(prefix)`: whether
        a request with `prefix` would go where its prefix is cached (None: always)."""
        if self._firsts:
            self.size -= 1
            return self._firsts.popleft()
        waiting = self._warm_waiting or self._cold_waiting
        if not waiting:
            return None
        prefix = self._turn(waiting, fits)
        others = self._others[prefix]
        item = others.popleft()
        self._burst = self._burst + 1 if prefix == self._last else 1
        self._last = prefix
        if not others:
            del self._others[prefix], waiting[prefix]
        elif self._burst >= BURST:
            waiting.move_to_end(prefix)  # the next group's turn
        self.size -= 1
        return item

    @staticmethod
    def _turn(waiting: OrderedDict[int, None], fits: Callable[[int], bool] | None) -> int:
        """The group to take from: the first in turn, or the first of the next few that
        fits where its prefix is."""
        first = next(iter(waiting))
        if fits is None or fits(first):
            return first
        later = itertools.islice(waiting, 1, LOOK_AHEAD)
        return next((prefix for prefix in later if fits(prefix)), first)

    def drain(self) -> list[Item]:
        """Every request in the window, taken out of it."""
        items = []
        while (item := self.take()) is not None:
            items.append(item)
        return items

    def answered(self, prefix: int | None) -> None:
        """A request with `prefix` was answered (or failed): its group need not wait."""
        if prefix is None:
            return
        self._started.discard(prefix)
        warm = self._warm
        warm[prefix] = None
        warm.move_to_end(prefix)
        if len(warm) > WARM_MEMORY:
            warm.popitem(last=False)
        if prefix in self._cold_waiting:
            del self._cold_waiting[prefix]
            self._warm_waiting[prefix] = None
