"""Chat Completions bodies as Anthropic Messages params, and Anthropic messages back as
Chat Completions answers (pure, light: no SDK).

The Anthropic batch route sends what `http_call` makes of a request (the chat body
LiteLLM would take online) as Messages params, and reads each answer back in the shape
every other answer has, so `answer_result` reads it as it reads LiteLLM's online answer
to the same request. What has no Anthropic equivalent (``n``, ``logprobs``, ...) is
refused with `ValueError` naming the field.

Example:

>>> body = {"model": "anthropic/claude-haiku-4-5", "max_completion_tokens": 50,
...         "messages": [{"role": "system", "content": "Be brief."},
...                      {"role": "user", "content": "Hi"}]}
>>> params = messages_params(body)
>>> params["model"], params["system"], params["max_tokens"]
('claude-haiku-4-5', 'Be brief.', 50)
>>> message = {"id": "msg_1", "model": "claude-haiku-4-5", "stop_reason": "end_turn",
...            "content": [{"type": "text", "text": "Hello"}],
...            "usage": {"input_tokens": 9, "output_tokens": 2}}
>>> chat = chat_completion(message)
>>> chat["choices"][0]["message"]["content"], chat["usage"]["total_tokens"]
('Hello', 11)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "ANTHROPIC_PREFIX",
    "DEFAULT_MAX_TOKENS",
    "chat_completion",
    "messages_params",
    "refuse_unknown",
]

ANTHROPIC_PREFIX = "anthropic/"
# Anthropic needs max_tokens; what LiteLLM sends when a request gives none (so a request
# is capped alike online and in a batch).
DEFAULT_MAX_TOKENS = 4096
# Chat Completions fields sent as an Anthropic field of another name (or shape).
_RENAMED = {"temperature", "top_p", "stop", "tools", "tool_choice", "user"}
# Fields Anthropic takes as they are.
_AS_IS = ("top_k", "thinking", "service_tier")
# Handled apart, or not sent: OpenAI's ``metadata`` labels stored completions (Anthropic's
# takes a user id only).
_IGNORED = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "metadata"}
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def messages_params(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages params of a Chat Completions `body`; `ValueError` names the field
    Anthropic has no equivalent for."""
    handled = _RENAMED | _IGNORED | {"response_format", "reasoning_effort", *_AS_IS}
    refuse_unknown(body, handled, "Anthropic's Message Batches")
    system, messages = _split_system(body["messages"])
    params: dict[str, Any] = {
        "model": str(body["model"]).removeprefix(ANTHROPIC_PREFIX),
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if system:
        params["system"] = system
    params.update(_sampling(body))
    params.update(_tooling(body))
    if config := _output_config(body):
        params["output_config"] = config
    return params


def refuse_unknown(body: dict[str, Any], handled: set[str], api: str) -> None:
    """`ValueError` naming the first field of `body` that `api` has no equivalent for."""
    for name in body:
        if name not in handled:
            raise ValueError(
                f"the body's {name!r} has no equivalent in {api}: leave it out, or send the "
                "request online (mode='online')"
            )


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    params = {name: body[name] for name in ("temperature", "top_p", *_AS_IS) if name in body}
    if (stop := body.get("stop")) is not None:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(body.get("user"), str):
        params["metadata"] = {"user_id": body["user"]}
    return params


def _tooling(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if tools := body.get("tools"):
        params["tools"] = [_tool(tool) for tool in tools]
    choice = body.get("tool_choice")
    if choice == "none":
        params["tool_choice"] = {"type": "none"}
    elif choice in ("auto", "required"):
        params["tool_choice"] = {"type": "auto" if choice == "auto" else "any"}
    elif isinstance(choice, dict):
        params["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    return params


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool  # an Anthropic tool (web search, ...): as given
    function = tool["function"]
    converted = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if description := function.get("description"):
        converted["description"] = description
    return converted


def _output_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        config["format"] = {
            "type": "json_schema",
            "schema": response_format["json_schema"]["schema"],
        }
    elif response_format is not None and response_format.get("type") != "text":
        raise ValueError(
            f"the body's response_format {response_format.get('type')!r} has no equivalent "
            "in Anthropic's Message Batches: give a json_schema"
        )
    if (effort := body.get("reasoning_effort")) is not None:
        config["effort"] = _EFFORTS.get(effort, effort)
    return config


def _split_system(messages: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """Anthropic's ``system`` (a string, or text blocks with their ``cache_control``) and
    its messages (a tool's answer as a ``tool_result`` block of a user turn)."""
    system: list[dict[str, Any]] = []
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content")))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": _blocks(message.get("content")),
            }
            converted.append({"role": "user", "content": [result]})
        else:
            converted.append({"role": role, "content": _content(message)})
    if len(system) == 1 and set(system[0]) == {"type", "text"}:
        return system[0]["text"], converted
    return system, converted


def _content(message: dict[str, Any]) -> Any:
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if isinstance(content, str) and not calls:
        return content
    blocks = _blocks(content)
    for call in calls:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": json.loads(function.get("arguments") or "{}"),
            }
        )
    return blocks


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Chat Completions content (a string, or parts) as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_block(part) for part in content]


def _block(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") != "image_url":
        return part  # text (its cache_control kept), or a block in Anthropic's own shape
    url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
    if url.startswith("data:"):
        media_type, _, data = url.removeprefix("data:").partition(";base64,")
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic `Message` as the Chat Completions answer LiteLLM makes of it: text
    joined, ``tool_use`` blocks as tool calls, cached input counted in the prompt."""
    texts = [block["text"] for block in message.get("content", []) if block["type"] == "text"]
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block["input"])},
        }
        for block in message.get("content", [])
        if block["type"] == "tool_use"
    ]
    usage = message.get("usage") or {}
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (
        (usage.get("input_tokens") or 0) + cached + (usage.get("cache_creation_input_tokens") or 0)
    )
    output = usage.get("output_tokens") or 0
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": _FINISH.get(message.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
