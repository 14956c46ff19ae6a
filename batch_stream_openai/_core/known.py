"""Requests answered without an attempt of their own, no I/O.

Three kinds: a request that carries its answer already (`Answered`: a Batch API job's
answer, a journal's replay), a response-cache hit, and a duplicate of an identical
request in flight, answered when that one is. Each is finished at once, or, when the
batch has a ``postprocess``, sent to a worker as a replay (an `Entry` with
``replay=True``) so that the caller gets what ``postprocess`` makes of it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any, Generic, TypeVar

from .._spending.admission import Admission
from .._wire.answers import StoredAnswer
from .._wire.protocol import Task
from .._wire.sources import Answered
from ..results import BatchSummary, Result
from .ledger import Entry, Ledger, Schedule

__all__ = ["KnownAnswers"]

W = TypeVar("W", bound=Hashable)
# How the dispatcher finishes an index: (index, its entry or None, its result).
Finish = Callable[[int, Entry | None, Result], None]


class KnownAnswers(Generic[W]):
    """Answer what needs no provider (see the module docstring).

    Parameters:
        ledger, schedule: the dispatcher's, where replays wait for a worker.
        admission: the response cache and the in-flight duplicates.
        summary: counts cache hits and what they saved.
        finish: the dispatcher's way to finish an index.
    """

    def __init__(
        self,
        ledger: Ledger[W],
        schedule: Schedule,
        admission: Admission,
        summary: BatchSummary,
        finish: Finish,
    ) -> None:
        self._ledger = ledger
        self._schedule = schedule
        self._admission = admission
        self._summary = summary
        self._finish = finish

    def __repr__(self) -> str:
        return f"<KnownAnswers replays={self._admission.replays}>"

    def answer(self, index: int, item: Any) -> tuple[bool, bytes | None]:
        """Answer `item` if it needs no provider (no budget, no deadline): the answer it
        carries, or the cache's. Whether it was answered, and its cache key."""
        if isinstance(item, Answered):
            if item.result.cached:
                self._summary.add_cached(item.paid, deduplicated=False)
            self._answer_with(index, item.result)
            return True, None
        key = self._admission.key_of(item)
        if (stored := self._admission.stored(key)) is not None:
            self._from_cache(index, stored, item, duplicate=False)
            return True, key
        return False, key

    def duplicates(self, key: bytes | None, index: int, result: Result) -> None:
        """The request that others waited for is done: answer them, or send them now."""
        waiting = self._admission.done(key, index, result)
        stored = StoredAnswer.of(result) if waiting else None
        for other in waiting:
            if stored is not None:  # the same request: the same answer
                request = pickle.loads(self._ledger.remove(other).payload)
                self._from_cache(other, stored, request, duplicate=True)
            else:  # it failed without an answer: each is sent on its own
                self._ledger.count(self._ledger.entries[other])
                self._schedule.now(other)

    def _from_cache(self, index: int, stored: StoredAnswer, request: Any, duplicate: bool) -> None:
        """Finish `index` with a stored answer (read as its first answer was read)."""
        self._summary.add_cached(stored.cost_usd, duplicate)
        result = stored.result(index, request, cost_usd=0.0)
        self._answer_with(index, replace(result, cached=True))

    def _answer_with(self, index: int, result: Result) -> None:
        """Finish `index` with an answer it already has, through a worker's `postprocess`."""
        result = replace(result, index=index)
        if not self._admission.replays or result.error is not None:
            self._finish(index, None, result)
            return
        self._ledger.add(index, Entry(Task.pickle_payload(result), 0, replay=True), counted=False)
        self._schedule.now(index)
