"""What the fake server reads from a request and the answer bodies it builds (pure).

Shapes follow the real API (the openai SDK's `types/` are the reference): Chat
Completions, Responses, and the error envelope ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from typing import Any

__all__ = [
    "STRUCTURED_TYPES",
    "chat_payload",
    "chat_prompts",
    "embeddings_payload",
    "error_body",
    "expected_embedding",
    "json_for_schema",
    "requested_schema",
    "responses_payload",
    "responses_prompts",
    "tokens",
    "tool_call_of",
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
    n: int,
    body: dict[str, Any],
    text: str,
    prompt_chars: int,
    shape: frozenset[str],
    tool: dict[str, Any] | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """A Chat Completions answer; `shape` holds directive flags (refuse, no_text),
    `tool` a tool call to answer with instead of text, `cached_tokens` the prompt tokens
    the prefix cache held."""
    prompt_tokens = tokens(prompt_chars)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish_reason = "stop"
    if tool is not None:
        call = {"id": f"call_{n}", "type": "function", "function": tool}
        message.update(content=None, tool_calls=[call])
        finish_reason, text = "tool_calls", tool["arguments"]
    elif "refuse" in shape:
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
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": body.get("service_tier") or "default",
        "system_fingerprint": "fp_fake",
    }


def _responses_output(
    n: int, text: str, shape: frozenset[str], tool: dict[str, Any] | None
) -> tuple[list[Any], str]:
    """The ``output`` items and the text they carry."""
    if tool is not None:
        call = {
            "type": "function_call",
            "id": f"fc_{n}",
            "call_id": f"call_{n}",
            "status": "completed",
            **tool,
        }
        return [call], tool["arguments"]
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
    n: int,
    body: dict[str, Any],
    text: str,
    prompt_chars: int,
    shape: frozenset[str],
    tool: dict[str, Any] | None = None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """A Responses answer; `shape` holds directive flags (refuse, incomplete, no_text),
    `tool` a tool call to answer with instead of text, `cached_tokens` the prompt tokens
    the prefix cache held."""
    now = time.time()
    output, text = _responses_output(n, text, shape, tool)
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
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


# Length of an embedding vector when the request names no `dimensions` (small, for tests).
EMBEDDING_DIMENSIONS = 8


def expected_embedding(text: str, dimensions: int | None = None) -> list[float]:
    """The vector the fake server answers for `text`: floats in [-1, 1] from its SHA-256.

    Example: ``expected_embedding("hello", 4)`` -> four floats, the same on every call.
    """
    size = dimensions or EMBEDDING_DIMENSIONS
    seed = hashlib.sha256(text.encode()).digest()
    values: list[float] = []
    counter = 0
    while len(values) < size:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values += [n / 2**31 - 1 for n in struct.unpack(">8I", block)]
        counter += 1
    return [round(v, 6) for v in values[:size]]


def embeddings_payload(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/embeddings`` answer: one vector per input text, in order."""
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("'input' must be a string or a non-empty list of strings")
    dimensions = body.get("dimensions")
    if dimensions is not None and not (isinstance(dimensions, int) and dimensions > 0):
        raise ValueError("'dimensions' must be a positive integer")
    prompt_tokens = sum(tokens(len(text)) for text in texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": expected_embedding(t, dimensions)}
            for i, t in enumerate(texts)
        ],
        "model": body.get("model", ""),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def requested_schema(path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the request asks the answer to follow, if it asks for one."""
    if path == "/v1/chat/completions":
        fmt = body.get("response_format")
        inner = fmt.get("json_schema") if isinstance(fmt, dict) else None
    else:
        text = body.get("text")
        inner = text.get("format") if isinstance(text, dict) else None
    if not isinstance(inner, dict) or (
        path != "/v1/chat/completions" and inner.get("type") != "json_schema"
    ):
        return None
    schema = inner.get("schema")
    return schema if isinstance(schema, dict) else None


def json_for_schema(schema: dict[str, Any], text: str, root: dict[str, Any] | None = None) -> Any:
    """A value that satisfies `schema`, deterministically: every string is `text`, every
    integer its length, numbers 0.5, booleans true, arrays one item, enums their first; an
    object with no properties given is ``{"answer": text}``."""
    root = root if root is not None else schema
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return json_for_schema(root.get("$defs", {}).get(name, {}), text, root)
    for keyword in ("anyOf", "oneOf", "allOf"):
        if schema.get(keyword):
            return json_for_schema(schema[keyword][0], text, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "object")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties")
        if not properties:  # any object will do: the one a json_object request gets
            return {"answer": text}
        return {name: json_for_schema(sub, text, root) for name, sub in properties.items()}
    if kind == "array":
        return [json_for_schema(schema.get("items") or {}, text, root)]
    return {"string": text, "integer": len(text), "number": 0.5, "boolean": True}.get(kind)


def tool_call_of(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The first tool the request offers, called with arguments that fit its schema."""
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        nested = tool.get("function")  # Chat nests the function; Responses does not
        function: dict[str, Any] = nested if isinstance(nested, dict) else tool
        name = function.get("name")
        if isinstance(name, str):
            parameters = function.get("parameters") or {"type": "object", "properties": {}}
            return {"name": name, "arguments": json.dumps(json_for_schema(parameters, text))}
    return None
