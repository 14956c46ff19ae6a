"""``max_concurrency="auto"``: the concurrency an endpoint sustains, found from latency.

A self-hosted server never says "too many" (no 429): past what it can batch, requests
queue inside it and their latency climbs, until they time out. So the limit is found
the way TCP Vegas and Netflix's gradient limiter find a congestion window, from the
latency itself:

- the *baseline* is the median latency of the first window, which runs at a low limit:
  what the server needs unloaded, for this mix of requests (a median, not the fastest
  answer: on an LLM server, answers of 20 and of 400 tokens differ far more than
  queueing makes them; the lowest of many medians would be as biased);
- each *window* (as many answers as the limit, about one round trip), the window's
  median latency is compared with the baseline: within `TOLERANCE` of it (plus
  `SLACK_S`, so that a fast server is not taken for a queueing one when what varies is
  the client's own work), nothing queues and the limit grows (doubling until the first
  sign of a queue, then by its square root); above it, the limit shrinks in proportion
  (``(baseline * TOLERANCE + SLACK_S) / median``, at most by half);
- a timeout or a burst of 429s halves the limit at once;
- the limit only grows when it was used (the window saw at least half of it in flight),
  and after a change the answers to requests sent before it are not counted;
- every `REPROBE_S` the baseline is measured again, over one window at half the limit
  (BBR's probe of its minimum RTT): what the server needs may change with the prompts;
  when it needs much longer than before, the search starts again (doubling).

With a server that serves K requests at once, the limit settles between K and about
``TOLERANCE * K`` (plus what `SLACK_S` adds): its full throughput, at a median latency
about `TOLERANCE` times the unloaded one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

from .limits import BURST_WINDOW_S

__all__ = ["INITIAL_LIMIT", "REPROBE_S", "SLACK_S", "TOLERANCE", "GradientLimit"]

# Where the search starts: low enough for a small server, doubled every round trip.
INITIAL_LIMIT = 8
# How much above the baseline the window's median latency may be before the limit shrinks.
TOLERANCE = 1.25
# Latency above the baseline that is never taken for queueing: the client's own share.
SLACK_S = 0.01
# Seconds between two measurements of the baseline.
REPROBE_S = 10.0
_MIN_WINDOW = 32  # answers per window at least, so that a median means something


class GradientLimit:
    """The concurrency limit of one endpoint, moved by each answer's latency.

    Example::

        limit = GradientLimit(maximum=1024)
        limit.on_answer(latency_s=0.12, in_flight=30)
        allowed = limit.allowed

    Parameters:
        maximum: the limit never goes above it (``max_concurrency_cap``).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, maximum: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self.limit = float(min(INITIAL_LIMIT, maximum))
        self.baseline: float | None = None
        self._clock = clock
        self._slow_start = True
        self._window: list[float] = []
        self._busiest = 0  # most requests in flight seen in this window
        self._last_halving = -BURST_WINDOW_S
        self._reprobe_at = clock() + REPROBE_S
        self._probing: float | None = None  # the limit to return to after a probe
        self._skip = 0  # answers to ignore: sent before the probe, they queued

    def __repr__(self) -> str:
        return f"<GradientLimit {self.allowed}/{self.maximum} baseline={self.baseline}>"

    @property
    def allowed(self) -> int:
        """Requests that may be in flight to the endpoint now."""
        limit = self.limit / 2 if self._probing is not None else self.limit
        return max(1, int(limit))

    def on_answer(self, latency_s: float, in_flight: int) -> None:
        """An answer came back after `latency_s`, with `in_flight` requests still out."""
        if self._skip:
            self._skip -= 1
            return
        self._window.append(latency_s)
        self._busiest = max(self._busiest, in_flight + 1)
        if len(self._window) >= max(_MIN_WINDOW, self.allowed):
            self._end_window()

    def on_overload(self) -> None:
        """A timeout, or a 429: halve the limit (once per burst)."""
        now = self._clock()
        if now - self._last_halving >= BURST_WINDOW_S:
            self._last_halving = now
            self.limit = max(1.0, self.limit / 2)
            if self._probing is not None:  # the limit the probe returns to, halved too
                self._probing = max(1.0, self._probing / 2)
            self._slow_start = False

    def _end_window(self) -> None:
        busiest, median = self._busiest, max(statistics.median(self._window), 1e-6)
        self._window, self._busiest = [], 0
        if self._probing is not None:  # the window at half the limit: a fresh baseline
            # A server that needs much longer than before is searched again from here.
            self._slow_start = self.baseline is not None and median > TOLERANCE * self.baseline
            self.baseline, self.limit, self._probing = median, self._probing, None
            self._reprobe_at = self._clock() + REPROBE_S
            return
        if self.baseline is None:
            self.baseline = median
        before = self.limit
        gradient = (self.baseline * TOLERANCE + SLACK_S) / median
        if gradient < 1.0:
            self.limit = max(1.0, self.limit * max(0.5, gradient))
            self._slow_start = False
        elif busiest >= self.limit / 2:  # it was used: it may grow
            grown = self.limit * 2 if self._slow_start else self.limit + math.sqrt(self.limit)
            self.limit = min(float(self.maximum), grown)
        if self.limit != before:
            # The answers still out were sent under the old limit: they would judge it
            # again (in slow start, doubling twice past the point where queueing began).
            self._skip = busiest
        if self._clock() >= self._reprobe_at:
            self._probing, self._skip = self.limit, busiest
