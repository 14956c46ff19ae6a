"""Requests that share a prefix, sent close together: the read-ahead window's order.

A server's prefix cache helps only while the prefix is still in it: requests with the
same prefix (`_wire/prefixes.py`) spread over a batch in the caller's order each find it
evicted, and requests of a new prefix sent together all miss it while the first is
still being read. `PrefixGroups` holds a bounded window of the input read ahead
(`WINDOW` requests: memory stays flat) and gives out, in turn:

1. the others of a group whose first was answered (its prefix is in a cache now), a
   group at a time, in the order they became warm. With one endpoint (`drain`), a
   request of a prefix answered before joins its group there too, so the cache sees a
   group's requests together while it still holds the prefix. With several, such a
   request keeps its place in the input's order (item 2): the endpoints' routing
   (`fleet.py`) keeps each prefix on one of them, and draining a group would pile it on
   that one (BENCHMARKS.md, section N);
2. the first request of a prefix not seen before (and a request without a prefix), in
   the order read: its answer warms a cache for the rest of its group;
3. only when nothing else is there, the others of a group whose first is still
   running: never is a slot left idle to wait for a cache.

Warm groups go before new ones: sending the first of every group first would have an
LRU cache smaller than the groups see each of them again only after all the others,
its worst case.

Results still stream as they complete; `run_batch` still returns them in input order.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

__all__ = ["WARM_MEMORY", "WINDOW", "Item", "PrefixGroups"]

# Requests read ahead of those sent at most (besides the dispatcher's own read-ahead).
WINDOW = 256
# Prefixes remembered as answered, least recent forgotten first.
WARM_MEMORY = 65_536


@dataclass(frozen=True, slots=True)
class Item:
    """One request read from the input: its index, itself, and its prefix key."""

    index: int
    request: Any
    prefix: int | None = None


class PrefixGroups:
    """The window's requests, by prefix (see the module docstring); `drain`: one
    endpoint, the requests of a warm prefix go together.

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

    def __init__(self, drain: bool = True) -> None:
        self._drain = drain
        self._firsts: deque[Item] = deque()  # firsts of new prefixes, and what need not wait
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
        if prefix is not None and (
            prefix in self._started or (self._drain and prefix in self._warm)
        ):
            others = self._others.get(prefix)
            if others is None:
                others = self._others[prefix] = deque()
                waiting = self._cold_waiting if prefix in self._started else self._warm_waiting
                waiting[prefix] = None
            others.append(item)
            return
        if prefix is not None and prefix not in self._warm:
            self._started.add(prefix)  # the first of its group
        self._firsts.append(item)

    def take(self) -> Item | None:
        """The request to send next (None: the window is empty)."""
        if self._firsts and not self._warm_waiting:
            self.size -= 1
            return self._firsts.popleft()
        waiting = self._warm_waiting or self._cold_waiting
        if not waiting:
            return None
        prefix = next(iter(waiting))
        others = self._others[prefix]
        item = others.popleft()
        if not others:
            del self._others[prefix], waiting[prefix]
        self.size -= 1
        return item

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
