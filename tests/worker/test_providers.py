"""Providers: request shapes for each API, and the LiteLLM route."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from batch_stream_openai import (
    APIError,
    EmptyResponseError,
    OpenAIRequest,
    ProviderNotInstalledError,
    run_batch,
)
from batch_stream_openai._wire.answers import Reading, answer_text, chat_text, responses_text
from batch_stream_openai._wire.bodies import http_call, responses_text_format
from batch_stream_openai._wire.config import ClientConfig
from batch_stream_openai._worker.providers import Provider
from batch_stream_openai.request import CHAT_ENDPOINT
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer


@pytest.mark.fast
def test_chat_json_schema_converts_to_the_responses_shape() -> None:
    chat_shape = {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
    }
    assert responses_text_format(chat_shape) == {
        "type": "json_schema",
        "name": "n",
        "schema": {"type": "object"},
        "strict": True,
    }
    assert responses_text_format({"type": "json_object"}) == {"type": "json_object"}


@pytest.mark.timeout(90)
def test_non_openai_models_route_through_litellm(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("litellm") is None:  # not imported here: it costs ~5 s
        pytest.skip("the [litellm] extra is not installed")
    # LiteLLM's OpenAI-compatible provider (vLLM) reads its endpoint from the environment,
    # which the worker processes inherit.
    monkeypatch.setenv("HOSTED_VLLM_API_BASE", fake.base_url)
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "sk-vllm-test")
    requests = [OpenAIRequest("s", f"via litellm {i}", model="hosted_vllm/llama") for i in range(3)]
    results = run_batch(requests, api_key="sk-unused-by-this-route")
    assert results == [expected_answer("s", f"via litellm {i}") for i in range(3)]
    bodies = [r.body for r in fake.requests()]
    assert {b["model"] for b in bodies} == {"llama"}
    assert all(r.path == "/v1/chat/completions" for r in fake.requests())


@pytest.mark.fast
def test_without_litellm_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # what an absent package looks like
    provider = Provider(ClientConfig(api_key="sk-test"))
    request = OpenAIRequest("s", "u", model="gemini/gemini-2.0-flash")
    hint = r"pip install batch-stream-openai\[litellm\]"
    with pytest.raises(ProviderNotInstalledError, match=hint):
        asyncio.run(provider.complete(*http_call(request), 0))


@pytest.mark.fast
def test_responses_text_joins_every_output_text_part_like_the_sdk() -> None:
    response = {
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hello, "},
                    {"type": "refusal", "refusal": "no"},
                    {"type": "output_text", "text": "world"},
                ],
            },
        ],
        "error": None,
    }
    assert responses_text(response) == "Hello, world"


@pytest.mark.fast
def test_answers_without_text_are_empty_response_errors() -> None:
    refusal = {"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]}
    with pytest.raises(EmptyResponseError, match="content_filter"):
        chat_text(refusal)
    with pytest.raises(EmptyResponseError, match="the response failed"):
        responses_text({"error": {"code": "server_error", "message": "boom"}, "output": []})


@pytest.mark.fast
def test_a_raw_request_answered_without_text_keeps_its_body() -> None:
    tool_call = {"choices": [{"message": {"content": None, "tool_calls": [{"id": "c1"}]}}]}
    assert answer_text(Reading(CHAT_ENDPOINT, raw=True), tool_call) == ""
    with pytest.raises(EmptyResponseError):
        answer_text(Reading(CHAT_ENDPOINT), tool_call)


@pytest.mark.timeout(120)
def test_a_litellm_provider_without_its_key_is_a_401_that_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("litellm") is None:  # not imported here: it costs ~5 s
        pytest.skip("the [litellm] extra is not installed")
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    request = OpenAIRequest("s", "u", model="gemini/gemini-2.0-flash")
    [result] = run_batch([request], api_key="sk-unused-by-this-route", max_retries=3)
    assert isinstance(result, APIError), result
    assert result.status_code == 401 and not result.retryable
    assert "Missing Gemini API key" in str(result)
    assert "Traceback" not in str(result) and "bug in LiteLLM" not in str(result)
    assert result.attempts == 1  # LiteLLM says 500 for a missing key: it is not retried
