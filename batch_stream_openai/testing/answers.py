"""What the fake server reads from a request and the answer bodies it builds (pure).

Shapes follow the real API (the openai SDK's `types/` are the reference): Chat
Completions, Responses, and the error envelope ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = [
    "STRUCTURED_TYPES",
    "chat_payload",
    "chat_prompts",
    "error_body",
    "responses_payload",
    "responses_prompts",
    "tokens",
]

STRUCTURED_TYPES = frozenset({"json_schema", "json_object"})
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout", "timeout"),
    409: ("conflict", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}
REFUSAL = "I'm sorry, I cannot help with that."


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON error envelope for `status`; `code` sets both ``code`` and ``type``."""
    if code is not None:
        err_type: str = code
    else:
        default: tuple[str, str | None] = ("invalid_request_error", None)
        if status >= 500:
            default = ("server_error", "server_error")
        err_type, code = _ERROR_KINDS.get(status, default)
    error = {"message": message, "type": err_type, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def tokens(chars: int) -> int:
    """The server's token count: characters / 4, rounded up."""
    return -(-chars // 4)


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def chat_prompts(body: dict[str, Any]) -> tuple[str, str, int]:
    """(system prompt, user prompt, total prompt chars) of a chat request."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list")
    system: list[str] = []
    user = ""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        text = _text_of(message.get("content"))
        chars += len(text)
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            user = text
    return "\n".join(system), user, chars


def responses_prompts(body: dict[str, Any]) -> tuple[str, str, int]:
    """(system prompt, user prompt, total prompt chars) of a responses request."""
    instructions = body.get("instructions")
    system = [instructions] if isinstance(instructions, str) else []
    raw_input = body.get("input")
    user = ""
    if isinstance(raw_input, str):
        user = raw_input
    elif isinstance(raw_input, list):
        for item in raw_input:
            if not isinstance(item, dict):
                continue
            text = _text_of(item.get("content"))
            if item.get("role") in ("system", "developer"):
                system.append(text)
            elif item.get("role") == "user":
                user = text
    else:
        raise ValueError("'input' must be a string or a list")
    system_prompt = "\n".join(system)
    return system_prompt, user, len(system_prompt) + len(user)


def chat_payload(
    n: int, body: dict[str, Any], text: str, prompt_chars: int, shape: frozenset[str]
) -> dict[str, Any]:
    """A Chat Completions answer; `shape` holds directive flags (refuse, no_text)."""
    prompt_tokens = tokens(prompt_chars)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish_reason = "stop"
    if "refuse" in shape:
        message.update(content=None, refusal=REFUSAL)
        text = REFUSAL
    elif "no_text" in shape or "incomplete" in shape:
        message["content"] = None
        finish_reason = "length" if "incomplete" in shape else "stop"
        text = ""
    message["annotations"] = []
    completion_tokens = tokens(len(text))
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": body.get("service_tier") or "default",
        "system_fingerprint": "fp_fake",
    }


def _responses_output(n: int, text: str, shape: frozenset[str]) -> tuple[list[Any], str]:
    """The ``output`` items and the text they carry."""
    if "incomplete" in shape or "no_text" in shape:
        reasoning = {"type": "reasoning", "id": f"rs_{n}", "summary": []}
        return ([reasoning] if "no_text" in shape else []), ""
    if "refuse" in shape:
        part: dict[str, Any] = {"type": "refusal", "refusal": REFUSAL}
        text = REFUSAL
    else:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {
        "type": "message",
        "id": f"msg_{n}",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    return [message], text


def responses_payload(
    n: int, body: dict[str, Any], text: str, prompt_chars: int, shape: frozenset[str]
) -> dict[str, Any]:
    """A Responses answer; `shape` holds directive flags (refuse, incomplete, no_text)."""
    now = time.time()
    output, text = _responses_output(n, text, shape)
    input_tokens = tokens(prompt_chars)
    output_tokens = tokens(len(text))
    text_config = body.get("text")
    incomplete = "incomplete" in shape
    return {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": int(now),
        "completed_at": None if incomplete else int(now),
        "status": "incomplete" if incomplete else "completed",
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": body.get("model", ""),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": body.get("service_tier") or "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text_config if isinstance(text_config, dict) else {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }
