"""Chat Completions bodies as Anthropic Messages params, and Anthropic messages back as
the answers every other reader reads (`_wire/anthropic.py`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batch_stream_openai._wire.answers import answer_result, reading_of, usage_of
from batch_stream_openai._wire.anthropic import DEFAULT_MAX_TOKENS, chat_completion, messages_params
from batch_stream_openai._wire.bodies import http_call
from batch_stream_openai.request import OpenAIRequest

pytestmark = [pytest.mark.fast, pytest.mark.timeout(10)]

CLAUDE = "anthropic/claude-haiku-4-5"
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_a_request_becomes_messages_params_with_its_system_and_sampling() -> None:
    request = OpenAIRequest("Be brief.", "Hi", model=CLAUDE, temperature=0.2)
    params = messages_params(http_call(request)[1])
    assert params == {
        "model": "claude-haiku-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.2,
    }


def test_tools_images_and_a_tool_turn_are_converted() -> None:
    body = {
        "model": CLAUDE,
        "max_completion_tokens": 100,
        "stop": "END",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }  # fmt: skip
    params = messages_params(body)
    assert params["max_tokens"] == 100 and params["stop_sequences"] == ["END"]
    assert params["tools"] == [
        {
            "name": "weather",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
            "description": "The weather in a city.",
        }
    ]
    assert params["tool_choice"] == {"type": "tool", "name": "weather"}
    user, assistant, tool = params["messages"]
    assert user["content"][0] == body["messages"][0]["content"][0]  # cache_control kept
    assert user["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "AAAA",
    }
    assert user["content"][2]["source"] == {"type": "url", "url": "https://example.com/a.png"}
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
    ]
    assert tool == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": [{"type": "text", "text": "sunny"}],
            }
        ],
    }


def test_a_json_schema_and_an_effort_go_in_the_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    request = OpenAIRequest("s", "u", model=CLAUDE, response_format=response_format,
                            reasoning_effort="minimal")  # fmt: skip
    params = messages_params(http_call(request)[1])
    assert params["output_config"] == {
        "format": {"type": "json_schema", "schema": schema},
        "effort": "low",
    }


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"seed": 1}, "'seed'"), ({"n": 2}, "'n'"), ({"response_format": {"type": "json_object"}},
                                                 "'json_object'")],
)  # fmt: skip
def test_what_anthropic_has_no_equivalent_for_is_refused_by_name(
    extra: dict[str, Any], named: str
) -> None:
    body = {"model": CLAUDE, "messages": [{"role": "user", "content": "u"}], **extra}
    with pytest.raises(ValueError, match=named):
        messages_params(body)


def test_a_message_reads_as_the_answer_litellm_makes_of_it() -> None:
    message = {
        "id": "msg_1",
        "model": "claude-haiku-4-5",
        "stop_reason": "tool_use",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
    }
    chat = chat_completion(message)
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "weather", "arguments": json.dumps({"city": "Oslo"})}
    usage = usage_of(chat)
    assert usage is not None and usage.input_tokens == 130 and usage.cached_tokens == 100
    request = OpenAIRequest("s", "u", model=CLAUDE, tools=[WEATHER])
    endpoint, body = http_call(request)
    result = answer_result(0, reading_of(request, endpoint, body), chat, None, attempts=1)
    assert result.tool_calls[0].arguments == {"city": "Oslo"}
