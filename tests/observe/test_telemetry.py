"""OpenTelemetry: the GenAI metrics and spans a batch records, with the real SDK's
in-memory reader and exporter, against the bundled server (in a process of its own: the
global providers can be set once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from batch_stream_openai._observe.content import CAPTURE
from batch_stream_openai._observe.tally import DURATION_BUCKETS, TOKEN_BUCKETS
from batch_stream_openai._observe.telemetry import Telemetry
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY

pytestmark = pytest.mark.timeout(90)

RUN = """
import json
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from batch_stream_openai import OpenAIRequest, stream_batch

if __name__ == "__main__":
    reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    # Set after the library's import: providers are looked up when a batch starts.
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    trace.set_tracer_provider(tracing)
    users = {users!r}
    requests = [OpenAIRequest("s", u, model="gpt-4o-mini", api="chat") for u in users]
    with trace.get_tracer("pipeline").start_as_current_span("pipeline step"):
        results = dict(stream_batch(requests, base_url={url!r}, api_key={key!r},
                                    max_concurrency=4, workers=1, return_results=True))
    points = []
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points.append({{"name": metric.name, "unit": metric.unit,
                                   "attributes": dict(point.attributes),
                                   **json.loads(point.to_json())}})
    spans = [json.loads(span.to_json()) for span in exporter.get_finished_spans()]
    usage = [[r.usage.input_tokens, r.usage.output_tokens] for r in results.values() if r.usage]
    print(json.dumps({{"points": points, "spans": spans, "usage": usage}}))
"""
USERS = [
    "fine 0",
    "fine 1",
    "fine 2",
    "fine 3",
    "again [[status=503 times=1]]",
    "bad [[status=400]]",
]


def record(fake: FakeOpenAIServer, **env: str) -> dict[str, Any]:
    """What a batch of `USERS` recorded, in a process of its own with `env` set."""
    fake.reset()
    code = textwrap.dedent(RUN.format(users=USERS, url=fake.base_url, key=TEST_API_KEY))
    environment = {key: value for key, value in os.environ.items() if key != CAPTURE} | env
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=environment,
    )
    data: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    data["attempts"] = fake.stats().requests
    data["port"] = int(fake.base_url.split(":")[2].split("/")[0])
    return data


@pytest.fixture(scope="module")
def recorded(server: FakeOpenAIServer) -> dict[str, Any]:
    """What a batch of `USERS` recorded (the server saw 7 attempts: the 503 went twice)."""
    return record(server)


def points(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [point for point in data["points"] if point["name"] == name]


def test_each_attempt_is_a_duration_point_with_the_spec_names(recorded: dict[str, Any]) -> None:
    durations = points(recorded, "gen_ai.client.operation.duration")
    assert {point["unit"] for point in durations} == {"s"}
    assert sum(point["count"] for point in durations) == recorded["attempts"] == 7
    for point in durations:
        assert tuple(point["explicit_bounds"]) == DURATION_BUCKETS
        attributes = point["attributes"]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == recorded["port"]
    failed = {p["attributes"].get("error.type"): p["count"] for p in durations}
    assert failed == {None: 5, "503": 1, "400": 1}


def test_token_usage_sums_to_what_the_server_sent(recorded: dict[str, Any]) -> None:
    tokens = points(recorded, "gen_ai.client.token.usage")
    assert {point["unit"] for point in tokens} == {"{token}"}
    assert all(tuple(point["explicit_bounds"]) == TOKEN_BUCKETS for point in tokens)
    by_type = {p["attributes"]["gen_ai.token.type"]: p["sum"] for p in tokens}
    assert by_type == {
        "input": sum(u[0] for u in recorded["usage"]),
        "output": sum(u[1] for u in recorded["usage"]),
    }


def test_the_library_counts_results_by_outcome_and_its_retries(recorded: dict[str, Any]) -> None:
    results = {
        p["attributes"]["batch_stream_openai.outcome"]: p["value"]
        for p in points(recorded, "batch_stream_openai.results")
    }
    assert results == {"ok": 5, "APIError": 1}
    assert [p["value"] for p in points(recorded, "batch_stream_openai.retries")] == [1]


def test_requests_are_client_spans_in_the_batch_span_in_the_callers(
    recorded: dict[str, Any],
) -> None:
    spans = {span["name"]: span for span in recorded["spans"]}
    caller, batch = spans["pipeline step"], spans["batch_stream_openai.batch"]
    assert batch["parent_id"] == caller["context"]["span_id"]
    assert batch["attributes"]["batch_stream_openai.batch.size"] == 6
    requests = [span for span in recorded["spans"] if span["name"] == "chat gpt-4o-mini"]
    assert len(requests) == 6
    assert all(span["parent_id"] == batch["context"]["span_id"] for span in requests)
    assert all(span["kind"] == "SpanKind.CLIENT" for span in requests)
    by_attempts = sorted(len(span["events"]) for span in requests)
    assert by_attempts == [1, 1, 1, 1, 1, 2]  # the 503 went twice
    failed = [span for span in requests if span["status"]["status_code"] == "ERROR"]
    assert [span["attributes"]["error.type"] for span in failed] == ["400"]
    ok = [span for span in requests if span["status"]["status_code"] != "ERROR"]
    assert all(span["attributes"]["gen_ai.usage.output_tokens"] > 0 for span in ok)
    assert all(span["attributes"]["gen_ai.response.finish_reasons"] == ["stop"] for span in ok)
    # Prompts and answers are not recorded.
    # (Not the whole span's JSON: "bad" is hex, and ids are hex.)
    recorded_text = [json.dumps([span["attributes"], span["events"]]) for span in requests]
    assert not any(user in text for user in USERS for text in recorded_text)


def test_prompts_and_answers_are_on_the_spans_when_the_application_opts_in(
    server: FakeOpenAIServer,
) -> None:
    recorded = record(server, **{CAPTURE: "true"})
    spans = [span for span in recorded["spans"] if span["name"] == "chat gpt-4o-mini"]
    by_user = {}
    for span in spans:
        sent = json.loads(span["attributes"]["gen_ai.input.messages"])
        assert [message["role"] for message in sent] == ["system", "user"]
        by_user[sent[1]["parts"][0]["content"]] = span["attributes"]["gen_ai.output.messages"]
    assert set(by_user) == set(USERS)
    answer = json.loads(by_user["fine 0"])[0]
    assert answer["role"] == "assistant" and answer["finish_reason"] == "stop"
    assert answer["parts"][0]["content"].startswith("echo: fine 0")
    assert by_user["bad [[status=400]]"] == "[]"


def test_nothing_is_imported_without_opentelemetry_in_the_application(
    fake: FakeOpenAIServer,
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from batch_stream_openai import OpenAIRequest, run_batch
        if __name__ == "__main__":
            request = OpenAIRequest("s", "q", model="gpt-4o-mini", api="chat")
            run_batch([request], base_url={fake.base_url!r}, api_key={TEST_API_KEY!r})
            print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split()[-1] == "[]"


@pytest.mark.fast
def test_no_provider_set_records_nothing() -> None:
    # The OpenTelemetry API's stand-ins before a provider is set are recognised by their
    # class names: if this fails, the installed opentelemetry-api renamed them.
    from opentelemetry import metrics, trace

    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    assert Telemetry.start(lambda: None, dict) is None  # type: ignore[arg-type,return-value]
