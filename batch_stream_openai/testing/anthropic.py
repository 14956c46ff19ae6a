"""The fake server's Anthropic API: Messages, and Message Batches on a clock (child side).

Shapes follow the anthropic SDK's types (`Message`, `MessageBatch`,
`MessageBatchIndividualResponse`, `ErrorResponse`). Every call needs an ``x-api-key``
(or an ``Authorization: Bearer``) and an ``anthropic-version`` header, as the real API's
do (401 and 400 without).

A message is answered as the same prompt sent to Chat Completions would be (directives,
latency, rate limits and faults included), in Anthropic's shape. A batch
(``POST /v1/messages/batches``, up to 100,000 requests and 256 MB) is ``in_progress``
over `ServerSettings.batch_seconds`, its requests answered in order as time passes, then
``ended`` with a ``results_url`` whose JSONL lists every request once, in another order
than they were sent (the real API promises none): ``succeeded``, ``errored`` (a
directive's status), ``canceled`` (after a cancel) or ``expired`` (`batch_expire`: the
next N batches expire half way).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .settings import ServerSettings

__all__ = ["CHAT_PATH", "MAX_REQUESTS", "MessageBatches", "message_batch_route", "messages_route"]

CHAT_PATH = "/v1/chat/completions"  # what a message is answered as
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 2**20
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# How a line is answered: a Chat Completions body in, (status, answer or error body) out.
ChatAnswer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def anthropic_error(status: int, message: str) -> web.Response:
    """An error as the Anthropic API writes one."""
    return _json(status, _error_object(status, message))


def _error_object(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error = {"type": kind, "message": message}
    return {"type": "error", "error": error, "request_id": f"req_{abs(hash(message)) % 10**12}"}


def refused(request: web.BaseRequest) -> web.Response | None:
    """The 401 or 400 of a call without its key (``x-api-key``, or ``Authorization:
    Bearer`` as the SDK sends it since 2.0) or its ``anthropic-version``, else None."""
    bearer = request.headers.get("authorization", "").startswith("Bearer ")
    if not (request.headers.get("x-api-key") or bearer):
        return anthropic_error(401, "x-api-key header is required")
    if not request.headers.get("anthropic-version"):
        return anthropic_error(400, "anthropic-version: header is required")
    return None


def as_chat(params: Any) -> dict[str, Any]:
    """A Messages request as the Chat Completions body it is answered as; raises
    `ValueError` with the API's message for what the real API refuses."""
    if not isinstance(params, dict):
        raise ValueError("params: Input should be a valid dictionary")
    if not isinstance(params.get("model"), str):
        raise ValueError("model: Field required")
    if not isinstance(params.get("max_tokens"), int) or params["max_tokens"] < 1:
        raise ValueError("max_tokens: Field required")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: at least one message is required")
    # Content blocks read as Chat Completions parts do (their text; cache_control ignored).
    chat = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    if system := params.get("system"):
        chat.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": params["model"], "messages": chat}
    # Tools and a JSON schema (``output_config.format``) are answered as Chat's would be.
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and "name" in t]
    if tools:
        functions = [{"name": t["name"], "parameters": t.get("input_schema")} for t in tools]
        body["tools"] = [{"type": "function", "function": f} for f in functions]
    output = (params.get("output_config") or {}).get("format") or {}
    if output.get("type") == "json_schema":
        inner = {"name": "output", "schema": output.get("schema") or {}}
        body["response_format"] = {"type": "json_schema", "json_schema": inner}
    return body


def as_message(chat: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions answer as the `Message` Anthropic's API gives."""
    choice = chat["choices"][0]
    usage = chat.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    stop = {"length": "max_tokens", "tool_calls": "tool_use"}.get(choice["finish_reason"])
    return {
        "id": f"msg_{chat['id'].rsplit('-', 1)[-1]}",
        "type": "message",
        "role": "assistant",
        "model": chat.get("model", ""),
        "content": _blocks(choice["message"]),
        "stop_reason": stop or "end_turn",
        "stop_sequence": None,
        # Anthropic's input_tokens are those not read from the cache.
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0) - cached,
            "output_tokens": usage.get("completion_tokens", 0),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        },
    }


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A Chat Completions message's text and tool calls as content blocks."""
    blocks = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        arguments = json.loads(function["arguments"])
        use = {"type": "tool_use", "id": f"toolu_{call['id']}", "name": function["name"]}
        blocks.append({**use, "input": arguments})
    return blocks or [{"type": "text", "text": ""}]


async def messages_route(
    request: web.BaseRequest,
    body: Any,
    answer: Callable[[dict[str, Any]], Awaitable[web.StreamResponse | None]],
) -> web.StreamResponse | None:
    """``POST /v1/messages``: `answer` answers it as Chat Completions (waits, faults and
    limits included); the answer and its errors are put in Anthropic's shape."""
    if (refusal := refused(request)) is not None:
        return refusal
    if request.method != "POST":
        return anthropic_error(405, f"Method {request.method} not allowed")
    try:
        chat = as_chat(body)
    except ValueError as error:
        return anthropic_error(400, str(error))
    response = await answer(chat)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response  # a dropped connection, a slow body: as they are
    data = json.loads(response.body or b"{}")
    if response.status != 200:
        message = str((data.get("error") or {}).get("message", "error"))
        return anthropic_error(response.status, message)
    return _json(200, as_message(data), dict(response.headers))


@dataclass
class _Batch:
    id: str
    created: float  # monotonic
    created_at: float  # epoch seconds
    requests: list[dict[str, Any]]
    expires: bool = False
    cancelled: float | None = None  # monotonic time of the cancel request
    results: list[dict[str, Any]] = field(default_factory=list)  # in the order done
    ended: float | None = None  # monotonic


class MessageBatches:
    """Every Message Batch of one fake server, advanced lazily when read."""

    def __init__(self, settings: ServerSettings, answer: ChatAnswer) -> None:
        self._settings = settings
        self._answer = answer
        self._batches: dict[str, _Batch] = {}
        self._created: list[_Batch] = []  # every batch, deleted ones too (for tests)
        self._ids = itertools.count(1)
        self.calls: list[str] = []  # "POST /v1/messages/batches", ... for tests

    def records(self) -> dict[str, Any]:
        """What tests read: each batch created (its requests' custom ids, those that
        succeeded or errored, those paid for, whether it was deleted) and every call."""
        batches = []
        for batch in self._created:
            self._advance(batch)
            kinds = {r["custom_id"]: r["result"]["type"] for r in batch.results}
            batches.append({
                "id": batch.id,
                "custom_ids": [r["custom_id"] for r in batch.requests],
                "answered": [c for c, kind in kinds.items() if kind in ("succeeded", "errored")],
                "paid": [c for c, kind in kinds.items() if kind == "succeeded"],
                "expired": batch.expires,
                "deleted": batch.id not in self._batches,
                "models": sorted({r["params"]["model"] for r in batch.requests}),
                "first_params": batch.requests[0]["params"],
            })  # fmt: skip
        return {"message_batches": batches, "message_calls": list(self.calls)}

    def create(self, body: Any) -> tuple[int, dict[str, Any]]:
        """(status, the MessageBatch or an error object)."""
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return 400, _error_object(400, "requests: at least one request is required")
        if len(requests) > MAX_REQUESTS:
            return 400, _error_object(400, f"requests: at most {MAX_REQUESTS} requests")
        seen: set[str] = set()
        for number, each in enumerate(requests):
            custom_id = each.get("custom_id") if isinstance(each, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                return 400, _error_object(400, f"requests.{number}.custom_id: invalid")
            if custom_id in seen:
                return 400, _error_object(400, f"Duplicate custom_id: {custom_id!r}")
            seen.add(custom_id)
        batch = _Batch(f"msgbatch_{next(self._ids):024d}", time.monotonic(), time.time(), requests)
        if self._settings.batch_expire >= 1:
            self._settings.batch_expire -= 1
            batch.expires = True
        self._batches[batch.id] = batch
        self._created.append(batch)
        return 200, self._object(batch)

    def get(self, batch_id: str, base: str) -> dict[str, Any] | None:
        batch = self._batches.get(batch_id)
        return None if batch is None else self._object(batch, base)

    def listing(self, base: str, limit: int, after_id: str | None) -> dict[str, Any]:
        ids = list(reversed(self._batches))  # newest first
        start = ids.index(after_id) + 1 if after_id in ids else 0
        page = [self._object(self._batches[i], base) for i in ids[start : start + limit]]
        return {
            "data": page,
            "has_more": start + limit < len(ids),
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    def cancel(self, batch_id: str, base: str) -> dict[str, Any] | None:
        batch = self._batches.get(batch_id)
        if batch is None:
            return None
        self._advance(batch)
        if batch.ended is None and batch.cancelled is None:
            batch.cancelled = time.monotonic()
        return self._object(batch, base)

    def delete(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        batch = self._batches.get(batch_id)
        if batch is None:
            return 404, _error_object(404, f"No such batch: {batch_id}")
        self._advance(batch)
        if batch.ended is None:
            message = "Batch is still in progress: cancel it, then delete it once it ended"
            return 400, _error_object(400, message)
        del self._batches[batch_id]
        return 200, {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes | None:
        """The ended batch's results, JSONL, in another order than sent (None: none yet)."""
        batch = self._batches.get(batch_id)
        if batch is None:
            return None
        self._advance(batch)
        if batch.ended is None:
            return None
        order = sorted(batch.results, key=lambda r: hash((batch.id, r["custom_id"])))
        return b"".join(json.dumps(r).encode() + b"\n" for r in order)

    def _advance(self, batch: _Batch) -> None:
        """Answer what `batch`'s clock says is done; end it when it is over."""
        if batch.ended is not None:
            return
        duration = max(self._settings.batch_seconds, 0.001)
        now = time.monotonic()
        until = now if batch.cancelled is None else batch.cancelled
        if batch.expires:
            until = min(until, batch.created + 0.5 * duration)
        share = min(1.0, (until - batch.created) / duration)
        while len(batch.results) < int(share * len(batch.requests) + 1e-9):
            batch.results.append(self._result(batch.requests[len(batch.results)]))
        end = batch.created + (0.5 if batch.expires else 1.0) * duration
        if batch.cancelled is not None:
            end = min(end, batch.cancelled)
        if now >= end:  # over: cancelled, expired or done, at `end`
            unanswered = "canceled" if batch.cancelled is not None else "expired"
            for each in batch.requests[len(batch.results) :]:
                result = {"custom_id": each["custom_id"], "result": {"type": unanswered}}
                batch.results.append(result)
            batch.ended = end

    def _result(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            status, data = self._answer(CHAT_PATH, as_chat(request.get("params")))
        except ValueError as error:
            status, data = 400, {"error": {"message": str(error)}}
        if status == 200:
            result: dict[str, Any] = {"type": "succeeded", "message": as_message(data)}
        else:
            message = str((data.get("error") or {}).get("message", "error"))
            result = {"type": "errored", "error": _error_object(status, message)}
        return {"custom_id": request["custom_id"], "result": result}

    def _object(self, batch: _Batch, base: str = "") -> dict[str, Any]:
        self._advance(batch)
        kinds = [r["result"]["type"] for r in batch.results]
        ended = batch.ended is not None
        status = "ended" if ended else "in_progress" if batch.cancelled is None else "canceling"
        wall = batch.created_at - batch.created  # monotonic -> epoch
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": len(batch.requests) - len(batch.results),
                **{k: kinds.count(k) for k in ("succeeded", "errored", "canceled", "expired")},
            },
            "created_at": _time(batch.created_at),
            "expires_at": _time(batch.created_at + 86400),
            "ended_at": _time(wall + batch.ended) if ended and batch.ended else None,
            "cancel_initiated_at": _time(wall + batch.cancelled) if batch.cancelled else None,
            "archived_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


def _time(epoch: float) -> str:
    """RFC 3339, as the API writes its timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


async def message_batch_route(
    batches: MessageBatches, request: web.BaseRequest, path: str
) -> web.Response:
    """``/v1/messages/batches[/{id}[/cancel|/results]]``."""
    if (refusal := refused(request)) is not None:
        return refusal
    batches.calls.append(f"{request.method} {path}")
    parts = path.strip("/").split("/")[3:]  # [], [id], [id, "cancel"], [id, "results"]
    base, method = f"{request.scheme}://{request.host}", request.method
    found: dict[str, Any] | None = None
    if not parts and method == "POST":
        if request.content_length and request.content_length > MAX_BYTES:
            return anthropic_error(413, "Request exceeds the maximum allowed size of 256 MB")
        try:
            body = await request.clone(client_max_size=MAX_BYTES + 2**20).json()
        except ValueError:
            return anthropic_error(400, "We could not parse the JSON body of your request.")
        status, found = batches.create(body)
        if status != 200:
            return _json(status, found)
        found = batches.get(found["id"], base)
    elif not parts and method == "GET":
        limit = int(request.query.get("limit", "20"))
        found = batches.listing(base, limit, request.query.get("after_id"))
    elif len(parts) == 1 and method == "GET":
        found = batches.get(parts[0], base)
    elif len(parts) == 1 and method == "DELETE":
        status, found = batches.delete(parts[0])
        return _json(status, found)
    elif parts[1:] == ["cancel"] and method == "POST":
        found = batches.cancel(parts[0], base)
    elif parts[1:] == ["results"] and method == "GET":
        data = batches.results(parts[0])
        if data is not None:
            return web.Response(body=data, content_type="application/binary")
    if found is None:
        return anthropic_error(404, f"No such object: {method} {path}")
    return _json(200, found)


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> web.Response:
    kept = {k: v for k, v in (headers or {}).items() if k.lower().startswith("x-")}
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json", headers=kept
    )
