"""The OpenTelemetry instruments of an application's `MeterProvider`, made once per provider.

The two histograms are recorded into per attempt (the SDK's histograms have no cheaper
way in); the counters and gauges are observable ones, read from a `Tally` when the
application's reader collects.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from .tally import HISTOGRAMS, METER, OBSERVED, Points, Tally

__all__ = ["Instruments", "instruments_of", "library_version", "set_provider"]


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


class Instruments:
    """The instruments of one meter provider, from the metrics `tally.py` declares.

    Parameters:
        provider: the application's `MeterProvider`.
    """

    def __init__(self, provider: Any) -> None:
        self.tally = Tally(histograms=False)
        meter = provider.get_meter(METER, library_version())
        self.duration, self.tokens = (
            meter.create_histogram(
                metric.name,
                unit=metric.unit,
                description=metric.description,
                explicit_bucket_boundaries_advisory=metric.buckets,
            )
            for metric in HISTOGRAMS
        )
        for metric in OBSERVED:
            assert metric.read is not None
            create = (
                meter.create_observable_counter
                if metric.kind == "counter"
                else meter.create_observable_gauge
            )
            create(metric.name, [self._observer(metric.read)], metric.unit, metric.description)

    def _observer(self, read: Callable[[Tally], Points]) -> Callable[[Any], list[Any]]:
        from opentelemetry.metrics import Observation

        def observe(options: Any) -> list[Any]:
            return [Observation(value, attributes) for value, attributes in read(self.tally)]

        return observe


_made: dict[int, tuple[Any, Instruments]] = {}  # {id(provider): (provider, its instruments)}
_making = threading.Lock()


def instruments_of(provider: Any) -> Instruments:
    """The instruments of `provider`, made on first use."""
    with _making:
        made = _made.get(id(provider))
        if made is None or made[0] is not provider:
            made = _made[id(provider)] = (provider, Instruments(provider))
        return made[1]
