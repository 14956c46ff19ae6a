"""A fast, fault-injecting, OpenAI-compatible HTTP server for tests, benchmarks and demos.

The server itself (an ``aiohttp`` low-level server) always runs in its own process,
started by :class:`FakeOpenAIServer` (or ``python -m batch_stream_openai.testing``).
The parent talks to it over plain HTTP control endpoints under ``/_control/`` using
only the standard library, so no event loop is needed on the caller's side.

Answers are deterministic (see :func:`expected_answer`) and faults are injected by
``[[...]]`` directives inside the user prompt, e.g. ``[[status=429 retry_after=0.1 times=1]]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "Directive",
    "FakeOpenAIServer",
    "RecordedRequest",
    "ServerSettings",
    "ServerStats",
    "expected_answer",
    "parse_directives",
    "run_server",
    "serve",
    "setting_names",
]

MAX_RECORDS = 100_000
MAX_BIG = 100_000_000
READY_PREFIX = "BSO_FAKE_OPENAI_READY "
_STOP_TIMEOUT = 3.0
_JSON = "application/json"

# ---------------------------------------------------------------------------
# Pure, deterministic pieces shared by the server and by tests.
# ---------------------------------------------------------------------------

_DIRECTIVE_RE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_FAULT_KINDS = frozenset({"status", "drop", "hang"})
_KINDS = frozenset({"latency", "status", "drop", "hang", "slow_body", "big"})
_FLAG_KINDS = frozenset({"drop", "hang"})
_MODIFIERS = frozenset({"times", "retry_after", "retry_after_ms", "code"})


@dataclass(frozen=True)
class Directive:
    """One parsed ``[[kind[=value] key=value ...]]`` token from a user prompt.

    Parameters:
        kind: ``latency``, ``status``, ``drop``, ``hang``, ``slow_body`` or ``big``.
        value: The number after ``kind=`` (0 for ``drop``/``hang``).
        times: Only the first ``times`` requests with the same user prompt are affected.
        retry_after: Value for the ``retry-after`` header (``status`` only).
        retry_after_ms: Value for the ``retry-after-ms`` header (``status`` only).
        code: Overrides ``error.code`` and ``error.type`` (``status`` only).
    """

    kind: str
    value: float = 0.0
    times: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    code: str | None = None


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"directive {what}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"directive {what}={text!r} must be a finite number >= 0")
    return value


def _parse_token(token: str) -> Directive:
    words = token.split()
    if not words:
        raise ValueError("empty directive [[]]")
    kind, sep, raw_value = words[0].partition("=")
    if kind not in _KINDS:
        raise ValueError(f"unknown directive {kind!r} in [[{token}]]")
    if kind in _FLAG_KINDS:
        if sep:
            raise ValueError(f"directive {kind!r} takes no value: [[{token}]]")
        value = 0.0
    else:
        if not sep:
            raise ValueError(f"directive {kind!r} needs a value, e.g. [[{kind}=1]]")
        value = _number(raw_value, kind)
    if kind == "status" and not (100 <= value <= 599 and value.is_integer()):
        raise ValueError(f"directive status={raw_value!r} is not an HTTP status code")
    if kind == "big" and not (value.is_integer() and value <= MAX_BIG):
        raise ValueError(f"directive big={raw_value!r} must be an integer <= {MAX_BIG}")
    mods: dict[str, str] = {}
    for word in words[1:]:
        key, sep, mod_value = word.partition("=")
        if key not in _MODIFIERS or not sep or not mod_value:
            raise ValueError(f"bad modifier {word!r} in [[{token}]]")
        mods[key] = mod_value
    times: int | None = None
    if "times" in mods:
        times_f = _number(mods["times"], "times")
        if not times_f.is_integer():
            raise ValueError(f"directive times={mods['times']!r} must be an integer")
        times = int(times_f)
    for key in ("retry_after", "retry_after_ms"):
        if key in mods:
            _number(mods[key], key)
    if kind != "status" and mods.keys() - {"times"}:
        raise ValueError(f"only [[status=...]] takes retry_after/retry_after_ms/code: [[{token}]]")
    return Directive(
        kind=kind,
        value=value,
        times=times,
        retry_after=mods.get("retry_after"),
        retry_after_ms=mods.get("retry_after_ms"),
        code=mods.get("code"),
    )


@functools.lru_cache(maxsize=4096)
def parse_directives(user_prompt: str) -> tuple[Directive, ...]:
    """Parse every ``[[...]]`` directive in a user prompt, in textual order.

    Example: ``parse_directives("hi [[drop times=1]]")`` ->
    ``(Directive(kind="drop", times=1),)``.

    Parameters:
        user_prompt: The user prompt (chat: last user message; responses: ``input``).

    Raises:
        ValueError: A ``[[...]]`` token is not a valid directive.
    """
    if "[[" not in user_prompt:
        return ()
    return tuple(_parse_token(m.group(1)) for m in _DIRECTIVE_RE.finditer(user_prompt))


def expected_answer(system_prompt: str, user_prompt: str, structured: bool = False) -> str:
    """Return the exact assistant text the fake server answers for these prompts.

    Example: ``expected_answer("Be brief.", "hello")`` ->
    ``"echo: hello [<12 hex chars>]"``; with ``structured=True`` it is
    ``json.dumps({"answer": <that text>})``.

    If the user prompt contains ``[[big=N]]`` the plain answer is padded with ``"x"``
    (or truncated) to exactly ``N`` characters; a structured answer wraps that
    padded text, so its ``"answer"`` field is ``N`` characters long.

    Parameters:
        system_prompt: System prompt (chat: system/developer messages; responses: ``instructions``).
        user_prompt: User prompt (chat: last user message; responses: ``input``).
        structured: Whether the request asked for JSON output (``json_schema``/``json_object``).

    Raises:
        ValueError: The user prompt contains an invalid ``[[...]]`` directive.
    """
    digest = hashlib.sha256((system_prompt + "\x00" + user_prompt).encode()).hexdigest()[:12]
    text = f"echo: {user_prompt[:60]} [{digest}]"
    if "[[" in user_prompt:
        for directive in parse_directives(user_prompt):
            if directive.kind == "big":
                size = int(directive.value)
                text = text[:size] + "x" * (size - len(text))
    if structured:
        return json.dumps({"answer": text})
    return text


# ---------------------------------------------------------------------------
# Public value types (parent side).
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStats:
    """Counters of a running fake server, as returned by :meth:`FakeOpenAIServer.stats`.

    Example: ``server.stats().by_status.get(200, 0)``.

    Parameters:
        requests: API requests received since start/reset (everything outside ``/_control/``).
        in_flight: Requests currently being handled.
        max_in_flight: Highest ``in_flight`` since start/reset.
        by_status: Responses sent by HTTP status; dropped/abandoned connections under ``0``.
    """

    requests: int
    in_flight: int
    max_in_flight: int
    by_status: dict[int, int]


@dataclass(frozen=True)
class RecordedRequest:
    """One API request as seen by the fake server.

    Example: ``server.requests()[-1].headers["authorization"] == "Bearer sk-test"``.

    Parameters:
        path: URL path, e.g. ``/v1/chat/completions``.
        body: Parsed JSON body (``{}`` if it was not a JSON object).
        headers: Request headers with lower-cased names (values as sent).
        received_at: ``time.time()`` when the body had been read.
        status: Status answered; 0 for drop/hang/client gone or still in flight.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    status: int


@dataclass
class ServerSettings:
    """Server-wide settings that can be changed at run time with ``configure()``.

    Example: ``ServerSettings(latency=0.1)``. New settings (e.g. ``rpm``/``tpm``) are
    added as fields here; the CLI flags, the constructor and ``configure()`` follow.

    Parameters:
        latency: Seconds added before every API answer.
        rpm: Requests per minute the server accepts (0: no limit), enforced like the real
            API: a bucket holding one second's worth, refilled continuously; over it the
            server answers 429 with ``retry-after-ms``. Every answer then carries the
            ``x-ratelimit-*`` headers.
        tpm: Tokens per minute (prompt + answer, characters / 4), enforced the same way.
    """

    latency: float = 0.0
    rpm: float = 0.0
    tpm: float = 0.0

    def update(self, values: Mapping[str, Any]) -> None:
        """Validate and apply ``values`` (field name -> new value); all-or-nothing.

        Raises:
            ValueError: Unknown name or invalid value.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        checked: dict[str, float] = {}
        for name, value in values.items():
            if name not in fields:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(fields)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"setting {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"setting {name!r} must be a finite number >= 0")
            checked[name] = float(value)
        for name, value in checked.items():
            setattr(self, name, value)


def setting_names() -> list[str]:
    """Return the names of all run-time settings (fields of :class:`ServerSettings`)."""
    return [f.name for f in dataclasses.fields(ServerSettings)]


# ---------------------------------------------------------------------------
# The aiohttp server (child side).
# ---------------------------------------------------------------------------

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
_STRUCTURED_TYPES = frozenset({"json_schema", "json_object"})


def _error_body(status: int, message: str, code: str | None = None) -> bytes:
    if code is not None:
        err_type: str = code
    else:
        default: tuple[str, str | None] = ("invalid_request_error", None)
        if status >= 500:
            default = ("server_error", "server_error")
        err_type, code = _ERROR_KINDS.get(status, default)
    error = {"message": message, "type": err_type, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _tokens(chars: int) -> int:
    return -(-chars // 4)


def _chat_prompts(body: dict[str, Any]) -> tuple[str, str, int]:
    """Return (system prompt, user prompt, total prompt chars) of a chat request."""
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


def _responses_prompts(body: dict[str, Any]) -> tuple[str, str, int]:
    """Return (system prompt, user prompt, total prompt chars) of a responses request."""
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


class _Bucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding one second's worth."""

    def __init__(self) -> None:
        self.level = 0.0
        self.updated = time.monotonic()
        self.per_minute = 0.0

    def _refill(self, per_minute: float) -> float:
        capacity = max(1.0, per_minute / 60)
        now = time.monotonic()
        if per_minute != self.per_minute:  # a new limit starts full
            self.per_minute, self.level = per_minute, capacity
        else:
            self.level = min(capacity, self.level + (now - self.updated) * per_minute / 60)
        self.updated = now
        return capacity

    def take(self, per_minute: float, cost: float) -> float:
        """Take `cost`; return 0, or the seconds until it could be taken (nothing taken)."""
        self._refill(per_minute)
        if self.level >= min(cost, max(1.0, per_minute / 60)):
            self.level -= cost
            return 0.0
        return (min(cost, max(1.0, per_minute / 60)) - self.level) * 60 / per_minute

    def headers(self, kind: str, per_minute: float) -> dict[str, str]:
        capacity = self._refill(per_minute)
        reset = max(0.0, capacity - self.level) * 60 / per_minute
        return {
            f"x-ratelimit-limit-{kind}": str(int(per_minute)),
            f"x-ratelimit-remaining-{kind}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{kind}": f"{reset * 1000:.0f}ms",
        }


class _State:
    """Mutable server state; only touched from the event loop thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.request_bucket = _Bucket()
        self.token_bucket = _Bucket()
        self.ids = itertools.count(1)
        self.epoch = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_status: dict[int, int] = {}
        self.records: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self.seen: dict[str, int] = {}

    def reset(self) -> None:
        # The epoch keeps requests that started before a reset out of the new counters.
        self.epoch += 1
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_status = {}
        self.records.clear()
        self.seen.clear()


class _App:
    """Request handler of the fake server (one instance per process)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_control/"):
            return await self._control(request, path)
        state = self.state
        epoch = state.epoch
        state.requests += 1
        state.in_flight += 1
        if state.in_flight > state.max_in_flight:
            state.max_in_flight = state.in_flight
        record: dict[str, Any] | None = None
        status = 0
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            record = {
                "path": path,
                "body": body if isinstance(body, dict) else {},
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "received_at": time.time(),
                "status": 0,
            }
            if epoch == state.epoch:
                state.records.append(record)
            response = await self._api(request, path, body)
            status = response.status if response is not None else 0
            if response is None:
                raise asyncio.CancelledError  # connection deliberately dropped
            return response
        finally:
            state.in_flight -= 1
            if record is not None:
                record["status"] = status
            if epoch == state.epoch:
                state.by_status[status] = state.by_status.get(status, 0) + 1

    async def _api(
        self, request: web.BaseRequest, path: str, body: Any
    ) -> web.StreamResponse | None:
        if path == "/v1/chat/completions":
            prompts: Callable[[dict[str, Any]], tuple[str, str, int]] = _chat_prompts
        elif path == "/v1/responses":
            prompts = _responses_prompts
        else:
            return _error(404, f"Invalid URL ({request.method} {path})")
        if request.method != "POST":
            return _error(405, f"Method {request.method} not allowed for {path}")
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        if body.get("stream"):
            return _error(400, "stream=true is not supported by the fake server")
        try:
            system, user, prompt_chars = prompts(body)
            directives = parse_directives(user)
        except ValueError as exc:
            return _error(400, str(exc))

        latency = self.state.settings.latency
        fault: Directive | None = None
        slow_body = 0.0
        if directives:
            index = self._count(user, directives)
            for d in directives:
                if d.times is not None and index >= d.times:
                    continue
                if d.kind == "latency":
                    latency += d.value
                elif d.kind == "slow_body":
                    slow_body = d.value
                elif fault is None and d.kind in _FAULT_KINDS:
                    fault = d
        limited = self._rate_limit(prompt_chars)
        if limited is not None:
            return limited
        if latency > 0:
            await asyncio.sleep(latency)
        if fault is not None:
            if fault.kind == "status":
                return _fault_response(fault)
            if fault.kind == "drop":
                if request.transport is not None:
                    request.transport.close()
                return None
            await asyncio.Event().wait()  # hang: cancelled when the client disconnects

        if path == "/v1/chat/completions":
            fmt = body.get("response_format")
            structured = isinstance(fmt, dict) and fmt.get("type") in _STRUCTURED_TYPES
            text = expected_answer(system, user, structured)
            payload = self._chat_payload(body, text, prompt_chars)
        else:
            fmt = body.get("text")
            fmt = fmt.get("format") if isinstance(fmt, dict) else None
            structured = isinstance(fmt, dict) and fmt.get("type") in _STRUCTURED_TYPES
            text = expected_answer(system, user, structured)
            payload = self._responses_payload(body, text, prompt_chars)
        data = json.dumps(payload).encode()
        headers = {"x-request-id": f"req_{payload['id']}", **self._rate_limit_headers()}
        if slow_body > 0:
            return await _slow_response(request, data, headers, slow_body)
        return web.Response(body=data, content_type=_JSON, headers=headers)

    def _rate_limit(self, prompt_chars: int) -> web.Response | None:
        """The 429 answer when the request is over the server's RPM/TPM budget, else None."""
        settings, state = self.state.settings, self.state
        waits = []
        if settings.rpm > 0:
            waits.append(state.request_bucket.take(settings.rpm, 1))
        if settings.tpm > 0:
            # The answer is about as long as the prompt for these echo answers.
            waits.append(state.token_bucket.take(settings.tpm, 2 * _tokens(prompt_chars)))
        wait = max(waits, default=0.0)
        if wait <= 0:
            return None
        headers = {"retry-after-ms": f"{wait * 1000:.0f}", **self._rate_limit_headers()}
        body = _error_body(429, "Rate limit reached (fake server budget).")
        return web.Response(status=429, body=body, content_type=_JSON, headers=headers)

    def _rate_limit_headers(self) -> dict[str, str]:
        settings, state = self.state.settings, self.state
        headers: dict[str, str] = {}
        if settings.rpm > 0:
            headers.update(state.request_bucket.headers("requests", settings.rpm))
        if settings.tpm > 0:
            headers.update(state.token_bucket.headers("tokens", settings.tpm))
        return headers

    def _count(self, user: str, directives: tuple[Directive, ...]) -> int:
        """Return how many earlier requests carried this exact user prompt (if needed)."""
        # Only prompts using times= are counted, so memory does not grow with traffic.
        if all(d.times is None for d in directives):
            return 0
        index = self.state.seen.get(user, 0)
        self.state.seen[user] = index + 1
        return index

    def _chat_payload(self, body: dict[str, Any], text: str, prompt_chars: int) -> dict[str, Any]:
        n = next(self.state.ids)
        prompt_tokens = _tokens(prompt_chars)
        completion_tokens = _tokens(len(text))
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _responses_payload(
        self, body: dict[str, Any], text: str, prompt_chars: int
    ) -> dict[str, Any]:
        n = next(self.state.ids)
        now = time.time()
        input_tokens = _tokens(prompt_chars)
        output_tokens = _tokens(len(text))
        text_config = body.get("text")
        return {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": int(now),
            "completed_at": int(now),
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": body.get("model", ""),
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{n}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                    ],
                }
            ],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
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

    async def _control(self, request: web.BaseRequest, path: str) -> web.Response:
        state = self.state
        name = path[len("/_control/") :]
        method = request.method
        if name == "stats" and method == "GET":
            result: Any = {
                "requests": state.requests,
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "by_status": state.by_status,
            }
        elif name == "requests" and method == "GET":
            result = list(state.records)
        elif name == "reset" and method == "POST":
            state.reset()
            result = {"ok": True}
        elif name == "config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    values = json.loads(await request.read())
                    if not isinstance(values, dict):
                        raise ValueError("config body must be a JSON object")
                    state.settings.update(values)
                except ValueError as exc:
                    return _error(400, str(exc))
            result = dataclasses.asdict(state.settings)
        elif name == "health" and method == "GET":
            result = {"ok": True, "pid": os.getpid()}
        else:
            return _error(404, f"Invalid URL ({method} {path})")
        return web.Response(body=json.dumps(result).encode(), content_type=_JSON)


_FAULT_IDS = itertools.count(1)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=_error_body(status, message), content_type=_JSON)


def _fault_response(fault: Directive) -> web.Response:
    status = int(fault.value)
    # Like the real API, errors carry a request id too.
    headers: dict[str, str] = {"x-request-id": f"req_fault_{next(_FAULT_IDS)}"}
    if fault.retry_after is not None:
        headers["retry-after"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = fault.retry_after_ms
    body = _error_body(status, f"Injected fault: HTTP {status}", fault.code)
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


async def _slow_response(
    request: web.BaseRequest, data: bytes, headers: dict[str, str], seconds: float
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = _JSON
    response.content_length = len(data)
    await response.prepare(request)  # status and headers go out now
    chunks = max(1, min(20, len(data)))
    step = -(-len(data) // chunks)
    pause = seconds / chunks
    for start in range(0, len(data), step):
        await asyncio.sleep(pause)
        await response.write(data[start : start + step])
    await response.write_eof()
    return response


async def serve(
    host: str,
    port: int,
    settings: ServerSettings,
    on_ready: Callable[[str, int], None],
    stop: asyncio.Event,
) -> None:
    """Run the fake server until ``stop`` is set; call ``on_ready(host, port)`` once listening.

    Example: ``await serve("127.0.0.1", 0, ServerSettings(), print_ready, stop_event)``.

    Parameters:
        host: Interface to bind.
        port: TCP port; 0 picks a free one (reported to ``on_ready``).
        settings: Initial server-wide settings.
        on_ready: Called with the bound host and port once the socket accepts connections.
        stop: Set it to shut down (idle connections closed, handlers cancelled).
    """
    app = _App(_State(settings))
    # handler_cancellation: a client disconnect cancels its handler (hang/latency don't leak).
    server = web.Server(app.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        on_ready(host, bound_port)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_server(
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
    *,
    managed: bool = False,
) -> None:
    """Run the fake server in this process until SIGTERM/SIGINT (blocking).

    Example: ``run_server("127.0.0.1", 8000, ServerSettings(latency=0.05))``.

    Parameters:
        host: Interface to bind.
        port: TCP port; 0 picks a free one.
        settings: Initial server-wide settings (defaults to ``ServerSettings()``).
        managed: Child mode for :class:`FakeOpenAIServer`: print one machine-readable
            ready line and exit when stdin reaches EOF (i.e. the parent died).
    """

    def on_ready(bound_host: str, bound_port: int) -> None:
        if managed:
            info = {"host": bound_host, "port": bound_port, "pid": os.getpid()}
            print(READY_PREFIX + json.dumps(info), flush=True)
        else:
            print(f"serving on {_base_url(bound_host, bound_port)}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not available on Windows or outside the main thread.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if managed:
            await _stop_on_stdin_eof(loop, stop)
        await serve(host, port, settings or ServerSettings(), on_ready, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


class _StdinWatcher(asyncio.Protocol):
    """Sets ``stop`` when stdin reaches EOF, i.e. when the parent process is gone."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def eof_received(self) -> bool | None:
        self._stop.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    await loop.connect_read_pipe(lambda: _StdinWatcher(stop), sys.stdin)


# ---------------------------------------------------------------------------
# Process runner (parent side, stdlib only at run time).
# ---------------------------------------------------------------------------


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeOpenAIServer:
    """Fake OpenAI-compatible server running in a subprocess on a free local port.

    Example::

        with FakeOpenAIServer(latency=0.0) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
            reply = client.chat.completions.create(model="m", messages=[...])
            assert server.stats().requests == 1

    Parameters:
        latency: Seconds added before every API answer (changeable via ``configure``).
        host: Interface the server binds.
        port: TCP port; 0 (default) picks a free one.
        startup_timeout: Seconds to wait for the child to report it is listening.
        rpm: Requests per minute the server accepts, 0 for no limit (see `ServerSettings`).
        tpm: Tokens per minute the server accepts, 0 for no limit.
    """

    def __init__(
        self,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 15.0,
        rpm: float = 0.0,
        tpm: float = 0.0,
    ) -> None:
        self._settings = ServerSettings()
        self._settings.update({"latency": latency, "rpm": rpm, "tpm": tpm})
        self._host = host
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Start the server process and wait until it listens; returns ``self``.

        Raises:
            RuntimeError: Already started, or the child failed to start in time.
        """
        if self._process is not None:
            raise RuntimeError("FakeOpenAIServer already started")
        cmd = [
            sys.executable,
            "-m",
            "batch_stream_openai.testing",
            "--managed",
            "--host",
            self._host,
            "--port",
            str(self._requested_port),
        ]
        for name, value in dataclasses.asdict(self._settings).items():
            cmd += [f"--{name.replace('_', '-')}", repr(value)]
        env = dict(os.environ)
        # The child must import this very package even if only the parent's sys.path has it.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # Unbuffered pipes: a daemon thread blocked on a buffered reader can abort the
        # interpreter at exit ("could not acquire lock ... at interpreter shutdown").
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0
        )
        self._process = process
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(
            target=_drain_stdout, args=(process, lines), name="fake-openai-stdout", daemon=True
        ).start()
        try:
            line = lines.get(timeout=self._startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"fake OpenAI server did not start within {self._startup_timeout} s"
            ) from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(
                f"fake OpenAI server failed to start (exit code {process.poll()}, output {text!r})"
            )
        self._port = int(json.loads(text[len(READY_PREFIX) :])["port"])
        return self

    def stop(self) -> None:
        """Terminate the server process and wait for it (kill after 3 s); idempotent."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort for a server that was never stopped; may run during interpreter exit.
        if getattr(self, "_process", None) is not None:
            with contextlib.suppress(Exception):
                self.stop()

    # -- properties --------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return _base_url(self._host, self.port)

    @property
    def pid(self) -> int:
        """Process id of the server process."""
        if self._process is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return self._process.pid

    # -- control plane -----------------------------------------------------

    def stats(self) -> ServerStats:
        """Return the current request counters."""
        data = self._control("GET", "stats")
        return ServerStats(
            requests=int(data["requests"]),
            in_flight=int(data["in_flight"]),
            max_in_flight=int(data["max_in_flight"]),
            by_status={int(k): int(v) for k, v in data["by_status"].items()},
        )

    def requests(self) -> list[RecordedRequest]:
        """Return the recorded API requests (at most the last 100,000), oldest first."""
        return [RecordedRequest(**item) for item in self._control("GET", "requests")]

    def reset(self) -> None:
        """Zero the counters, clear the records and the per-prompt ``times`` counters."""
        self._control("POST", "reset", {})

    def configure(self, **settings: float) -> None:
        """Change server-wide settings at run time, e.g. ``configure(latency=0.2)``.

        Parameters:
            settings: Any field of :class:`ServerSettings` (currently ``latency``).

        Raises:
            ValueError: Unknown setting or invalid value.
        """
        self._settings.update(settings)  # validates before the round trip
        self._control("POST", "config", settings)

    def _control(self, method: str, name: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        url = f"{self.base_url[: -len('/v1')]}/_control/{name}"
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": _JSON})
        try:
            with _NO_PROXY_OPENER.open(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code == 400:
                raise ValueError(detail) from None
            raise RuntimeError(f"control request {name} failed: {exc.code} {detail}") from None


def _drain_stdout(process: subprocess.Popen[bytes], lines: queue.Queue[bytes]) -> None:
    """Hand the first stdout line (or b"" at EOF) to ``lines``, then discard the rest."""
    assert process.stdout is not None
    try:
        lines.put(process.stdout.readline())
        while process.stdout.read(65536):
            pass
    except (OSError, ValueError):
        lines.put(b"")
