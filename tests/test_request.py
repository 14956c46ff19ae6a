"""OpenAIRequest: defaults, validation, routing."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from batch_stream_openai import OpenAIRequest
from batch_stream_openai.request import openai_model_name


def test_defaults_match_the_spec() -> None:
    request = OpenAIRequest(system_prompt="s", user_prompt="u")
    assert request.model == "gpt-5-mini"
    assert request.api == "responses"
    assert request.response_format is None
    assert request.reasoning_effort is None


@pytest.mark.fast
def test_requests_are_frozen_and_picklable() -> None:
    request = OpenAIRequest("s", "u", model="gpt-4o-mini", api="chat", reasoning_effort="low")
    assert pickle.loads(pickle.dumps(request)) == request
    with pytest.raises(AttributeError):
        request.model = "x"  # type: ignore[misc]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"model": ""}, ValueError, "model"),
        ({"model": 3}, ValueError, "model"),
        ({"api": "completions"}, ValueError, "api"),
        ({"reasoning_effort": "extreme"}, ValueError, "reasoning_effort"),
        ({"response_format": "json"}, TypeError, "response_format"),
        ({"response_format": {"type": "xml"}}, ValueError, "response_format"),
        ({"response_format": {"type": "json_schema"}}, ValueError, "json_schema"),
        ({"user_prompt": None}, TypeError, "user_prompt"),
        ({"system_prompt": b"bytes"}, TypeError, "system_prompt"),
    ],
)
def test_bad_fields_name_the_field(kwargs: dict[str, Any], error: type, field: str) -> None:
    base: dict[str, Any] = {"system_prompt": "s", "user_prompt": "u"}
    with pytest.raises(error, match=field):
        OpenAIRequest(**{**base, **kwargs})


@pytest.mark.fast
@pytest.mark.parametrize(
    ("model", "sdk_name"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-5-mini", "gpt-5-mini"),
        ("o1", "o1"),
        ("o3-mini", "o3-mini"),
        ("o4-mini", "o4-mini"),
        ("chatgpt-4o-latest", "chatgpt-4o-latest"),
        ("ft:gpt-4o-mini:acme::abc123", "ft:gpt-4o-mini:acme::abc123"),
        ("openai/my-deployment", "my-deployment"),
        ("gemini/gemini-2.0-flash", None),
        ("anthropic/claude-3-5-haiku-latest", None),
        ("claude-3-5-haiku-latest", None),
        ("hosted_vllm/llama", None),
    ],
)
def test_routing_rule(model: str, sdk_name: str | None) -> None:
    assert openai_model_name(model) == sdk_name
    assert OpenAIRequest("s", "u", model=model).uses_openai_sdk is (sdk_name is not None)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("nan")}, "temperature must be finite"),
        ({"extra_body": {"top_p": float("inf")}}, "extra_body cannot be sent as JSON"),
        ({"extra_body": {"logit_bias": {1: object()}}}, "extra_body cannot be sent as JSON"),
        ({"extra_body": {"model": 5}}, r"extra_body\['model'\] must be a non-empty model name"),
        ({"extra_body": {"stream": True}}, r"extra_body\['stream'\] is not supported"),
        ({"metadata": {"k": "\ud800"}}, "metadata cannot be sent as JSON"),
        ({"user_prompt": "bad \udcff byte"}, r"user_prompt has a lone surrogate '\\udcff' at"),
        ({"system_prompt": "\ud83d"}, "system_prompt has a lone surrogate"),
        ({"model": " gpt-4o-mini"}, "has spaces around it"),
    ],
)
def test_what_cannot_be_sent_is_refused_when_the_request_is_built(
    kwargs: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {"system_prompt": "s", "user_prompt": "u", **kwargs}
    with pytest.raises((TypeError, ValueError), match=message):
        OpenAIRequest(**fields)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "gpt-4o-mini", "input": "x", "temperature": float("nan")}, "cannot be sent"),
        ({"model": "gpt-4o-mini", "input": "x", "stream": True}, "'stream'] is not supported"),
        ({"model": "gpt-4o-mini ", "input": "x"}, "has spaces around it"),
    ],
)
def test_raw_bodies_that_cannot_be_sent_are_refused(body: dict[str, Any], message: str) -> None:
    from batch_stream_openai import RawRequest

    with pytest.raises(ValueError, match=message):
        RawRequest("/v1/responses", body)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("gpt5-mini", "did you mean 'gpt-5-mini'?"),
        ("GPT-4o", "did you mean 'gpt-4o'?"),
        ("gemini/gemini-2.0-flash", "so it went to LiteLLM"),
        ("gpt-4o-mini", "is an OpenAI model name"),
    ],
)
def test_the_route_a_model_name_takes_is_explained(model: str, says: str) -> None:
    from batch_stream_openai.request import explain_route

    assert says in explain_route(model)
