"""What a run shows: OpenTelemetry metrics and spans, recorded in the parent.

Read in this order: `telemetry.py` (one batch's metrics and spans), `instruments.py`
(the instruments, made once per provider), `names.py` (the semantic conventions' names),
`prometheus.py` (`metrics_port`: the metrics served for Prometheus).
"""
