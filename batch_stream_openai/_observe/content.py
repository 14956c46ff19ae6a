"""Prompts and answers on the request spans: only when the application opts in.

The GenAI semantic conventions leave content out of telemetry unless asked for, and
OpenTelemetry's GenAI instrumentations are asked with the environment variable
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; so is this library. Then
each request's span carries ``gen_ai.input.messages`` and ``gen_ai.output.messages``
(JSON, the conventions' role-and-parts shape); images and files are named by their type,
never carried.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from typing import Any

from .._wire.bodies import http_call
from ..results import Result

__all__ = ["CAPTURE", "capture_content", "input_messages", "output_messages"]

CAPTURE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_TEXT_PARTS = {"text", "input_text", "output_text"}


def capture_content() -> bool:
    """The application asked for prompts and answers on spans (read as a batch starts)."""
    return os.environ.get(CAPTURE, "").strip().lower() == "true"


def input_messages(payload: bytes) -> str:
    """The messages a request sent (its pickled `payload`), as the conventions' JSON.

    >>> from batch_stream_openai import OpenAIRequest
    >>> sent = json.loads(input_messages(pickle.dumps(OpenAIRequest("Be brief.", "Hi"))))
    >>> [(m["role"], m["parts"][0]["content"]) for m in sent]
    [('system', 'Be brief.'), ('user', 'Hi')]
    """
    _, body = http_call(pickle.loads(payload))
    if isinstance(body.get("messages"), list):  # Chat Completions
        messages = body["messages"]
    else:  # Responses (instructions and input) or embeddings (input)
        messages = (
            [{"role": "system", "content": body["instructions"]}]
            if body.get("instructions")
            else []
        )
        given = body.get("input")
        items = (
            given
            if isinstance(given, list) and all(isinstance(i, Mapping) for i in given)
            else [{"role": "user", "content": given}]
        )
        messages += items
    return json.dumps([_message(m) for m in messages if isinstance(m, Mapping)])


def output_messages(result: Result, finish_reasons: list[str]) -> str:
    """The answer of `result`, as the conventions' JSON ('[]' when it failed)."""
    if result.error is not None:
        return "[]"
    parts: list[dict[str, Any]] = []
    if result.text:
        parts.append({"type": "text", "content": result.text})
    for call in result.tool_calls:
        parts.append(
            {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
        )
    message: dict[str, Any] = {"role": "assistant", "parts": parts}
    if finish_reasons:
        message["finish_reason"] = finish_reasons[0]
    return json.dumps([message], default=str)


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": "text", "content": content}]
    elif isinstance(content, list):
        parts = [_part(p) for p in content if isinstance(p, Mapping)]
    else:
        parts = [] if content is None else [{"type": "text", "content": str(content)}]
    return {"role": str(message.get("role", "user")), "parts": parts}


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(part.get("type", "unknown"))
    if kind in _TEXT_PARTS:
        return {"type": "text", "content": str(part.get("text", ""))}
    return {"type": kind}  # an image or a file: named, not carried
