"""How the Batch API route batches and waits: the options of ``mode="batch"``, checked by
`_core/modes.py` for every batch (light: the route itself is imported only in batch mode)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobOptions"]


@dataclass(frozen=True)
class JobOptions:
    """How the route batches and waits (see `BatchPool.stream` for each)."""

    batch_size: int = 50_000
    poll_interval: float = 30.0
    max_retries: int = 5
    deadline: float | None = None  # monotonic
    online_reserve: float | None = None  # seconds kept for the online rest
    online_rate: float = 10.0  # requests per second this pool is expected to do online
