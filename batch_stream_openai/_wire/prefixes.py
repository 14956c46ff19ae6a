"""What a request's prompt starts with: the key of its prefix, for the servers' caches.

Servers keep the prompts they have read (vLLM's and SGLang's prefix caches, OpenAI's and
Anthropic's prompt caches) and skip reading them again, when a request starting with
the same text comes to the same replica while it is still there. Requests with the
same *prefix key* (the model and the first `PREFIX_CHARS` characters of the prompt as
the server reads it: system, then the messages, in order) are sent to the same
endpoint (`fleet.py`) and close together in time (`_core/grouping.py`).

Why the first ~256 tokens, and not "the messages before the last user message": a
shared document sits in the user message (document QA), and a shared few-shot block
may sit in the system prompt or in example turns; the first tokens capture both, as
OpenAI's own cache routing does (it hashes about the first 256 tokens). A prompt shorter
than that has a key of its own, as it should: it has no prefix worth caching.
BENCHMARKS.md, section N, compares the two keys on the benchmark's sets.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..request import AnyRequest, OpenAIRequest, RawRequest

__all__ = ["PREFIX_CHARS", "prefix_key", "stable_cache_key"]

# About 256 tokens: what OpenAI's cache routing hashes, and 16 of vLLM's blocks.
PREFIX_CHARS = 1024


def prefix_key(request: AnyRequest) -> int | None:
    """The key of `request`'s prefix in this process (None: it has no prompt to cache,
    an embedding say).

    >>> a = OpenAIRequest("x" * 2000, "question 1", model="gpt-4o-mini")
    >>> b = OpenAIRequest("x" * 2000, "question 2", model="gpt-4o-mini")
    >>> prefix_key(a) == prefix_key(b) != prefix_key(OpenAIRequest("short", "question 1"))
    True
    """
    start = _prompt_start(request)
    return None if start is None else hash((request.model, start))


def stable_cache_key(request: AnyRequest) -> str | None:
    """A key of `request`'s prefix that is the same in every run (for OpenAI's
    ``prompt_cache_key``): 16 hex digits of a hash of its model and prompt start."""
    start = _prompt_start(request)
    if start is None:
        return None
    text = f"{request.model}\0{start}".encode(errors="surrogatepass")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _prompt_start(request: AnyRequest) -> str | None:
    """The first `PREFIX_CHARS` characters of the prompt, as the server reads it."""
    if isinstance(request, OpenAIRequest):
        system = request.system_prompt
        if len(system) >= PREFIX_CHARS:
            return system[:PREFIX_CHARS]
        return f"{system}\n{request.user_prompt[:PREFIX_CHARS]}"[:PREFIX_CHARS]
    if isinstance(request, RawRequest):
        return _messages_start(request.body)
    return None


def _messages_start(body: dict[str, Any]) -> str | None:
    """The start of a raw body's prompt: its instructions, then its messages' text."""
    parts: list[str] = []
    size = 0
    instructions = body.get("instructions") or body.get("system")
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):
        messages = [{"content": messages}]
    if not isinstance(messages, list):
        return None
    for content in [instructions] + [m.get("content") for m in messages if isinstance(m, dict)]:
        text = _text_of(content)
        parts.append(text)
        size += len(text) + 1
        if size >= PREFIX_CHARS:
            break
    return "\n".join(parts)[:PREFIX_CHARS]


def _text_of(content: object) -> str:
    """The text of a message's content: a string, or its parts' text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
