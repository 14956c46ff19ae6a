"""The endpoints requests go to: where their prefix is cached, else the least busy.

A pool sends OpenAI-routed requests to one or more OpenAI-compatible endpoints
(``base_url=[...]``: replicas of a vLLM or SGLang server, say). The `Fleet`, in the
parent, picks the endpoint of every attempt:

- with ``routing="cache_aware"`` (the default), an endpoint that was sent a request
  with the same prefix recently (`_wire/prefixes.py`: it likely holds that prefix in
  its cache), unless it has more than `margin` requests in flight beyond the least
  busy one (as many as the endpoints have on average): then balance wins. Each
  endpoint remembers its last `PREFIXES_PER_ENDPOINT` prefixes (least recently sent
  forgotten first), and forgets them all when it is set aside (it may come back
  with an empty cache);
- else the one with the fewest requests in flight, ties taken in turn (round robin),
  among those with room under their caps (`endpoint_concurrency`, and the limit
  ``max_concurrency="auto"`` finds for each: `concurrency.py`); a new prefix goes there;
- an endpoint that fails `FAILURES_TO_SET_ASIDE` times in a row (it refuses
  connections, times out, or answers 5xx) is set aside for a cool-down, which doubles
  on each failure after it (`COOL_DOWN_S` up to `MAX_COOL_DOWN_S`); what failed there
  is retried on the others at once (`Dispatcher`). When its cool-down ends, one
  request probes it: it rejoins if that succeeds, and is set aside again if not;
- when every endpoint is set aside, all are used anyway: the requests' own retries
  then decide, as with a single endpoint.

With one endpoint and no caps, every attempt goes to it and nothing is tracked but the
counts.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from ..errors import APIConnectionError, APIError, APITimeoutError
from .concurrency import GradientLimit

__all__ = [
    "COOL_DOWN_S",
    "FAILURES_TO_SET_ASIDE",
    "MAX_COOL_DOWN_S",
    "PREFIXES_PER_ENDPOINT",
    "ROUTINGS",
    "Endpoint",
    "Fleet",
    "margin",
]

FAILURES_TO_SET_ASIDE = 3
COOL_DOWN_S = 1.0
MAX_COOL_DOWN_S = 30.0
ROUTINGS = ("cache_aware", "least_loaded")
# Prefixes each endpoint remembers: far more than a GPU server's cache holds (a few
# hundred prefixes of 2,000 tokens), a few hundred kB.
PREFIXES_PER_ENDPOINT = 4096


def margin(mean_in_flight: float) -> float:
    """Requests in flight an endpoint holding the prefix may have beyond the least busy
    one's and still be chosen: as many as the endpoints have on average, at least 4 (a
    prefill saved is worth some queueing, not an endpoint left idle while one is
    twice as busy as the others)."""
    return max(4.0, mean_in_flight)


@dataclass(eq=False)
class Endpoint:
    """One endpoint and what the fleet knows of it.

    Parameters:
        url: its base URL (``http://gpu-1:8000/v1``).
        cap: requests in flight to it at most (`endpoint_concurrency`), or None.
        limit: the concurrency found for it (``max_concurrency="auto"``), or None.
    """

    url: str
    cap: int | None = None
    limit: GradientLimit | None = None
    in_flight: int = 0
    failures: int = 0  # in a row
    set_aside_until: float | None = None  # monotonic; None while it is in use
    probing: bool = False  # its cool-down ended: one request tells whether it is back
    cool_down_s: float = COOL_DOWN_S  # the next cool-down's length
    set_aside: int = 0  # times it was set aside
    # The prefixes sent to it lately (`cache_aware`): least recent first.
    prefixes: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def allowed(self) -> float:
        """Requests it may have in flight now."""
        allowed = math.inf if self.cap is None else self.cap
        if self.limit is not None:
            allowed = min(allowed, self.limit.allowed)
        return 1 if self.probing else allowed


class Fleet:
    """The pool's endpoints: where each attempt goes, and how each endpoint is doing.

    Example:

    >>> fleet = Fleet(["http://a:8000/v1", "http://b:8000/v1"])
    >>> target = fleet.pick()  # an endpoint's number, or None: all are full
    >>> target
    0
    >>> fleet.sent(target)
    >>> fleet.pick()  # the least busy
    1
    >>> fleet.ended(target, latency_s=0.2, error=None)  # True: blame it for a failure
    False
    >>> fleet.sent(fleet.pick(prefix=42), prefix=42)  # to endpoint 1: the least busy
    >>> fleet.pick(prefix=42)  # where prefix 42 went, while the loads are close
    1

    Parameters:
        urls: the endpoints' base URLs (one at least).
        endpoint_concurrency: requests in flight to one endpoint at most (None: no cap).
        auto_cap: ``max_concurrency="auto"``: find each endpoint's limit, at most this
            (None: fixed concurrency).
        clock: monotonic seconds (injectable for tests).
        routing: ``"cache_aware"`` (a prefix goes where it went lately) or
            ``"least_loaded"``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        endpoint_concurrency: int | None = None,
        auto_cap: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        routing: str = "cache_aware",
    ) -> None:
        self.endpoints = [
            Endpoint(
                url,
                endpoint_concurrency,
                GradientLimit(auto_cap, clock) if auto_cap is not None else None,
            )
            for url in urls
        ]
        self.urls = [endpoint.url for endpoint in self.endpoints]
        self._clock = clock
        self._next = 0  # where the round robin goes on
        # One endpoint without caps: always it, nothing to track.
        self._trivial = len(urls) == 1 and endpoint_concurrency is None and auto_cap is None
        self.cache_aware = routing == "cache_aware" and len(urls) > 1

    def __repr__(self) -> str:
        states = ", ".join(f"{e.url}: {e.in_flight}/{e.allowed()}" for e in self.endpoints)
        return f"<Fleet {states}>"

    def capacity(self) -> float:
        """Requests the endpoints allow in flight now, all together (inf: no cap)."""
        if self._trivial:
            return math.inf
        return sum(endpoint.allowed() for endpoint in self._usable(self._clock()))

    def gauges(self) -> dict[str, tuple[int, bool]]:
        """Each endpoint's requests in flight, and whether it is set aside now."""
        return {e.url: (e.in_flight, e.set_aside_until is not None) for e in self.endpoints}

    def has_room(self) -> bool:
        """Whether an endpoint may take one more request now."""
        if self._trivial:
            return True
        return any(e.in_flight < e.allowed() for e in self._usable(self._clock()))

    def pick(self, avoid: Collection[int] = (), prefix: int | None = None) -> int | None:
        """The endpoint for the next attempt (not one of `avoid` if another has room):
        one that was sent `prefix` lately, if it is not too busy, else the least busy;
        None when every endpoint is full."""
        if self._trivial:
            return 0
        if not self.cache_aware:
            prefix = None
        # (in `avoid`, in flight, number) of the least busy, and of the least busy warm one
        least: tuple[bool, int, int] | None = None
        warm: tuple[bool, int, int] | None = None
        count = len(self.endpoints)
        usable = self._usable(self._clock())
        for step in range(count):
            number = (self._next + step) % count
            endpoint = self.endpoints[number]
            if endpoint in usable and endpoint.in_flight < endpoint.allowed():
                key = (number in avoid, endpoint.in_flight, number)
                least = key if least is None or key[:2] < least[:2] else least
                if prefix is not None and prefix in endpoint.prefixes:
                    warm = key if warm is None or key[:2] < warm[:2] else warm
        if least is None or warm is None or warm[0] > least[0]:
            return None if least is None else least[2]
        mean = sum(endpoint.in_flight for endpoint in usable) / len(usable)
        return warm[2] if warm[1] <= least[1] + margin(mean) else least[2]

    def sent(self, target: int, prefix: int | None = None) -> None:
        """An attempt (of a request with `prefix`) was sent to endpoint `target`."""
        endpoint = self.endpoints[target]
        endpoint.in_flight += 1
        self._next = (target + 1) % len(self.endpoints)
        if prefix is not None and self.cache_aware:
            prefixes = endpoint.prefixes
            prefixes[prefix] = None
            prefixes.move_to_end(prefix)
            if len(prefixes) > PREFIXES_PER_ENDPOINT:
                prefixes.popitem(last=False)

    def begin(self) -> None:
        """A batch starts: nothing of an earlier one is in flight any more."""
        for endpoint in self.endpoints:
            endpoint.in_flight = 0

    def withdrawn(self, target: int) -> None:
        """An attempt sent to `target` ended without an answer (cancelled, worker died)."""
        self.endpoints[target].in_flight -= 1

    def ended(self, target: int, latency_s: float, error: Exception | None) -> bool:
        """An attempt sent to `target` ended; True when the endpoint is to blame for its
        failure (it is then worth retrying elsewhere at once)."""
        endpoint = self.endpoints[target]
        endpoint.in_flight -= 1
        # Throttled, or a full queue: too much is sent.
        overloaded = isinstance(error, APIError) and error.status_code in (429, 503)
        if endpoint.limit is not None:
            if error is None:
                endpoint.limit.on_answer(latency_s, endpoint.in_flight)
            elif overloaded or isinstance(error, APITimeoutError):
                endpoint.limit.on_overload()
            else:
                endpoint.limit.on_error()
        if self._trivial or len(self.endpoints) == 1:
            return False
        if not _endpoint_failure(error):
            endpoint.failures, endpoint.probing = 0, False
            endpoint.cool_down_s = COOL_DOWN_S
            return False
        endpoint.failures += 1
        if endpoint.set_aside_until is None and (
            endpoint.probing or endpoint.failures >= FAILURES_TO_SET_ASIDE
        ):
            self._set_aside(endpoint)
        return True

    def _set_aside(self, endpoint: Endpoint) -> None:
        endpoint.set_aside_until = self._clock() + endpoint.cool_down_s
        endpoint.cool_down_s = min(MAX_COOL_DOWN_S, endpoint.cool_down_s * 2)
        endpoint.probing = False
        endpoint.set_aside += 1
        endpoint.prefixes.clear()  # it may come back with an empty cache

    def _usable(self, now: float) -> list[Endpoint]:
        """The endpoints to send to: those not set aside, and those whose cool-down
        ended (one probe each); all of them when every one is set aside."""
        usable = []
        for endpoint in self.endpoints:
            until = endpoint.set_aside_until
            if until is not None and now >= until:
                endpoint.set_aside_until, endpoint.probing = None, True
                until = None
            if until is None and not (endpoint.probing and endpoint.in_flight):
                usable.append(endpoint)
        return usable or [e for e in self.endpoints if not e.probing or not e.in_flight]


def _endpoint_failure(error: Exception | None) -> bool:
    """A failure that says the endpoint is unwell: no connection, no answer, or a 5xx."""
    if isinstance(error, APIConnectionError):  # refused, reset, timed out
        return True
    return isinstance(error, APIError) and error.status_code >= 500
