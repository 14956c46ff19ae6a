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
- a burst of timeouts, 429s or 503s halves the limit at once: `OVERLOAD_SHARE` of the
  last `OVERLOAD_SAMPLE` attempts or more (a server whose queue is full turns most
  requests away). One now and then is not load (a flaky replica, a request that is too
  long), and neither is any other error: they leave the limit alone;
- after a halving, the limit doubles each window back up to where it was (TCP's slow
  start up to its threshold) while the latency shows no queue, so a burst that passed
  costs seconds, not minutes;
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
from collections import deque
from collections.abc import Callable

from .limits import BURST_WINDOW_S

__all__ = [
    "INITIAL_LIMIT",
    "OVERLOAD_SAMPLE",
    "OVERLOAD_SHARE",
    "REPROBE_S",
    "SLACK_S",
    "TOLERANCE",
    "GradientLimit",
]

# Where the search starts: low enough for a small server, doubled every round trip.
INITIAL_LIMIT = 8
# How much above the baseline the window's median latency may be before the limit shrinks.
TOLERANCE = 1.25
# Latency above the baseline that is never taken for queueing: the client's own share.
SLACK_S = 0.01
# Seconds between two measurements of the baseline.
REPROBE_S = 10.0
_MIN_WINDOW = 32  # answers per window at least, so that a median means something...
_SHORT_WINDOW = 6  # ... unless it has lasted `_LONG_WINDOW` round trips (a low limit), or
_LONG_WINDOW = 4  # the limit grows back after a halving: then it must react quickly
# The overload signals (timeouts, 429s, 503s) among the last attempts that make a burst.
OVERLOAD_SAMPLE = 20
OVERLOAD_SHARE = 0.2


class GradientLimit:
    """The concurrency limit of one endpoint, moved by each answer's latency.

    Example:

    >>> limit = GradientLimit(maximum=1024)
    >>> limit.allowed  # it starts small, and grows while latency stays low
    8
    >>> limit.on_answer(latency_s=0.12, in_flight=8)

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
        self._window_started = 0.0  # monotonic: its first answer
        self._busiest = 0  # most requests in flight seen in this window
        self._last_halving = -BURST_WINDOW_S
        self._reprobe_at = clock() + REPROBE_S
        self._probing: float | None = None  # the limit to return to after a probe
        # Answers to requests sent before this (monotonic) are not counted: they were sent
        # under another limit (or before a probe, and they queued).
        self._changed_at = -math.inf
        self._recent: deque[bool] = deque(maxlen=OVERLOAD_SAMPLE)  # attempts: overloaded?
        self._recover_to = 0.0  # grow back here by doubling (the limit before a halving)

    def __repr__(self) -> str:
        return f"<GradientLimit {self.allowed}/{self.maximum} baseline={self.baseline}>"

    @property
    def allowed(self) -> int:
        """Requests that may be in flight to the endpoint now."""
        limit = self.limit / 2 if self._probing is not None else self.limit
        return max(1, int(limit))

    def on_answer(self, latency_s: float, in_flight: int) -> None:
        """An answer came back after `latency_s`, with `in_flight` requests still out."""
        self._recent.append(False)
        if self._clock() - latency_s < self._changed_at:
            return
        if not self._window:
            self._window_started = self._clock()
        self._window.append(latency_s)
        self._busiest = max(self._busiest, in_flight + 1)
        if len(self._window) >= max(self._window_length(latency_s), self.allowed):
            self._end_window()

    def _window_length(self, latency_s: float) -> int:
        """Answers that end a window: `_MIN_WINDOW`, fewer once it has lasted a few round
        trips (at a low limit, 32 answers would be 32 round trips) or while it recovers."""
        lasted = self._clock() - self._window_started
        if self.limit < self._recover_to or lasted >= _LONG_WINDOW * latency_s:
            return _SHORT_WINDOW
        return _MIN_WINDOW

    def on_error(self) -> None:
        """An attempt failed for another reason than load: no latency to learn from."""
        self._recent.append(False)

    def on_overload(self) -> None:
        """A timeout, a 429 or a 503: in a burst of them, halve the limit (once a burst)."""
        self._recent.append(True)
        now = self._clock()
        burst = sum(self._recent) >= OVERLOAD_SHARE * OVERLOAD_SAMPLE
        if burst and now - self._last_halving >= BURST_WINDOW_S:
            self._last_halving = self._changed_at = now
            self._recover_to = max(self._recover_to, self.limit)
            self.limit = max(1.0, self.limit / 2)
            if self._probing is not None:  # the limit the probe returns to, halved too
                self._probing = max(1.0, self._probing / 2)
            self._slow_start = False

    def _grown(self) -> float:
        """The next limit up: doubled (in slow start, or back to where a halving left
        from), else by its square root."""
        if self.limit < self._recover_to:
            return min(self._recover_to, self.limit * 2)
        self._recover_to = 0.0
        return self.limit * 2 if self._slow_start else self.limit + math.sqrt(self.limit)

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
            self._slow_start, self._recover_to = False, 0.0
        elif busiest >= self.limit / 2:  # it was used: it may grow
            self.limit = min(float(self.maximum), self._grown())
        if self.limit != before:
            # The answers still out were sent under the old limit: they would judge it
            # again (in slow start, doubling twice past the point where queueing began).
            self._changed_at = self._clock()
        if self._clock() >= self._reprobe_at:
            self._probing, self._changed_at = self.limit, self._clock()
