"""`metrics_port`: the library's metrics served for Prometheus, on 127.0.0.1.

`prometheus_client` serves them (its HTTP server, its text format) from one `Tally` per
process, which every batch of every pool with a `metrics_port` adds to. The names are
those OpenTelemetry's Prometheus exporter gives the same metrics
(``gen_ai_client_operation_duration_seconds_bucket``, ``batch_stream_openai_results_total``
...), so a GenAI dashboard made for them works unchanged, at a fraction of the SDK's cost
per request (the tally adds numbers; nothing is cleaned or hashed per request).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .instruments import library_version
from .tally import HISTOGRAMS, METER, OBSERVED, Metric, Tally

__all__ = ["prometheus_name", "serve_metrics"]

_lock = threading.Lock()
_tally: Tally | None = None
_ports: set[int] = set()
_UNITS = {"s": "seconds", "USD": "USD"}  # units OpenTelemetry's translation spells out


def prometheus_name(metric: Metric) -> str:
    """The name OpenTelemetry's Prometheus exporter gives `metric` (its unit as a suffix,
    none for ``{...}`` units; a counter's samples add ``_total``).

    >>> prometheus_name(HISTOGRAMS[0])
    'gen_ai_client_operation_duration_seconds'
    """
    name = _sanitized(metric.name)
    unit = _UNITS.get(metric.unit)
    return f"{name}_{unit}" if unit else name


def serve_metrics(port: int) -> Tally:
    """The process's tally, served at http://127.0.0.1:`port`/metrics.

    Raises `ImportError` naming the extra without `prometheus_client`, and `OSError` when
    the port is taken by something else.
    """
    global _tally
    with _lock:
        try:
            from prometheus_client import REGISTRY, start_http_server
        except ImportError:
            raise ImportError(
                "metrics_port needs prometheus_client: pip install 'batch-stream-openai[otel]'"
            ) from None
        if _tally is None:
            _tally = Tally(histograms=True)
            REGISTRY.register(_Collector(_tally))
        if port not in _ports:
            start_http_server(port, addr="127.0.0.1")
            _ports.add(port)
        return _tally


class _Collector:
    """What a scrape reads: the tally's histograms, counters and gauges, as
    `prometheus_client` metric families."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        version = library_version()
        self._scope = {
            "otel_scope_name": METER,
            "otel_scope_schema_url": "",
            "otel_scope_version": version,
        }

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric as Family

        tally = self._tally
        with tally.lock:  # a consistent copy
            tables = [
                [(k, h.cumulative(), h.total) for k, h in t.items()]
                for t in (tally.durations, tally.tokens)
            ]
        for metric, series in zip(HISTOGRAMS, tables, strict=True):
            name = prometheus_name(metric)
            family = Family(name, metric.description, "histogram")
            bounds = [*(_bound(b) for b in metric.buckets), "+Inf"]
            for key, cumulative, total in series:
                if not cumulative[-1]:  # made for an attribute set, never added to
                    continue
                labels = self._labels(key)
                for bound, count in zip(bounds, cumulative, strict=True):
                    family.add_sample(f"{name}_bucket", {**labels, "le": bound}, count)
                family.add_sample(f"{name}_count", labels, cumulative[-1])
                family.add_sample(f"{name}_sum", labels, total)
            yield family
        for metric in OBSERVED:
            assert metric.read is not None
            name = prometheus_name(metric)
            family = Family(name, metric.description, metric.kind)
            sample = f"{name}_total" if metric.kind == "counter" else name
            for value, point in metric.read(tally):
                family.add_sample(sample, self._labels((point or {}).items()), value)
            yield family

    def _labels(self, attributes: Iterable[tuple[str, Any]]) -> dict[str, str]:
        return {**self._scope, **{_sanitized(key): str(value) for key, value in attributes}}


def _sanitized(name: str) -> str:
    """An OpenTelemetry name as a Prometheus name (``gen_ai.request.model`` ->
    ``gen_ai_request_model``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _bound(bound: float) -> str:
    """A bucket bound as the exporter writes it: ``0.01``, ``16`` (not ``16.0``)."""
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))
