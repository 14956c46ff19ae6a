"""The library's own running totals: what the metrics say, added up cheaply per request.

The OpenTelemetry SDK spends about 8 µs on a counter's `add` and 15 µs on a histogram's
`record` (cleaning and hashing the attributes each time), several times the parent's
whole cost of a request. So the counters live here, as plain numbers that the
instruments' callbacks read when the metrics are collected, and so do the histograms that
`metrics_port` serves (`prometheus.py`). A `Tally` belongs to one meter provider or to
the process's Prometheus endpoint; every running batch's `Telemetry` adds to it.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import server_of

__all__ = [
    "DURATION_BUCKETS",
    "HISTOGRAMS",
    "METER",
    "OBSERVED",
    "TOKEN_BUCKETS",
    "Histogram",
    "Labels",
    "Metric",
    "Points",
    "Series",
    "State",
    "Tally",
]

METER = "batch_stream_openai"

# The GenAI semantic conventions' explicit bucket boundaries.
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
DURATION_BUCKETS += (5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = tuple(4**power for power in range(14))  # 1, 4, 16, ... 67108864

Labels = tuple[tuple[str, Any], ...]  # an attribute set, hashable (sorted by name)
Series = tuple["Histogram", "Histogram", "Histogram"]  # durations, input, output tokens


@dataclass(frozen=True)
class State:
    """A running batch's gauges, read when the metrics are collected."""

    in_flight: int = 0
    waiting: int = 0
    limit: float = 0.0
    jobs: Mapping[str, int] = field(default_factory=dict)
    endpoints: Mapping[str, tuple[int, bool]] = field(default_factory=dict)  # url -> (in
    # flight, set aside now)


class Histogram:
    """Counts of values per explicit bucket (bucket i holds bounds[i-1] < value <=
    bounds[i], the last one everything above), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def __repr__(self) -> str:
        return f"<Histogram count={sum(self.counts)} sum={self.total}>"

    def cumulative(self) -> list[int]:
        """The count of values at or below each bound, then of all (Prometheus' ``le``)."""
        running, out = 0, []
        for count in self.counts:
            running += count
            out.append(running)
        return out


class Tally:
    """Running totals of results by outcome, retries, hedges and spend, and (with
    `histograms`) of attempt durations and tokens by attribute set; with the gauges of
    the batches running now (`live`)."""

    def __init__(self, histograms: bool) -> None:
        self.histograms = histograms
        self.lock = threading.Lock()  # held to add, and to read a consistent copy
        self.durations: dict[Labels, Histogram] = {}
        self.tokens: dict[Labels, Histogram] = {}
        self.results: dict[str, int] = {}
        self.retries = 0
        self.hedges = 0
        self.cost_usd = 0.0
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()  # the batches' telemetry

    def series(self, labels: Labels, token_labels: tuple[Labels, Labels]) -> Series:
        """The histograms of an attribute set: its durations', its input and output
        tokens' (made on first use; what `attempt` adds to)."""
        with self.lock:
            return (
                _histogram(self.durations, labels, DURATION_BUCKETS),
                _histogram(self.tokens, token_labels[0], TOKEN_BUCKETS),
                _histogram(self.tokens, token_labels[1], TOKEN_BUCKETS),
            )

    def attempt(self, series: Series, latency_s: float, tokens: tuple[int, int] | None) -> None:
        """One attempt ended: its duration, and its input and output tokens if any."""
        duration, input_tokens, output_tokens = series
        with self.lock:  # the hot path: no call, no lookup that is not needed
            duration.counts[bisect_left(duration.bounds, latency_s)] += 1
            duration.total += latency_s
            if tokens is not None:
                used, answered = tokens
                input_tokens.counts[bisect_left(input_tokens.bounds, used)] += 1
                input_tokens.total += used
                output_tokens.counts[bisect_left(output_tokens.bounds, answered)] += 1
                output_tokens.total += answered

    def finished(self, outcome: str, retries: int, hedged: bool, cost_usd: float) -> None:
        """A request is done: how it ended, its attempts after the first, whether it was
        hedged, what it cost."""
        with self.lock:
            self.results[outcome] = self.results.get(outcome, 0) + 1
            self.retries += retries
            self.hedges += hedged
            self.cost_usd += cost_usd

    def join(self, batch: Any) -> None:
        """A batch started: its gauges (`batch.snapshot`) count from now on."""
        with self.lock:
            self._live.add(batch)

    def leave(self, batch: Any) -> None:
        with self.lock:
            self._live.discard(batch)

    def states(self) -> list[State]:
        """The gauges of the batches running now, as their loops last took them."""
        with self.lock:
            return [batch.snapshot for batch in self._live]


def _histogram(
    histograms: dict[Labels, Histogram], labels: Labels, bounds: tuple[float, ...]
) -> Histogram:
    histogram = histograms.get(labels)
    if histogram is None:
        histogram = histograms[labels] = Histogram(bounds)
    return histogram


Points = list[tuple[float, dict[str, Any] | None]]  # (value, attributes) of a counter or gauge


@dataclass(frozen=True)
class Metric:
    """One metric the library records: its OpenTelemetry name, kind, unit and description;
    `read` gives a counter's or gauge's points from a tally, `buckets` a histogram's."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    unit: str
    description: str
    read: Callable[[Tally], Points] | None = None
    buckets: tuple[float, ...] = ()


def _outcomes(tally: Tally) -> Points:
    with tally.lock:
        results = list(tally.results.items())
    return [(count, {f"{METER}.outcome": outcome}) for outcome, count in results]


def _gauge(read: Callable[[State], float]) -> Callable[[Tally], Points]:
    def points(tally: Tally) -> Points:
        states = tally.states()
        return [(sum(read(state) for state in states), None)] if states else []

    return points


def _endpoint(read: Callable[[tuple[int, bool]], float]) -> Callable[[Tally], Points]:
    """Each endpoint's gauge, by server (two URLs of one server are one series)."""

    def points(tally: Tally) -> Points:
        servers: dict[tuple[str, int], tuple[int, bool]] = {}
        for state in tally.states():
            for url, (in_flight, aside) in state.endpoints.items():
                before, was_aside = servers.get(server_of(url), (0, False))
                servers[server_of(url)] = (before + in_flight, was_aside or aside)
        return [
            (read(gauges), {"server.address": address, "server.port": port})
            for (address, port), gauges in servers.items()
        ]

    return points


def _jobs(tally: Tally) -> Points:
    jobs: Counter[str] = Counter()
    for state in tally.states():
        jobs.update(state.jobs)
    return [(count, {"state": name}) for name, count in jobs.items()]


# Every metric, declared once: the application's instruments and the Prometheus
# endpoint are both made from these.
HISTOGRAMS = (
    Metric(
        "gen_ai.client.operation.duration",
        "histogram",
        "s",
        "GenAI operation duration",
        buckets=DURATION_BUCKETS,
    ),
    Metric(
        "gen_ai.client.token.usage",
        "histogram",
        "{token}",
        "Number of input and output tokens used",
        buckets=TOKEN_BUCKETS,
    ),
)
OBSERVED = (
    Metric(f"{METER}.results", "counter", "{request}", "Requests done, by outcome", _outcomes),
    Metric(
        f"{METER}.retries",
        "counter",
        "{attempt}",
        "Attempts after a request's first",
        lambda tally: [(tally.retries, None)],
    ),
    Metric(
        f"{METER}.hedges",
        "counter",
        "{request}",
        "Requests duplicated (hedged)",
        lambda tally: [(tally.hedges, None)],
    ),
    Metric(f"{METER}.cost", "counter", "USD", "Spend", lambda tally: [(tally.cost_usd, None)]),
    Metric(
        f"{METER}.requests.in_flight",
        "gauge",
        "{request}",
        "Requests sent, not yet answered",
        _gauge(lambda state: state.in_flight),
    ),
    Metric(
        f"{METER}.requests.waiting",
        "gauge",
        "{request}",
        "Requests read, waiting to be sent",
        _gauge(lambda state: state.waiting),
    ),
    Metric(
        f"{METER}.concurrency.limit",
        "gauge",
        "{request}",
        "The concurrency limit now",
        _gauge(lambda state: state.limit),
    ),
    Metric(f"{METER}.batch_jobs", "gauge", "{job}", "Batch API jobs by state", _jobs),
    Metric(
        f"{METER}.endpoint.in_flight",
        "gauge",
        "{request}",
        "Requests in flight to each endpoint",
        _endpoint(lambda gauges: gauges[0]),
    ),
    Metric(
        f"{METER}.endpoint.set_aside",
        "gauge",
        "{endpoint}",
        "1 while an endpoint is set aside after failures",
        _endpoint(lambda gauges: int(gauges[1])),
    ),
)
