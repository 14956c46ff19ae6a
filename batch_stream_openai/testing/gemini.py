"""The fake server's Gemini API: generateContent, and batch mode with inline requests
(child side).

Shapes follow the google-genai SDK's wire names (``GenerateContentResponse``, the batch
operation with its ``GenerateContentBatch`` metadata, ``google.rpc.Status`` errors). A
call needs an API key (``x-goog-api-key``, or ``?key=``). A request is answered as the
same prompt sent to Chat Completions would be (directives, waits, limits and faults).

A batch (``POST /v1beta/models/{model}:batchGenerateContent``) is ``RUNNING`` over
`ServerSettings.batch_seconds`, then ``SUCCEEDED`` with an inline response (or an error)
per request, each with the request's ``metadata`` (an error as a ``google.rpc.Status``,
its code a gRPC code); a batch of an uploaded file (`gemini_files.py`) answers in a file
of ``{"key", "response"}`` lines instead. ``batch_expire`` makes the next N
batches ``EXPIRED`` half way (no responses), ``batch_stuck`` the next N stay ``RUNNING``
for ever, created two days ago (python-genai #2974); a cancelled one is ``CANCELLED``
with what it had answered.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .gemini_files import (
    GeminiFiles,
    gemini_error,
    gemini_file_route,
    gemini_json,
    is_file_path,
    rfc3339,
    rpc_status,
)
from .settings import ServerSettings

__all__ = ["GeminiBatches", "gemini_batch_route", "generate_route", "is_gemini_path"]

_CHAT_PATH = "/v1/chat/completions"
# A line's error is a google.rpc.Status: its code is a gRPC code.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14, 504: 4}
_STUCK_AGE_S = 49 * 3600.0
ChatAnswer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def is_gemini_path(path: str) -> bool:
    return path.startswith("/v1beta/") or is_file_path(path)


def _keyless(request: web.BaseRequest) -> web.Response | None:
    if request.headers.get("x-goog-api-key") or request.query.get("key"):
        return None
    return gemini_error(403, "Method doesn't allow unregistered callers. Please use an API key.")


def as_chat(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """A ``GenerateContentRequest`` as the Chat Completions body it is answered as (its
    fields in the API's camelCase or in snake_case, as LiteLLM sends them: both parse)."""
    messages: list[dict[str, Any]] = []
    system = _field(request, "systemInstruction") or {}
    if parts := system.get("parts"):
        messages.append({"role": "system", "content": _text(parts)})
    for content in request.get("contents") or []:
        role = "assistant" if content.get("role") == "model" else "user"
        messages.append({"role": role, "content": _text(content.get("parts") or [])})
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("contents: the last content must be the user's")
    body: dict[str, Any] = {"model": model.removeprefix("models/"), "messages": messages}
    tools = request.get("tools") or []
    declared = [f for tool in tools for f in _field(tool, "functionDeclarations") or []]
    if declared:
        functions = [
            {
                "name": f["name"],
                "parameters": _field(f, "parametersJsonSchema") or f.get("parameters"),
            }
            for f in declared
        ]
        body["tools"] = [{"type": "function", "function": f} for f in functions]
    config = _field(request, "generationConfig") or {}
    schema = _field(config, "responseJsonSchema") or _field(config, "responseSchema")
    if _field(config, "responseMimeType") == "application/json" and schema:
        inner = {"name": "output", "schema": schema}
        body["response_format"] = {"type": "json_schema", "json_schema": inner}
    return body


def _field(data: dict[str, Any], camel: str) -> Any:
    """`data`'s field `camel`, or its snake_case spelling."""
    if camel in data:
        return data[camel]
    return data.get("".join(f"_{c.lower()}" if c.isupper() else c for c in camel))


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(str(part.get("text", "")) for part in parts)


def as_response(chat: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions answer as a ``GenerateContentResponse``."""
    choice = chat["choices"][0]
    message = choice["message"]
    parts: list[dict[str, Any]] = [{"text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        parts.append(
            {"functionCall": {"name": function["name"], "args": json.loads(function["arguments"])}}
        )
    usage = chat.get("usage") or {}
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts or [{"text": ""}]},
                "finishReason": "MAX_TOKENS" if choice["finish_reason"] == "length" else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": usage.get("prompt_tokens", 0),
            "candidatesTokenCount": usage.get("completion_tokens", 0),
            "totalTokenCount": usage.get("total_tokens", 0),
            "cachedContentTokenCount": (usage.get("prompt_tokens_details") or {}).get(
                "cached_tokens", 0
            ),
        },
        "modelVersion": chat.get("model", ""),
        "responseId": str(chat.get("id", "")),
    }


async def generate_route(
    request: web.BaseRequest,
    body: Any,
    answer: Callable[[dict[str, Any]], Awaitable[web.StreamResponse | None]],
) -> web.StreamResponse | None:
    """``POST /v1beta/models/{model}:generateContent``, answered as Chat Completions."""
    if (refusal := _keyless(request)) is not None:
        return refusal
    model = request.path.removeprefix("/v1beta/").removesuffix(":generateContent")
    try:
        chat = as_chat(model, body if isinstance(body, dict) else {})
    except ValueError as error:
        return gemini_error(400, str(error))
    response = await answer(chat)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response  # a dropped connection, a slow body: as they are
    data = json.loads(response.body or b"{}")
    if response.status != 200:
        return gemini_error(response.status, str((data.get("error") or {}).get("message")))
    return gemini_json(as_response(data))


@dataclass
class _Batch:
    id: str
    model: str
    display_name: str
    created: float  # monotonic
    created_at: float  # epoch seconds
    requests: list[dict[str, Any]]  # {"request", "metadata"} inline; {"key", "request"} a file's
    from_file: bool = False  # its requests came in a file: its responses go in one
    expires: bool = False
    stuck: bool = False
    cancelled: float | None = None  # monotonic
    responses: list[dict[str, Any]] | None = None  # once final
    responses_file: str | None = None  # their file, for a batch from a file
    state: str = "BATCH_STATE_RUNNING"


@dataclass
class GeminiBatches:
    """Every batch of one fake server, advanced lazily when read."""

    settings: ServerSettings
    answer: ChatAnswer
    files: GeminiFiles = field(default_factory=GeminiFiles)
    _batches: dict[str, _Batch] = field(default_factory=dict)
    _created: list[_Batch] = field(default_factory=list)  # deleted ones too (for tests)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    calls: list[str] = field(default_factory=list)

    def create(self, model: str, body: Any) -> tuple[int, dict[str, Any]]:
        batch = body.get("batch") if isinstance(body, dict) else None
        source = (batch or {}).get("inputConfig") or {}
        requests = (source.get("requests") or {}).get("requests")
        if (name := source.get("fileName")) is not None:
            data = self.files.read(str(name))
            if data is None:
                return 404, rpc_status(404, f"File {name} was not found.")
            requests = [json.loads(line) for line in data.splitlines() if line.strip()]
        if not isinstance(requests, list) or not requests:
            return 400, rpc_status(400, "batch.input_config.requests is empty")
        settings = self.settings
        made = _Batch(
            f"{next(self._ids):016x}",
            model,
            str((batch or {}).get("displayName") or ""),
            time.monotonic(),
            time.time(),
            requests,
            from_file=name is not None,
        )
        if settings.batch_expire >= 1:
            settings.batch_expire -= 1
            made.expires = True
        elif settings.batch_stuck >= 1:
            settings.batch_stuck -= 1
            made.stuck, made.created_at = True, time.time() - _STUCK_AGE_S
        self._batches[made.id] = made
        self._created.append(made)
        return 200, self._operation(made)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        batch = self._batches.get(batch_id)
        return None if batch is None else self._operation(batch)

    def listing(self, page_size: int, token: str | None) -> dict[str, Any]:
        ids = list(reversed(self._batches))  # newest first
        start = int(token or 0)
        page = [self._operation(self._batches[i]) for i in ids[start : start + page_size]]
        more = start + page_size < len(ids)
        return {"operations": page, **({"nextPageToken": str(start + page_size)} if more else {})}

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        batch = self._batches.get(batch_id)
        if batch is None:
            return None
        self._advance(batch)
        if batch.responses is None:
            batch.cancelled = time.monotonic()
            self._advance(batch)
        return {}

    def delete(self, batch_id: str) -> dict[str, Any] | None:
        return {} if self._batches.pop(batch_id, None) is not None else None

    def records(self) -> dict[str, Any]:
        """What tests read: each batch (its keys, those answered, those paid for)."""
        batches = []
        for batch in self._created:
            self._advance(batch)
            done = batch.responses or []
            batches.append(
                {
                    "id": f"batches/{batch.id}",
                    "keys": [_key(r) for r in batch.requests],
                    "answered": [_key(r) for r in done],
                    "paid": [_key(r) for r in done if "response" in r],
                    "state": batch.state,
                    "deleted": batch.id not in self._batches,
                    "model": batch.model,
                    "first_request": batch.requests[0].get("request"),
                    "from_file": batch.from_file,
                }
            )
        files = {"gemini_files": self.files.names(), "gemini_deleted_files": self.files.deleted}
        return {"gemini_batches": batches, "gemini_calls": list(self.calls), **files}

    def _advance(self, batch: _Batch) -> None:
        if batch.responses is not None or batch.stuck:
            return
        duration = max(self.settings.batch_seconds, 0.001)
        now = time.monotonic()
        if batch.cancelled is not None:
            share = min(1.0, (batch.cancelled - batch.created) / duration)
            done = batch.requests[: int(share * len(batch.requests))]
            batch.responses, batch.state = self._answered(done), "BATCH_STATE_CANCELLED"
        elif batch.expires and now >= batch.created + 0.5 * duration:
            batch.responses, batch.state = [], "BATCH_STATE_EXPIRED"
        elif not batch.expires and now >= batch.created + duration:
            batch.responses, batch.state = self._answered(batch.requests), "BATCH_STATE_SUCCEEDED"
        if batch.from_file and batch.responses:  # a file of {"key", "response"} lines
            data = b"".join(json.dumps(line).encode() + b"\n" for line in batch.responses)
            batch.responses_file = self.files.put(data, f"responses of batches/{batch.id}")

    def _answered(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answered = []
        for each in requests:
            try:
                status, data = self.answer(_CHAT_PATH, as_chat("", each.get("request") or {}))
            except ValueError as error:
                status, data = 400, {"error": {"message": str(error)}}
            if status == 200:
                line: dict[str, Any] = {"response": as_response(data)}
            else:
                message = str((data.get("error") or {}).get("message", "error"))
                line = {"error": {"code": _GRPC_CODES.get(status, 2), "message": message}}
            named = {"key": each["key"]} if "key" in each else {"metadata": each.get("metadata")}
            answered.append({**line, **named})
        return answered

    def _operation(self, batch: _Batch) -> dict[str, Any]:
        self._advance(batch)
        final = batch.responses is not None
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": batch.model,
            "displayName": batch.display_name,
            "createTime": rfc3339(batch.created_at),
            "updateTime": rfc3339(time.time()),
            "state": batch.state,
            "name": f"batches/{batch.id}",
        }
        if final:
            metadata["endTime"] = rfc3339(time.time())
            if batch.responses_file is not None:
                metadata["output"] = {"responsesFile": batch.responses_file}
            elif not batch.from_file:
                metadata["output"] = {"inlinedResponses": {"inlinedResponses": batch.responses}}
        return {"name": f"batches/{batch.id}", "metadata": metadata, "done": final}


def _key(request: dict[str, Any]) -> Any:
    """A request's (or its response's) key: its own in a file, its metadata's inline."""
    return request.get("key") or (request.get("metadata") or {}).get("key")


async def gemini_batch_route(
    batches: GeminiBatches, request: web.BaseRequest, path: str
) -> web.Response | None:
    """Gemini's batch calls; None for a path that is not one (generateContent)."""
    method, rest = request.method, path.removeprefix("/v1beta/")
    if rest.startswith("models/") and rest.endswith(":generateContent"):
        return None
    uploading = "upload_id" in request.query  # the upload URL is the chunks' credential
    if not uploading and (refusal := _keyless(request)) is not None:
        return refusal
    batches.calls.append(f"{method} {path}")
    if is_file_path(path):
        return await gemini_file_route(batches.files, request, path)
    found: dict[str, Any] | None = None
    if rest.startswith("models/") and rest.endswith(":batchGenerateContent") and method == "POST":
        status, found = batches.create(
            rest.removesuffix(":batchGenerateContent"), await request.json()
        )
        if status != 200:
            return gemini_json(found, status)
    elif rest == "batches" and method == "GET":
        found = batches.listing(
            int(request.query.get("pageSize", "50")), request.query.get("pageToken")
        )
    elif rest.startswith("batches/") and rest.endswith(":cancel") and method == "POST":
        found = batches.cancel(rest.removeprefix("batches/").removesuffix(":cancel"))
    elif rest.startswith("batches/") and method == "GET":
        found = batches.get(rest.removeprefix("batches/"))
    elif rest.startswith("batches/") and method == "DELETE":
        found = batches.delete(rest.removeprefix("batches/"))
    if found is None:
        return gemini_error(404, f"No such object: {method} {path}")
    return gemini_json(found)
