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

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["HEDGE_AFTER_P50", "HEDGE_AFTER_P95", "HedgeState", "Hedging"]

# A request still running after this many times the p95 latency is hedged...
HEDGE_AFTER_P95 = 1.5
# ...and after this many times the median.
HEDGE_AFTER_P50 = 3.0
# Whether attempt ``(index, number)`` still runs (None: it ended) and may be hedged.
HedgeState = Callable[[int, int], "bool | None"]
# Answers needed before the percentiles mean something; and how many are kept.
_MIN_SAMPLES = 20
_SAMPLES = 512


class Hedging:
    """Which running requests get a duplicate, and how many may.

    Example:

    >>> hedging = Hedging(fraction=0.5)
    >>> for latency in [0.1] * 20:
    ...     hedging.answered(latency)
    >>> hedging.started(index=7, attempt=1, now=0.0)
    >>> def state(index, attempt):  # may it be hedged? (None: it no longer runs)
    ...     return True
    >>> list(hedging.due(now=5.0, tail=False, read=100, state=state))
    [(0.0, 7, 1)]
    >>> hedging.sent_one()  # or hedging.put_back(item) when a budget holds it

    Parameters:
        fraction: hedges allowed, as a share of the requests read.
    """

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self._sent = 0  # hedges sent
        # The attempts running, oldest first: [(sent at, index, attempt)]; those that
        # ended are dropped when met at the front (and swept out when they pile up).
        self._running: deque[tuple[float, int, int]] = deque()
        self._kept = _SAMPLES  # running attempts after the last sweep (at least this)
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._new = 0  # answers since the percentiles were computed
        self._p50 = 0.0
        self._p95: float | None = None

    def __repr__(self) -> str:
        return f"<Hedging sent={self._sent} p95={self._p95}>"

    @property
    def sent(self) -> int:
        """Hedges sent so far."""
        return self._sent

    def started(self, index: int, attempt: int, now: float) -> None:
        """Attempt `attempt` of request `index` was sent at `now`."""
        self._running.append((now, index, attempt))

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

    def wait(self, now: float, tail: bool, read: int) -> float:
        """Seconds until the oldest running attempt is due a hedge (inf: none is, or
        none may be sent)."""
        threshold = self.threshold(tail)
        if threshold is None or not self._running or not self.allowed(read):
            return math.inf
        return self._running[0][0] + threshold - now

    def due(
        self, now: float, tail: bool, read: int, state: HedgeState
    ) -> Iterator[tuple[float, int, int]]:
        """The attempts to hedge now, ``(sent at, index, attempt)``, oldest first, while the
        fraction of the `read` requests allows; `tail`: see `threshold`; `state`: whether
        an attempt still runs and may be hedged. One taken from here is not offered
        again unless put back."""
        threshold = self.threshold(tail)
        running = self._running
        while running:
            sent_at, index, number = item = running[0]
            hedgeable = state(index, number)
            if hedgeable is None:
                running.popleft()  # it ended
                continue
            if threshold is None or now - sent_at < threshold or not self.allowed(read):
                if len(running) > 2 * self._kept:  # ended ones pile up behind it
                    self._running = deque(i for i in running if state(i[1], i[2]) is not None)
                    self._kept = max(_SAMPLES, len(self._running))
                return
            running.popleft()
            if hedgeable:
                yield item

    def put_back(self, item: tuple[float, int, int]) -> None:
        """A due attempt (as `due` gave it) that a budget held back: offered first again."""
        self._running.appendleft(item)

    def sent_one(self) -> None:
        """A hedge was sent."""
        self._sent += 1

    def allowed(self, read: int) -> bool:
        """Whether one more hedge fits in `fraction` of the `read` requests."""
        return self._sent + 1 <= self.fraction * read
