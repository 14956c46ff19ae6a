"""`metrics_port`: the library's metrics served for Prometheus, on 127.0.0.1.

Through OpenTelemetry's Prometheus exporter and `prometheus_client`'s HTTP server, so the
names are the OpenTelemetry-to-Prometheus translation's
(``gen_ai_client_operation_duration_seconds_bucket``, ``batch_stream_openai_results_total``
...) and a GenAI dashboard made for them works unchanged. One `MeterProvider` per process,
private to the library (the application's global one, if any, is recorded into too); each
port asked for serves it from then until the process exits.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["serve_metrics"]

_lock = threading.Lock()
_provider: Any = None
_ports: set[int] = set()


def serve_metrics(port: int) -> Any:
    """The library's own `MeterProvider`, served at http://127.0.0.1:`port`/metrics.

    Raises `ImportError` naming the extra without it, and `OSError` when the port is
    taken by something else.
    """
    global _provider
    with _lock:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from prometheus_client import start_http_server
        except ImportError as error:
            raise ImportError(
                f"metrics_port needs OpenTelemetry's Prometheus exporter ({error.name} is "
                "missing): pip install 'batch-stream-openai[otel]'"
            ) from None
        if port not in _ports:
            start_http_server(port, addr="127.0.0.1")
            _ports.add(port)
        if _provider is None:
            _provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
        return _provider
