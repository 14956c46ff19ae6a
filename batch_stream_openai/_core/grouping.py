"""Requests that share a prefix, sent close together: the read-ahead window's order.

A server's prefix cache helps only while the prefix is still in it: requests with the
same prefix (`_wire/prefixes.py`) spread over a batch in the caller's order each find it
evicted. `PrefixGroups` holds a bounded window of the input read ahead (`WINDOW`
requests: memory stays flat) and gives out, in turn:

1. the others of a group whose first was answered (warm: its prefix is in a cache
   now), a group at a time, in the order they became warm, so that the cache sees them
   all while it still holds the prefix. With several endpoints, a group whose endpoint
   is too busy for it (`fits`: `fleet.py` would send it to one that lacks its prefix)
   waits, and the first of the next `LOOK_AHEAD` groups that fits goes instead, so that
   every endpoint works on its own prefixes;
2. the first request of a prefix not seen before (and a request without a prefix), in
   the order read: its answer warms a cache for the rest of its group;
3. only when nothing else is there, the others of a group whose first is still
   running: never is a slot left idle to wait for a cache.

Warm groups go before new ones: sending the first of every group first would have an
LRU cache smaller than the groups see each of them again only after all the others,
its worst case (BENCHMARKS.md, section N).

Results still stream as they complete; `run_batch` still returns them in input order.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LOOK_AHEAD", "WARM_MEMORY", "WINDOW", "Item", "PrefixGroups"]

# Requests read ahead of those sent at most (besides the dispatcher's own read-ahead).
WINDOW = 256
# Prefixes remembered as answered, least recent forgotten first.
WARM_MEMORY = 65_536
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
        if self._firsts and not self._warm_waiting:
            self.size -= 1
            return self._firsts.popleft()
        waiting = self._warm_waiting or self._cold_waiting
        if not waiting:
            return None
        prefix = self._turn(waiting, fits)
        others = self._others[prefix]
        item = others.popleft()
        if not others:
            del self._others[prefix], waiting[prefix]
        self.size -= 1
        return item

    @staticmethod
    def _turn(waiting: OrderedDict[int, None], fits: Callable[[int], bool] | None) -> int:
        """The group to take from: the first, or the first of the next few that fits
        where its prefix is."""
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
