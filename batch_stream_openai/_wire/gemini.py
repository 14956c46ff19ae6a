"""Chat Completions bodies as Gemini requests, and Gemini responses back as Chat
Completions answers (pure, light: no SDK).

The Gemini batch route sends what `http_call` makes of a request (the chat body LiteLLM
would take online) as an inline request in the google-genai SDK's own form (``contents``
and a ``config``), and reads each response back in the shape every other answer has. What
has no Gemini equivalent (``n``, ``logprobs``, ``reasoning_effort``, ...) is refused
with `ValueError` naming the field.

Example:

>>> body = {"model": "gemini/gemini-2.5-flash", "max_completion_tokens": 50,
...         "messages": [{"role": "system", "content": "Be brief."},
...                      {"role": "user", "content": "Hi"}]}
>>> request = inline_request(body)
>>> request["config"]["system_instruction"], request["config"]["max_output_tokens"]
('Be brief.', 50)
>>> response = {"candidates": [{"content": {"parts": [{"text": "Hello"}]},
...             "finish_reason": "STOP"}],
...             "usage_metadata": {"prompt_token_count": 9, "candidates_token_count": 2}}
>>> chat_completion(response, "gemini-2.5-flash")["choices"][0]["message"]["content"]
'Hello'
"""

from __future__ import annotations

import json
from typing import Any

from .anthropic import refuse_unknown

__all__ = ["GEMINI_PREFIX", "chat_completion", "file_request", "inline_request"]

GEMINI_PREFIX = "gemini/"
_CONFIG = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed"}
_HANDLED = {*_CONFIG, "model", "messages", "max_tokens", "max_completion_tokens", "stop",
            "tools", "tool_choice", "response_format", "stream", "metadata", "user"}  # fmt: skip
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# The config fields a `GenerateContentRequest` has at its top level (the rest are its
# ``generation_config``).
_REQUEST_FIELDS = frozenset({"tools", "tool_config", "safety_settings", "cached_content"})
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
           "RECITATION": "content_filter", "PROHIBITED_CONTENT": "content_filter"}  # fmt: skip


def inline_request(body: dict[str, Any]) -> dict[str, Any]:
    """The inline request (``contents``, ``config``) of a Chat Completions `body`, as the
    SDK's ``batches.create`` takes it; `ValueError` names a field Gemini cannot take."""
    refuse_unknown(body, _HANDLED, "Gemini's batch mode")
    system, contents = _contents(body["messages"])
    config: dict[str, Any] = {key: body[name] for name, key in _CONFIG.items() if name in body}
    if system:
        config["system_instruction"] = system
    if cap := body.get("max_completion_tokens") or body.get("max_tokens"):
        config["max_output_tokens"] = cap
    if (stop := body.get("stop")) is not None:
        config["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_tooling(body))
    config.update(_output(body))
    return {"contents": contents, "config": config}


def file_request(inline: dict[str, Any]) -> dict[str, Any]:
    """An `inline_request` as the API's own ``GenerateContentRequest`` (a batch input
    file's ``request``): the system instruction as content, the tools and tool config at
    the top, the rest of the config as ``generation_config``.

    >>> file_request({"contents": [], "config": {"system_instruction": "Be brief.",
    ...                                          "temperature": 0.5}})
    {'contents': [], 'system_instruction': {'parts': [{'text': 'Be brief.'}]}, \
'generation_config': {'temperature': 0.5}}
    """
    config = dict(inline["config"])
    request: dict[str, Any] = {"contents": inline["contents"]}
    if system := config.pop("system_instruction", None):
        request["system_instruction"] = {"parts": [{"text": system}]}
    request.update({key: config.pop(key) for key in _REQUEST_FIELDS & config.keys()})
    if config:
        request["generation_config"] = config
    return request


def _tooling(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if tools := body.get("tools"):
        declared = [_declaration(tool["function"]) for tool in tools]
        config["tools"] = [{"function_declarations": declared}]
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        config["tool_config"] = {"function_calling_config": {"mode": _MODES[choice]}}
    elif isinstance(choice, dict):
        named = {"mode": "ANY", "allowed_function_names": [choice["function"]["name"]]}
        config["tool_config"] = {"function_calling_config": named}
    return config


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declared = {"name": function["name"]}
    if description := function.get("description"):
        declared["description"] = description
    if parameters := function.get("parameters"):
        declared["parameters_json_schema"] = parameters
    return declared


def _output(body: dict[str, Any]) -> dict[str, Any]:
    response_format = body.get("response_format") or {}
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = response_format["json_schema"]["schema"]
        return {"response_mime_type": "application/json", "response_json_schema": schema}
    if kind == "json_object":
        return {"response_mime_type": "application/json"}
    return {}


def _contents(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system instruction, and the turns as Gemini contents (a tool's answer as a
    ``function_response`` part, named after the call it answers)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # tool call id -> function name
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend(part["text"] for part in _parts(content) if "text" in part)
        elif role == "tool":
            name = called.get(str(message.get("tool_call_id")), "")
            answer = {"name": name, "response": {"result": content}}
            contents.append({"role": "user", "parts": [{"function_response": answer}]})
        else:
            parts = _parts(content)
            for call in message.get("tool_calls") or []:
                function = call["function"]
                called[call["id"]] = function["name"]
                arguments = json.loads(function.get("arguments") or "{}")
                parts.append({"function_call": {"name": function["name"], "args": arguments}})
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return "\n".join(system), contents


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    return [_part(part) for part in content]


def _part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "text":
        return {"text": part["text"]}
    if part.get("type") != "image_url":
        raise ValueError(f"a {part.get('type')!r} content part has no Gemini equivalent here")
    url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
    if url.startswith("data:"):
        media_type, _, data = url.removeprefix("data:").partition(";base64,")
        return {"inline_data": {"mime_type": media_type, "data": data}}
    return {"file_data": {"file_uri": url}}


def chat_completion(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``GenerateContentResponse`` (the SDK's, as a dict) as the Chat Completions answer
    LiteLLM makes of it: text joined (thoughts left out), function calls as tool calls,
    thoughts counted in the output, cached input in the prompt."""
    candidates = response.get("candidates") or [{}]
    candidate = candidates[0]
    parts = (candidate.get("content") or {}).get("parts") or []
    texts = [part["text"] for part in parts if "text" in part and not part.get("thought")]
    calls = [
        {"id": f"call_{number}", "type": "function",
         "function": {"name": part["function_call"]["name"],
                      "arguments": json.dumps(part["function_call"].get("args") or {})}}
        for number, part in enumerate(parts) if "function_call" in part
    ]  # fmt: skip
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    finish = "tool_calls" if calls else _FINISH.get(candidate.get("finish_reason") or "", "stop")
    usage = response.get("usage_metadata") or {}
    prompt = usage.get("prompt_token_count") or 0
    thoughts = usage.get("thoughts_token_count") or 0
    output = (usage.get("candidates_token_count") or 0) + thoughts
    return {
        "id": response.get("response_id"),
        "object": "chat.completion",
        "model": response.get("model_version") or model,
        "choices": [{"index": 0, "message": reply, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {
                "cached_tokens": usage.get("cached_content_token_count") or 0
            },
            "completion_tokens_details": {"reasoning_tokens": thoughts},
        },
    }
