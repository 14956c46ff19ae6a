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


def test_requests_are_frozen_and_picklable() -> None:
    request = OpenAIRequest("s", "u", model="gpt-4o-mini", api="chat", reasoning_effort="low")
    assert pickle.loads(pickle.dumps(request)) == request
    with pytest.raises(AttributeError):
        request.model = "x"  # type: ignore[misc]


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
