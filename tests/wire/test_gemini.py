"""Chat Completions bodies as Gemini inline requests, and Gemini responses back as the
answers every other reader reads (`_wire/gemini.py`), checked against the google-genai
SDK's own types where the SDK is installed."""

from __future__ import annotations

import json

import pytest

from batch_stream_openai._wire.answers import answer_result, reading_of, usage_of
from batch_stream_openai._wire.bodies import http_call
from batch_stream_openai._wire.gemini import chat_completion, inline_request
from batch_stream_openai.request import OpenAIRequest

pytestmark = [pytest.mark.fast, pytest.mark.timeout(10)]

GEMINI = "gemini/gemini-2.5-flash"
LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def test_a_request_becomes_an_inline_request_the_sdk_validates() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    request = OpenAIRequest("Be brief.", "Hi", model=GEMINI, api="chat", temperature=0.3, seed=5,
                            max_output_tokens=40, response_format=response_format,
                            tools=[LOOKUP], tool_choice="required")  # fmt: skip
    inline = inline_request(http_call(request)[1])
    config = inline["config"]
    assert inline["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert config["system_instruction"] == "Be brief." and config["max_output_tokens"] == 40
    assert config["temperature"] == 0.3 and config["seed"] == 5
    assert config["response_mime_type"] == "application/json"
    assert config["response_json_schema"] == schema
    assert config["tools"][0]["function_declarations"][0]["name"] == "lookup"
    assert config["tool_config"] == {"function_calling_config": {"mode": "ANY"}}
    types = pytest.importorskip("google.genai.types")
    types.InlinedRequest.model_validate(inline)  # the SDK takes it as it is


def test_images_and_a_tool_turn_become_parts() -> None:
    body = {
        "model": GEMINI,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q": "cat"}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a feline"},
        ],
    }  # fmt: skip
    user, model, tool = inline_request(body)["contents"]
    assert user["parts"][1] == {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}
    call = {"function_call": {"name": "lookup", "args": {"q": "cat"}}}
    assert model == {"role": "model", "parts": [call]}
    assert tool["parts"] == [
        {"function_response": {"name": "lookup", "response": {"result": "a feline"}}}
    ]


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}, {"reasoning_effort": "low"}])
def test_what_gemini_has_no_equivalent_for_is_refused_by_name(extra: dict[str, object]) -> None:
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "u"}], **extra}
    with pytest.raises(ValueError, match=repr(next(iter(extra)))):
        inline_request(body)


def test_a_response_reads_as_the_answer_litellm_makes_of_it() -> None:
    response = {
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": True},
                {"text": "Calling."},
                {"function_call": {"name": "lookup", "args": {"q": "dog"}}},
            ]},
            "finish_reason": "STOP",
        }],
        "usage_metadata": {"prompt_token_count": 100, "candidates_token_count": 5,
                           "thoughts_token_count": 20, "cached_content_token_count": 60},
    }  # fmt: skip
    chat = chat_completion(response, "gemini-2.5-flash")
    choice = chat["choices"][0]
    assert choice["message"]["content"] == "Calling." and choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": json.dumps({"q": "dog"})}
    usage = usage_of(chat)
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (100, 25)
    assert usage.cached_tokens == 60 and usage.reasoning_tokens == 20
    request = OpenAIRequest("s", "u", model=GEMINI, tools=[LOOKUP])
    endpoint, body = http_call(request)
    result = answer_result(0, reading_of(request, endpoint, body), chat, None, attempts=1)
    assert result.tool_calls[0].arguments == {"q": "dog"}
