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

    def served() -> bool:
        families.update(scrape(port))
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
    assert families["batch_stream_openai_results"].type == "counter"
    # The shipped Grafana dashboard asks only for series a run serves (hedges and Batch API
    # jobs: when a run has them).
    samples = [sample for family in families.values() for sample in family.samples]
    served = {sample.name for sample in samples} | {k for s in samples for k in s.labels}
    asked = set(re.findall(r"\b(?:gen_ai|batch_stream_openai)_\w+", DASHBOARD.read_text()))
    later = {"batch_stream_openai_hedges_total", "batch_stream_openai_batch_jobs"}
    assert asked - later <= served, sorted(asked - later - served)


@pytest.mark.fast
def test_a_port_that_is_no_port_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="metrics_port must be a TCP port"):
        BatchPool(metrics_port=70000, api_key=TEST_API_KEY)
