"""Hedged stragglers: a request running far longer than most gets a duplicate.

A batch waits for its slowest request. When one runs past `HEDGE_AFTER_P95` times the
p95 latency of the batch's answers so far (once the input is exhausted and slots stand
idle, past the p95 itself), and past `HEDGE_AFTER_P50` times their median either way
(noise on a server whose answers all take about as long is no straggler), a duplicate
is sent to another worker and endpoint; the first answer wins and the other copy is
cancelled (`Dispatcher`). Hedges are requests like any other: they take a concurrency
slot, pass the rate budget, reserve their cost under ``max_cost``, and they never
exceed `fraction` of the requests read.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterator, Mapping

from .._core.ledger import Entry

__all__ = ["HEDGE_AFTER_P50", "HEDGE_AFTER_P95", "Hedging"]

# A request still running after this many times the p95 latency is hedged...
HEDGE_AFTER_P95 = 1.5
# ...and after this many times the median.
HEDGE_AFTER_P50 = 3.0
# Answers needed before the percentiles mean something; and how many are kept.
_MIN_SAMPLES = 20
_SAMPLES = 512


class Hedging:
    """Which running requests get a duplicate, and how many may.

    Example::

        hedging = Hedging(fraction=0.02)
        hedging.started(index=7, attempt=1, now=now)
        hedging.answered(latency_s=0.4)
        after = hedging.threshold(tail=False)   # seconds, or None: too few answers yet

    Parameters:
        fraction: hedges allowed, as a share of the requests read.
    """

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.sent = 0  # hedges sent
        # The attempts running, oldest first: [(sent at, index, attempt)]; the
        # dispatcher drops those that ended when it meets them at the front.
        self.running: deque[tuple[float, int, int]] = deque()
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._new = 0  # answers since the percentiles were computed
        self._p50 = 0.0
        self._p95: float | None = None

    def __repr__(self) -> str:
        return f"<Hedging sent={self.sent} p95={self._p95}>"

    def started(self, index: int, attempt: int, now: float) -> None:
        """Attempt `attempt` of request `index` was sent at `now`."""
        self.running.append((now, index, attempt))

    def answered(self, latency_s: float) -> None:
        """An attempt was answered after `latency_s`."""
        self._latencies.append(latency_s)
        self._new += 1
        if len(self._latencies) >= _MIN_SAMPLES and self._new >= _MIN_SAMPLES:
            cuts = statistics.quantiles(self._latencies, n=20)
            self._p50, self._p95, self._new = cuts[9], cuts[18], 0

    def threshold(self, tail: bool) -> float | None:
        """Seconds a request may run before it is hedged (None: not yet known). `tail`:
        the input is exhausted and slots stand idle."""
        if self._p95 is None:
            return None
        p95 = self._p95 if tail else HEDGE_AFTER_P95 * self._p95
        return max(p95, HEDGE_AFTER_P50 * self._p50)

    def due(
        self, entries: Mapping[int, Entry], now: float, tail: bool, read: int
    ) -> Iterator[tuple[float, int, int]]:
        """The attempts of `entries` to hedge now, ``(sent at, index, attempt)``, oldest
        first, while the fraction of the `read` requests allows; `tail`: see
        `threshold`. One taken from here is not offered again unless put back."""
        threshold = self.threshold(tail)
        running = self.running
        while running:
            sent_at, index, number = item = running[0]
            if not _runs(entries, index, number):
                running.popleft()  # it ended
                continue
            if threshold is None or now - sent_at < threshold or not self.allowed(read):
                if len(running) > 2 * len(entries) + _SAMPLES:  # ended ones behind it
                    self.running = deque(i for i in running if _runs(entries, i[1], i[2]))
                return
            running.popleft()
            entry = entries[index]
            if entry.hedge is None and not entry.crashes:  # a suspect runs alone
                yield item

    def allowed(self, read: int) -> bool:
        """Whether one more hedge fits in `fraction` of the `read` requests."""
        return self.sent + 1 <= self.fraction * read


def _runs(entries: Mapping[int, Entry], index: int, number: int) -> bool:
    """Whether attempt `number` of request `index` is still the one running."""
    entry = entries.get(index)
    return entry is not None and entry.running is not None and entry.running.number == number
