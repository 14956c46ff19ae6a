"""`metrics_port`: a real Prometheus scrape of a command-line run, parsed by
`prometheus_client`'s parser, with the names the OpenTelemetry translation gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch_stream_openai import BatchPool
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import REPO_ROOT, TEST_API_KEY, closed_port, wait_until

pytestmark = pytest.mark.timeout(90)

DASHBOARD = REPO_ROOT / "dashboards" / "grafana.json"


def scrape(port: int) -> dict[str, Any]:
    """The metric families served at `port` ({} while nothing answers there)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
            text = page.read().decode()
    except OSError:
        return {}
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_a_command_line_run_serves_its_metrics_for_prometheus(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake.configure(latency=0.3)  # 40 requests at 4 in flight: 3 s to scrape in
    source = tmp_path / "in.jsonl"
    users = ["again [[status=503 times=1]]"] + [f"q{i}" for i in range(39)]  # one retry
    lines = (
        {"custom_id": f"m{i}", "system_prompt": "s", "user_prompt": u} for i, u in enumerate(users)
    )
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    port = closed_port()
    command = [sys.executable, "-m", "batch_stream_openai.cli", "run", str(source)]
    command += ["-o", str(tmp_path / "out.jsonl"), "--base-url", fake.base_url]
    command += ["--max-concurrency", "4", "--workers", "1", "--metrics-port", str(port)]
    env = dict(os.environ, OPENAI_API_KEY=TEST_API_KEY)
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    families: dict[str, Any] = {}
    endpoints: list[Any] = []  # the endpoint gauge's samples, from a scrape mid-run

    def served() -> bool:
        families.update(scrape(port))
        if not endpoints and "batch_stream_openai_endpoint_in_flight" in families:
            endpoints.extend(families["batch_stream_openai_endpoint_in_flight"].samples)
        retries = families.get("batch_stream_openai_retries")
        return retries is not None and retries.samples[0].value == 1  # all kinds are in

    try:
        wait_until(served, timeout=30, what="the run's metrics, its retry included")
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    duration = families["gen_ai_client_operation_duration_seconds"]
    buckets = [s for s in duration.samples if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in buckets} >= {"0.01", "81.92", "+Inf"}
    for sample in buckets:
        assert sample.labels["gen_ai_operation_name"] == "chat"
        assert sample.labels["server_address"] == "127.0.0.1"
    assert "gen_ai_client_token_usage" in families
    assert [s.labels["server_port"] for s in endpoints] == [fake.base_url.split(":")[2][:-3]]
    assert {s.value for s in families["batch_stream_openai_endpoint_set_aside"].samples} <= {0}
    assert families["batch_stream_openai_results"].type == "counter"
    # The shipped Grafana dashboard asks only for series a run serves (hedges and Batch API
    # jobs: when a run has them).
    samples = [sample for family in families.values() for sample in family.samples]
    served = {sample.name for sample in samples} | {k for s in samples for k in s.labels}
    asked = set(re.findall(r"\b(?:gen_ai|batch_stream_openai)_\w+", DASHBOARD.read_text()))
    later = {"batch_stream_openai_hedges_total", "batch_stream_openai_batch_jobs"}
    assert asked - later <= served, sorted(asked - later - served)


PARITY = """
import sys
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest
from batch_stream_openai import OpenAIRequest, run_batch

if __name__ == "__main__":
    url, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    users = ["a", "b", "c [[status=503 times=1]]", "d [[status=400]]"]
    requests = [OpenAIRequest("s", u, model="gpt-4o-mini") for u in users]
    run_batch(requests, base_url=url, api_key=key, workers=1, metrics_port=port)
    print(generate_latest(REGISTRY).decode())
"""


def _points(family: Any) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    """A family's samples, with the labels the exporter writes empty left out (Prometheus
    reads an empty label as an absent one)."""
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if v), round(s.value, 12))
        for s in family.samples
    }


def test_metrics_port_serves_what_opentelemetrys_prometheus_exporter_would(
    fake: FakeOpenAIServer,
) -> None:
    """The same batch, recorded by the OpenTelemetry SDK into its Prometheus exporter and
    by `metrics_port`'s own tally: both in the one registry, every family twice, the same."""
    command = [sys.executable, "-c", PARITY, fake.base_url, TEST_API_KEY, str(closed_port())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(done.stdout):
        if family.name.startswith(("gen_ai_", "batch_stream_openai_")):
            families.setdefault(family.name, []).append(family)
    assert {"gen_ai_client_operation_duration_seconds", "batch_stream_openai_results"} <= set(
        families
    )
    for name, pair in families.items():
        served = [family for family in pair if family.samples]
        if served:  # the gauges of a batch that ended have none
            assert len(served) == 2, name
            assert served[0].type == served[1].type, name
            assert _points(served[0]) == _points(served[1]), name


@pytest.mark.fast
def test_a_port_that_is_no_port_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="metrics_port must be a TCP port"):
        BatchPool(metrics_port=70000, api_key=TEST_API_KEY)
