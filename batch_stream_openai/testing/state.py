"""The fake server's state (child side): counters, records, rate-limit buckets, and the
batch APIs' jobs; only touched from the event loop thread."""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

from .anthropic import MessageBatches
from .batches import BatchJobs
from .capacity import CapacityGate
from .gemini import GeminiBatches
from .prefix_cache import PrefixCache
from .settings import ServerSettings

__all__ = ["MAX_RECORDS", "Bucket", "ServerState"]

MAX_RECORDS = 100_000


class Bucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding one second's worth."""

    def __init__(self) -> None:
        self.level = 0.0
        self.updated = time.monotonic()
        self.per_minute = 0.0

    def _refill(self, per_minute: float) -> float:
        capacity = max(1.0, per_minute / 60)
        now = time.monotonic()
        if per_minute != self.per_minute:  # a new limit starts full
            self.per_minute, self.level = per_minute, capacity
        else:
            self.level = min(capacity, self.level + (now - self.updated) * per_minute / 60)
        self.updated = now
        return capacity

    def take(self, per_minute: float, cost: float) -> float:
        """Take `cost`; return 0, or the seconds until it could be taken (nothing taken)."""
        self._refill(per_minute)
        if self.level >= min(cost, max(1.0, per_minute / 60)):
            self.level -= cost
            return 0.0
        return (min(cost, max(1.0, per_minute / 60)) - self.level) * 60 / per_minute

    def headers(self, kind: str, per_minute: float) -> dict[str, str]:
        capacity = self._refill(per_minute)
        reset = max(0.0, capacity - self.level) * 60 / per_minute
        return {
            f"x-ratelimit-limit-{kind}": str(int(per_minute)),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{kind}": f"{reset * 1000:.0f}ms",
        }


class ServerState:
    """Mutable server state; only touched from the event loop thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.request_bucket = Bucket()
        self.token_bucket = Bucket()
        self.ids = itertools.count(1)
        self.epoch = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_status: dict[int, int] = {}
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.seen: dict[str, int] = {}
        self.jobs: BatchJobs  # set by the app, which answers their lines
        self.message_batches: MessageBatches  # Anthropic's, set by the app too
        self.gemini_batches: GeminiBatches  # Gemini's, set by the app too
        self.gate = CapacityGate()  # the capacity model, when `settings.capacity` is set
        self.prefixes = PrefixCache()  # the prefix cache, when `settings.prefix_cache` is set

    def reset(self) -> None:
        # The epoch keeps requests that started before a reset out of the new counters.
        self.epoch += 1
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_status = {}
        self.records.clear()
        self.seen.clear()
        self.jobs = BatchJobs(self.settings, self.jobs.answer_line)
        self.message_batches = MessageBatches(self.settings, self.jobs.answer_line)
        self.gemini_batches = GeminiBatches(self.settings, self.jobs.answer_line)
        self.gate.reset()
        self.prefixes.clear()
