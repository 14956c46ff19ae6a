"""Rich results, summaries, progress, request options and raw bodies, end to end."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from batch_stream_openai import (
    APIError,
    OpenAIRequest,
    RawRequest,
    Result,
    run_batch,
    stream_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

pytestmark = pytest.mark.timeout(60)

SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}},
}


def tokens(chars: int) -> int:
    return math.ceil(chars / 4)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_result_fields_match_what_the_server_returned(
    api: str, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [
        OpenAIRequest("sys", "plain", model="gpt-4o-mini", api=api),  # type: ignore[arg-type]
        OpenAIRequest("sys", "json", model="gpt-4o-mini", api=api, response_format=SCHEMA),  # type: ignore[arg-type]
        OpenAIRequest("sys", "[[status=503 times=1]] retried", model="gpt-4o-mini", api=api),  # type: ignore[arg-type]
        OpenAIRequest("sys", "[[status=400]] refused", model="gpt-4o-mini", api=api),  # type: ignore[arg-type]
    ]
    results: list[Result] = run_batch(requests, return_results=True, **pool_options)
    assert [r.index for r in results] == [0, 1, 2, 3]
    plain, structured, retried, refused = results

    assert plain.ok and plain.error is None
    assert plain.text == plain.output == expected_answer("sys", "plain")
    assert plain.parsed is None
    assert plain.attempts == 1 and plain.status_code == 200
    assert plain.latency_s > 0
    assert plain.model == "gpt-4o-mini"
    assert plain.body is not None and plain.response_id == plain.body["id"]
    assert plain.request_id == f"req_{plain.response_id}"
    assert plain.usage is not None
    assert plain.usage.output_tokens == tokens(len(plain.text))
    assert plain.usage.input_tokens > 0

    assert structured.parsed == {"answer": expected_answer("sys", "json")}
    assert retried.ok and retried.attempts == 2
    assert isinstance(refused.error, APIError) and refused.error.status_code == 400
    assert refused.text is None and refused.status_code == 400 and refused.attempts == 1
    assert refused.body is not None
    assert refused.body["error"]["message"] == "Injected fault: HTTP 400"
    assert refused.request_id is not None and refused.request_id.startswith("req_fault_")


def test_summary_counts_the_batch(pool_options: dict[str, Any]) -> None:
    users = ["a", "b", "[[status=503 times=1]] c", "[[status=400]] d", "[[status=404]] e"]
    stream = stream_batch(
        [OpenAIRequest("s", u, model="gpt-4o-mini", api="chat") for u in users], **pool_options
    )
    assert len(list(stream)) == 5
    summary = stream.summary
    assert (summary.ok, summary.failed, summary.retries) == (3, 2, 1)
    assert summary.failed_by_type == {"APIError": 2}
    assert summary.output_tokens > 0 and summary.input_tokens > 0
    assert summary.wall_s > 0 and summary.requests_per_s > 0
    assert "5 requests: 3 ok, 2 failed (APIError: 2), 1 retries" in str(summary)


def test_the_progress_bar_renders_on_stderr(
    pool_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    requests = [OpenAIRequest("s", f"p{i}", model="gpt-4o-mini", api="chat") for i in range(20)]
    run_batch(requests, progress=True, max_cost=5, **pool_options)
    err = capsys.readouterr().err
    assert "20/20" in err
    assert "failed=0" in err and "in_flight=" in err and "tok_s=" in err
    assert re.search(r"usd=0\.\d{4}/5\.00", err)  # spend, against the cap


def test_the_progress_bar_tells_requests_in_flight_from_requests_waiting(
    pool_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    users = [f"p{i}" + (" [[status=503 times=1]]" if i < 3 else "") for i in range(12)]
    requests = [OpenAIRequest("s", u, model="gpt-4o-mini", api="chat") for u in users]
    run_batch(requests, progress=True, rpm=600, **pool_options)  # one request per 0.1 s
    err = capsys.readouterr().err
    # Read, but held back by the rate limit or waiting for a retry: not in flight.
    assert re.search(r"waiting=[1-9]", err), err[-300:]


def test_request_options_reach_the_server(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    options: dict[str, Any] = {
        "temperature": 0.2,
        "max_output_tokens": 50,
        "metadata": {"run": "7"},
        "extra_body": {"user": "alice", "store": False},
    }
    run_batch(
        [
            OpenAIRequest("s", "chat", model="gpt-4o-mini", api="chat", seed=42, **options),
            OpenAIRequest("s", "responses", model="gpt-4o-mini", api="responses", **options),
        ],
        **pool_options,
    )
    bodies = {r.path: r.body for r in fake.requests()}
    chat, responses = bodies["/v1/chat/completions"], bodies["/v1/responses"]
    common = {"temperature": 0.2, "metadata": {"run": "7"}, "user": "alice", "store": False}
    assert common.items() <= chat.items()
    assert common.items() <= responses.items()
    assert chat["max_completion_tokens"] == 50 and chat["seed"] == 42
    assert responses["max_output_tokens"] == 50


def test_raw_requests_are_sent_exactly_as_given(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "raw"}],
        "logprobs": False,
        "n": 1,
    }
    responses_body = {"model": "gpt-4o-mini", "input": "raw too", "instructions": "sys"}
    results = run_batch(
        [
            RawRequest("/v1/chat/completions", body, custom_id="a"),
            RawRequest("/v1/responses", responses_body, custom_id="b"),
        ],
        return_results=True,
        **pool_options,
    )
    assert [r.text for r in results] == [
        expected_answer("", "raw"),
        expected_answer("sys", "raw too"),
    ]
    sent = {r.path: r.body for r in fake.requests()}
    assert sent["/v1/chat/completions"] == body
    assert sent["/v1/responses"] == responses_body
    assert json.dumps(results[0].body)  # the whole answer is there, JSON-ready


@pytest.mark.fast
@pytest.mark.parametrize(
    ("url", "body", "message"),
    [
        ("/v1/completions", {"model": "m"}, "RawRequest.url must be one of"),
        ("/v1/chat/completions", {"messages": []}, r"RawRequest.body\['model'\]"),
        ("/v1/chat/completions", {"model": "m", "stream": True}, "stream"),
    ],
)
def test_bad_raw_requests_are_named(url: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RawRequest(url, body)


@pytest.mark.fast
def test_seed_is_refused_for_the_responses_api() -> None:
    with pytest.raises(ValueError, match="seed is only supported with api='chat'"):
        OpenAIRequest("s", "u", api="responses", seed=1)
