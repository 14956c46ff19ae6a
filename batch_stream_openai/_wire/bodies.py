"""Requests as HTTP calls: the ``(endpoint, body)`` each request kind sends.

- `OpenAIRequest` with ``api="chat"`` (and every LiteLLM-routed prompt request): a Chat
  Completions body: system and user messages (the user one with ``image_url`` parts when
  there are images), ``response_format`` as given (a pydantic class as the strict JSON
  schema the openai SDK makes of it), ``reasoning_effort``, ``max_completion_tokens``,
  ``tools``, ``tool_choice``.
- With ``api="responses"``: a Responses body: ``instructions``, ``input`` (a message with
  ``input_text`` and ``input_image`` parts when there are images), ``text.format``
  (converted from the Chat shape), ``reasoning.effort``, ``max_output_tokens``, ``tools``.
- `EmbeddingRequest`: an embeddings body; `RawRequest`: its body, as given.

``temperature``, ``metadata`` and ``extra_body`` (which wins) go into both prompt shapes.
"""

from __future__ import annotations

from typing import Any

from ..request import (
    CHAT_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    RESPONSES_ENDPOINT,
    AnyRequest,
    EmbeddingRequest,
    OpenAIRequest,
    RawRequest,
    is_model_class,
)

__all__ = [
    "chat_body",
    "http_call",
    "response_format_param",
    "responses_text_format",
    "wants_json",
]

_JSON_FORMATS = ("json_schema", "json_object")


def http_call(request: AnyRequest) -> tuple[str, dict[str, Any]]:
    """The ``(endpoint, body)`` that sends `request` to an OpenAI-compatible API."""
    if isinstance(request, RawRequest):
        return request.url, request.body
    if isinstance(request, EmbeddingRequest):
        body: dict[str, Any] = {"model": request.model, "input": request.input}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        return EMBEDDINGS_ENDPOINT, body
    if request.api == "chat" or not request.uses_openai_sdk:  # LiteLLM takes the chat shape
        return CHAT_ENDPOINT, chat_body(request)
    return RESPONSES_ENDPOINT, _responses_body(request)


def chat_body(request: OpenAIRequest) -> dict[str, Any]:
    """The Chat Completions body of a request (also what LiteLLM takes)."""
    user: str | list[dict[str, Any]] = request.user_prompt
    if request.images:
        user = [{"type": "text", "text": request.user_prompt}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in request.images
        ]
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": "system", "content": request.system_prompt},
            {"role": "user", "content": user},
        ],
    }
    if request.response_format is not None:
        body["response_format"] = response_format_param(request.response_format)
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    return _with_common_options(body, request)


def _responses_body(request: OpenAIRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "instructions": request.system_prompt,
        "input": request.user_prompt,
    }
    if request.images:
        parts = [{"type": "input_text", "text": request.user_prompt}] + [
            {"type": "input_image", "image_url": url} for url in request.images
        ]
        body["input"] = [{"role": "user", "content": parts}]
    if request.response_format is not None:
        chat_shape = response_format_param(request.response_format)
        body["text"] = {"format": responses_text_format(chat_shape)}
    if request.reasoning_effort is not None:
        body["reasoning"] = {"effort": request.reasoning_effort}
    if request.max_output_tokens is not None:
        body["max_output_tokens"] = request.max_output_tokens
    return _with_common_options(body, request)


def _with_common_options(body: dict[str, Any], request: OpenAIRequest) -> dict[str, Any]:
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.metadata is not None:
        body["metadata"] = request.metadata
    if request.tools is not None:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.extra_body:
        body.update(request.extra_body)
    return body


def response_format_param(response_format: dict[str, Any] | type) -> dict[str, Any]:
    """The Chat Completions `response_format` to send: a dict as is; a pydantic class as
    the strict JSON schema the openai SDK's ``.parse()`` sends for it (its own helper,
    imported here: ~0.5 s the first time in a process that has not imported the SDK)."""
    if not is_model_class(response_format):
        assert isinstance(response_format, dict)
        return response_format
    from openai.lib._parsing._completions import type_to_response_format_param

    param: dict[str, Any] = type_to_response_format_param(response_format)  # type: ignore[arg-type,assignment]
    return param


def responses_text_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """Convert a Chat Completions `response_format` to the Responses API `text.format`."""
    if response_format.get("type") != "json_schema":
        return dict(response_format)
    schema = response_format["json_schema"]
    converted: dict[str, Any] = {"type": "json_schema", "name": schema["name"]}
    converted["schema"] = schema["schema"]
    for optional in ("strict", "description"):
        if optional in schema:
            converted[optional] = schema[optional]
    return converted


def wants_json(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether the body asks for structured (JSON) output."""
    if endpoint == CHAT_ENDPOINT:
        fmt = body.get("response_format")
    else:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    return isinstance(fmt, dict) and fmt.get("type") in _JSON_FORMATS
