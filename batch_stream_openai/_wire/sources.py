"""What an indexed source gives the batch loop in place of the caller's requests.

The Batch API route (`_batchapi/route.py`) is read by the loop (`_core/intake.py`) as
``(index, item)`` pairs, in any order, where an item is a request, an `Answered` (it has
its answer already), or `PENDING` instead of a pair while the source has nothing yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import Result

__all__ = ["PENDING", "Answered"]

# What an indexed source gives in place of a pair when it has nothing yet (the Batch API
# route waiting for a job): the loop waits (its source wakes it) and reads again.
PENDING: Any = object()


@dataclass(frozen=True)
class Answered:
    """An indexed source's item that is already answered (by a Batch API job, the
    response cache, or the journal of an earlier run): it goes through `postprocess`
    like a cache hit, and costs no provider capacity. `paid`: what a cache hit cost when
    it was paid for (the summary's ``saved_usd``)."""

    result: Result
    paid: float | None = None
