"""The fake server's aiohttp application (child side): routes, faults, limits, control.

One `_App` per server process, on an aiohttp low-level server. API routes answer like
the real API; ``/_control/`` routes let the parent read counters and records, reset
them and change settings at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .answers import (
    STRUCTURED_TYPES,
    chat_payload,
    chat_prompts,
    embeddings_payload,
    error_body,
    json_for_schema,
    requested_schema,
    responses_payload,
    responses_prompts,
    tokens,
    tool_call_of,
)
from .anthropic import CHAT_PATH, MessageBatches, message_batch_route, messages_route
from .azure import AZURE_PREFIX, azure_path
from .batches import BatchJobs, batch_route
from .directives import FAULT_KINDS, Directive, expected_answer, parse_directives
from .faults import JSON, error_response, fault_response, slow_response
from .gemini import GeminiBatches, gemini_batch_route, generate_route, is_gemini_path
from .settings import ServerSettings
from .state import ServerState

__all__ = ["Handler", "make_handler"]

# What aiohttp's low-level server calls with each request.
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse | None]]

_SHAPE_KINDS = frozenset({"refuse", "incomplete", "no_text", "tool_call", "bad_json"})
_BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "html": (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "empty": (b"", JSON),
    "list": (b'[{"id": "not an object"}]', JSON),
    "invalid_utf8": (b'{"text": "\xff\xfe broken"}', JSON),
}


@dataclasses.dataclass
class _Plan:
    """How to answer one request, from its directives."""

    latency: float = 0.0
    fault: Directive | None = None
    slow_body: float = 0.0
    shape: frozenset[str] = frozenset()  # refuse / incomplete / no_text / echo_auth
    bad_body: str | None = None
    cached_tokens: int = 0  # of the prompt, those the prefix cache held


class _App:
    """Request handler of the fake server (one instance per process)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        state.jobs = BatchJobs(state.settings, self.answer_line)
        state.message_batches = MessageBatches(state.settings, self.answer_line)
        state.gemini_batches = GeminiBatches(state.settings, self.answer_line)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_control/"):
            return await self._control(request, path)
        if path.startswith(AZURE_PREFIX):
            mapped = azure_path(request, path)
            if not isinstance(mapped, str):
                return mapped
            path = mapped
        if path.startswith(("/v1/files", "/v1/batches")):
            self.state.jobs.calls.append(f"{request.method} {request.path}")
            return await batch_route(self.state.jobs, request, path)
        if path.startswith("/v1/messages/batches"):
            return await message_batch_route(self.state.message_batches, request, path)
        if is_gemini_path(path):
            # `is not None`: an aiohttp response is a mapping, falsy while empty in older
            # aiohttp (3.9, the oldest allowed, has __len__ and no __bool__).
            routed = await gemini_batch_route(self.state.gemini_batches, request, path)
            if routed is not None:
                return routed
        state = self.state
        epoch = state.epoch
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        record: dict[str, Any] | None = None
        status = 0
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            record = {
                "path": request.path,
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
        if path == "/v1/messages":  # Anthropic's and Gemini's: answered as Chat Completions
            return await messages_route(request, body, lambda c: self._api(request, CHAT_PATH, c))
        if is_gemini_path(path):
            return await generate_route(request, body, lambda c: self._api(request, CHAT_PATH, c))
        if path == "/v1/chat/completions":
            prompts: Callable[[dict[str, Any]], tuple[str, str, int]] = chat_prompts
        elif path == "/v1/responses":
            prompts = responses_prompts
        elif path == "/v1/embeddings":
            prompts = _embedding_prompts
        else:
            return error_response(404, f"Invalid URL ({request.method} {path})")
        if request.method != "POST":
            return error_response(405, f"Method {request.method} not allowed for {path}")
        if not isinstance(body, dict):
            return error_response(400, "We could not parse the JSON body of your request.")
        if body.get("stream"):
            return error_response(400, "stream=true is not supported by the fake server")
        try:
            system, user, prompt_chars = prompts(body)
            plan = self._plan(user, parse_directives(user))
        except ValueError as exc:
            return error_response(400, str(exc))
        limited = self._rate_limit(prompt_chars) or self._flex_unavailable(body)
        if limited is not None:
            return limited
        capacity = int(self.state.settings.capacity)
        if capacity < 1:
            return await self._respond(request, path, body, (system, user, prompt_chars), plan)
        gate = self.state.gate
        if not await gate.acquire(capacity, int(self.state.settings.queue_limit)):
            return error_response(503, "The server is overloaded: its queue is full. Retry later.")
        try:
            return await self._respond(request, path, body, (system, user, prompt_chars), plan)
        finally:
            gate.release()

    async def _respond(
        self,
        request: web.BaseRequest,
        path: str,
        body: dict[str, Any],
        prompts: tuple[str, str, int],
        plan: _Plan,
    ) -> web.StreamResponse | None:
        """Prefill what the prefix cache lacks and wait the request's latency (its
        service time), then answer as `plan` says."""
        await self._prefill(prompts, plan)
        if plan.latency > 0:
            await asyncio.sleep(plan.latency)
        if plan.fault is not None:
            return await fault_response(request, plan.fault, echo_auth="echo_auth" in plan.shape)
        if plan.bad_body is not None:
            data, kind = _BAD_BODIES[plan.bad_body]
            return web.Response(body=data, headers={"content-type": kind})
        try:
            payload = self._answer(path, body, *prompts, plan)
        except ValueError as exc:
            return error_response(400, str(exc))
        if "echo_auth" in plan.shape:
            payload["echo"] = {"authorization": request.headers.get("authorization")}
        data = json.dumps(payload).encode()
        headers = {"x-request-id": f"req_{payload['id']}", **self._rate_limit_headers()}
        if plan.slow_body > 0:
            return await slow_response(request, data, headers, plan.slow_body)
        return web.Response(body=data, content_type=JSON, headers=headers)

    async def _prefill(self, prompts: tuple[str, str, int], plan: _Plan) -> None:
        """Read the prompt as a GPU server does: what its prefix cache holds is skipped
        (and reported), the rest takes ``prefill_rate`` (`prefix_cache.py`)."""
        settings = self.state.settings
        if settings.prefix_cache <= 0 and settings.prefill_rate <= 0:
            return
        system, user, chars = prompts
        cache = self.state.prefixes
        cached, blocks = cache.lookup(f"{system}\n{user}", settings.prefix_cache)
        plan.cached_tokens = min(cached, tokens(chars))
        if settings.prefill_rate > 0:
            await asyncio.sleep((tokens(chars) - plan.cached_tokens) / settings.prefill_rate)
        if settings.prefix_cache > 0:
            cache.store(blocks, settings.prefix_cache)

    def answer_line(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """How a Batch API line is answered: as it would be online (no waiting)."""
        prompts = {
            "/v1/chat/completions": chat_prompts,
            "/v1/responses": responses_prompts,
            "/v1/embeddings": _embedding_prompts,
        }[path]
        try:
            system, user, chars = prompts(body)
            plan = self._plan(user, parse_directives(user))
            if plan.fault is not None:
                status = int(plan.fault.value) if plan.fault.kind == "status" else 500
                message = f"Injected fault: HTTP {status}"
                return status, json.loads(error_body(status, message, plan.fault.code))
            return 200, self._answer(path, body, system, user, chars, plan)
        except ValueError as exc:
            return 400, json.loads(error_body(400, str(exc)))

    def _answer(
        self, path: str, body: dict[str, Any], system: str, user: str, chars: int, plan: _Plan
    ) -> dict[str, Any]:
        if path == "/v1/embeddings":
            payload = embeddings_payload(body)
            payload["id"] = f"emb_{next(self.state.ids)}"
            return payload
        return self._payload(path, body, system, user, chars, plan)

    def _flex_unavailable(self, body: dict[str, Any]) -> web.Response | None:
        """A 429 ``resource_unavailable`` for a flex request, while the setting says so."""
        settings = self.state.settings
        if body.get("service_tier") != "flex" or settings.flex_unavailable < 1:
            return None
        settings.flex_unavailable -= 1
        message = "Resource unavailable for the flex tier; try again later or use the default tier."
        data = error_body(429, message, "resource_unavailable")
        return web.Response(status=429, body=data, content_type=JSON)

    def _plan(self, user: str, directives: tuple[Directive, ...]) -> _Plan:
        plan = _Plan(latency=self.state.settings.latency)
        if not directives:
            return plan
        index = self._count(user, directives)
        shape = set()
        for d in directives:
            if d.times is not None and index >= d.times:
                continue
            if d.kind == "latency" or (d.kind == "straggle" and index == 0):
                plan.latency += d.value
            elif d.kind == "slow_body":
                plan.slow_body = d.value
            elif d.kind == "body":
                plan.bad_body = d.word
            elif d.kind in _SHAPE_KINDS or d.kind == "echo_auth":
                shape.add(d.kind)
            elif plan.fault is None and d.kind in FAULT_KINDS:
                plan.fault = d
        plan.shape = frozenset(shape)
        return plan

    def _payload(
        self, path: str, body: dict[str, Any], system: str, user: str, chars: int, plan: _Plan
    ) -> dict[str, Any]:
        if path == "/v1/chat/completions":
            fmt = body.get("response_format")
        else:
            text_config = body.get("text")
            fmt = text_config.get("format") if isinstance(text_config, dict) else None
        structured = isinstance(fmt, dict) and fmt.get("type") in STRUCTURED_TYPES
        text = expected_answer(system, user, structured)
        schema = requested_schema(path, body)
        if schema is not None:
            text = json.dumps(json_for_schema(schema, expected_answer(system, user)))
        if "bad_json" in plan.shape:
            text = json.dumps({"unexpected": True}) if structured else "not JSON at all"
        tool = (
            tool_call_of(body, expected_answer(system, user)) if "tool_call" in plan.shape else None
        )
        build = chat_payload if path == "/v1/chat/completions" else responses_payload
        return build(next(self.state.ids), body, text, chars, plan.shape, tool, plan.cached_tokens)

    def _rate_limit(self, prompt_chars: int) -> web.Response | None:
        """The 429 answer when the request is over the server's RPM/TPM budget, else None."""
        settings, state = self.state.settings, self.state
        waits = []
        if settings.rpm > 0:
            waits.append(state.request_bucket.take(settings.rpm, 1))
        if settings.tpm > 0:
            # The answer is about as long as the prompt for these echo answers.
            waits.append(state.token_bucket.take(settings.tpm, 2 * tokens(prompt_chars)))
        wait = max(waits, default=0.0)
        if wait <= 0:
            return None
        headers = {"retry-after-ms": f"{wait * 1000:.0f}", **self._rate_limit_headers()}
        body = error_body(429, "Rate limit reached (fake server budget).")
        return web.Response(status=429, body=body, content_type=JSON, headers=headers)

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
        if all(d.times is None and d.kind != "straggle" for d in directives):
            return 0
        index = self.state.seen.get(user, 0)
        self.state.seen[user] = index + 1
        return index

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
                "queued": state.gate.queued,
                "max_queued": state.gate.max_queued,
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
                    return error_response(400, str(exc))
            result = dataclasses.asdict(state.settings)
        elif name == "batches" and method == "GET":
            jobs = {"jobs": state.jobs.records(), "calls": state.jobs.calls}
            result = {**jobs, **state.message_batches.records(), **state.gemini_batches.records()}
        elif name == "health" and method == "GET":
            result = {"ok": True, "pid": os.getpid()}
        else:
            return error_response(404, f"Invalid URL ({method} {path})")
        return web.Response(body=json.dumps(result).encode(), content_type=JSON)


def _embedding_prompts(body: dict[str, Any]) -> tuple[str, str, int]:
    """Embeddings have no prompts: their directives live in the (first) input text."""
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
    texts = [t for t in texts if isinstance(t, str)]
    return "", texts[0] if texts else "", sum(len(t) for t in texts)


def make_handler(
    settings: ServerSettings,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The request handler of one server process, starting with `settings`."""
    return _App(ServerState(settings)).handle
