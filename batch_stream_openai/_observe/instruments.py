"""The OpenTelemetry instruments the library records into, made once per provider."""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DURATION_BUCKETS",
    "METER",
    "TOKEN_BUCKETS",
    "Instruments",
    "State",
    "instruments_of",
    "library_version",
    "set_provider",
]

METER = "batch_stream_openai"
# The GenAI semantic conventions' explicit bucket boundaries.
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
DURATION_BUCKETS += (5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = tuple(4**power for power in range(14))  # 1, 4, 16, ... 67108864


def library_version() -> str:
    """This library's release (the meter's and the tracer's version)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("batch-stream-openai")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


def set_provider(module: str, getter: str, stand_in: str) -> Any:
    """The global provider of OpenTelemetry's `module` (``opentelemetry.metrics`` or
    ``.trace``) if the application set one, else None. A module the application never
    imported is not imported here: then it set nothing."""
    api = sys.modules.get(module)
    if api is None:
        return None
    provider = getattr(api, getter)()
    # The API's stand-in until a provider is set: its class name is the contract here
    # (tests/observe/test_telemetry.py checks it against the installed API).
    return None if type(provider).__name__ == stand_in else provider


@dataclass(frozen=True)
class State:
    """A running batch's gauges, read when the metrics are collected."""

    in_flight: int
    waiting: int
    limit: float
    jobs: Mapping[str, int]


class Instruments:
    """The instruments of one meter provider (see `telemetry.py` for what each holds).

    Parameters:
        provider: the application's `MeterProvider`.
    """

    def __init__(self, provider: Any) -> None:
        meter = provider.get_meter(METER, library_version())
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.results = meter.create_counter(
            f"{METER}.results", unit="{request}", description="Requests done, by outcome"
        )
        self.retries = meter.create_counter(
            f"{METER}.retries", unit="{attempt}", description="Attempts after a request's first"
        )
        self.hedges = meter.create_counter(
            f"{METER}.hedges", unit="{request}", description="Requests duplicated (hedged)"
        )
        self.cost = meter.create_counter(f"{METER}.cost", unit="USD", description="Spend")
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()  # the batches running
        gauges: list[tuple[str, str, Callable[[State], float]]] = [
            ("requests.in_flight", "Requests sent, not yet answered", lambda s: s.in_flight),
            ("requests.waiting", "Requests read, waiting to be sent", lambda s: s.waiting),
            ("concurrency.limit", "The concurrency limit now", lambda s: s.limit),
        ]
        for name, description, read in gauges:
            meter.create_observable_gauge(
                f"{METER}.{name}",
                callbacks=[self._observer(read)],
                unit="{request}",
                description=description,
            )
        meter.create_observable_gauge(
            f"{METER}.batch_jobs", callbacks=[self._jobs], unit="{job}", description="By state"
        )

    def _states(self) -> list[State]:
        return [live.state() for live in list(self.live)]

    def _observer(self, read: Callable[[State], float]) -> Callable[[Any], list[Any]]:
        def observe(options: Any) -> list[Any]:
            from opentelemetry.metrics import Observation

            states = self._states()
            return [Observation(sum(read(state) for state in states))] if states else []

        return observe

    def _jobs(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        jobs: dict[str, int] = {}
        for state in self._states():
            for name, count in state.jobs.items():
                jobs[name] = jobs.get(name, 0) + count
        return [Observation(count, {"state": name}) for name, count in jobs.items()]


_made: dict[int, tuple[Any, Instruments]] = {}  # {id(provider): (provider, its instruments)}
_making = threading.Lock()


def instruments_of(provider: Any) -> Instruments:
    """The instruments of `provider`, made on first use."""
    with _making:
        made = _made.get(id(provider))
        if made is None or made[0] is not provider:
            made = _made[id(provider)] = (provider, Instruments(provider))
        return made[1]
