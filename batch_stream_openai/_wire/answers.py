"""Reading an answer body: its text, its usage, and the `Result` it makes (pure, light).

Used by the workers for every answer, and by the parent for answers that come another
way (the response cache, the Batch API's output files), so nothing here imports the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import errors
from ..request import (
    CHAT_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    RESPONSES_ENDPOINT,
    AnyRequest,
    RawRequest,
    is_model_class,
)
from ..results import Result, ToolCall, Usage
from .bodies import http_call, wants_json

__all__ = [
    "Reading",
    "StoredAnswer",
    "answer_result",
    "answer_text",
    "chat_text",
    "reading_of",
    "responses_text",
    "tool_calls_of",
    "usage_of",
]


@dataclass(frozen=True, slots=True)
class Reading:
    """What reading an answer needs to know of its request (hashable: many share one).

    Attributes:
        endpoint: the endpoint the request went to.
        raw: a `RawRequest` (an answer without text then reads as ``""``).
        schema_class: the pydantic class the text must validate as, or None.
        wants_json: the body asks for JSON (the text is then parsed into `Result.parsed`).
        single_input: an embeddings body with one string (its value is one vector).
    """

    endpoint: str
    raw: bool = False
    schema_class: type | None = None
    wants_json: bool = False
    single_input: bool = False


def reading_of(request: AnyRequest, endpoint: str, body: Mapping[str, Any]) -> Reading:
    """How to read the answer to `request`, sent as `body` to `endpoint`."""
    schema_class = getattr(request, "response_format", None)
    return Reading(
        endpoint,
        raw=isinstance(request, RawRequest),
        schema_class=schema_class if is_model_class(schema_class) else None,
        wants_json=wants_json(endpoint, dict(body)),
        single_input=isinstance(body.get("input"), str),
    )


def chat_text(completion: dict[str, Any]) -> str:
    """``choices[0].message.content`` of a Chat Completions answer."""
    choices = completion.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    content = message.get("content")
    if isinstance(content, str):
        return content
    if message.get("refusal"):
        raise _refused(str(message["refusal"]))
    if calls := tool_calls_of(CHAT_ENDPOINT, completion):
        raise _called_tools(calls)
    reason = choices[0].get("finish_reason") if choices else "no choices"
    raise errors.EmptyResponseError(f"the model returned no text (finish_reason: {reason})")


def _refused(refusal: str) -> errors.RefusalError:
    return errors.RefusalError(f"the model refused: {refusal}", refusal=refusal)


def _called_tools(calls: tuple[ToolCall, ...]) -> errors.EmptyResponseError:
    names = ", ".join(call.name for call in calls)
    return errors.EmptyResponseError(
        f"the model answered with tool calls ({names}) instead of text: pass "
        "return_results=True and read them from Result.tool_calls"
    )


def tool_calls_of(endpoint: str, data: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """The tool calls in an answer, arguments parsed from their JSON."""
    if endpoint == CHAT_ENDPOINT:
        choices = data.get("choices") or []
        message = (choices[0].get("message") or {}) if choices else {}
        calls = [call.get("function") or {} for call in message.get("tool_calls") or []]
        ids = [call.get("id") for call in message.get("tool_calls") or []]
    else:
        items = [i for i in data.get("output") or [] if i.get("type") == "function_call"]
        calls, ids = items, [i.get("call_id") for i in items]
    return tuple(
        ToolCall(call_id, str(call.get("name")), _arguments(call.get("arguments")))
        for call_id, call in zip(ids, calls, strict=True)
    )


def _arguments(raw: object) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def responses_text(response: dict[str, Any]) -> str:
    """The SDK's ``Response.output_text``; an answer without any text is an error.

    A refusal, an ``incomplete`` or failed response, or one with no ``output_text`` part
    raises `EmptyResponseError` saying which (with the refusal's text).
    """
    if response.get("error"):
        raise errors.EmptyResponseError(f"the response failed: {response['error']}")
    texts, refusals = [], []
    for item in response.get("output") or []:
        if item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if part.get("type") == "output_text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "refusal":
                refusals.append(part.get("refusal", ""))
    text = "".join(texts)
    if text:
        return text
    if refusals:
        raise _refused(" ".join(refusals))
    if calls := tool_calls_of(RESPONSES_ENDPOINT, response):
        raise _called_tools(calls)
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        raise errors.EmptyResponseError(f"the response is incomplete (reason: {reason})")
    kinds = sorted({str(item.get("type")) for item in response.get("output") or []})
    raise errors.EmptyResponseError(
        f"the response has no output_text (output items: {', '.join(kinds) or 'none'})"
    )


def answer_text(reading: Reading, body: dict[str, Any]) -> str:
    """The text of an answer; a raw request's answer without text (a tool call) gives ""."""
    try:
        return chat_text(body) if reading.endpoint == CHAT_ENDPOINT else responses_text(body)
    except errors.EmptyResponseError:
        if reading.raw:
            return ""  # its caller reads the whole body, which is what was asked for
        raise


def usage_of(body: Mapping[str, Any]) -> Usage | None:
    """The usage block of a Chat Completions or Responses answer, if it has one."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses API
        inputs, outputs = "input_tokens", "output_tokens"
        input_details, output_details = "input_tokens_details", "output_tokens_details"
    else:
        inputs, outputs = "prompt_tokens", "completion_tokens"
        input_details, output_details = "prompt_tokens_details", "completion_tokens_details"
    return Usage(
        _count(usage.get(inputs)),
        _count(usage.get(outputs)),
        _count(_detail(usage, output_details, "reasoning_tokens")),
        _count(_detail(usage, input_details, "cached_tokens")),
    )


def _detail(usage: Mapping[str, Any], block: str, key: str) -> object:
    details = usage.get(block)
    return details.get(key) if isinstance(details, dict) else None


def _count(value: object) -> int:
    """A token count as reported; anything but a non-negative int counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def answer_result(
    index: int,
    reading: Reading,
    data: dict[str, Any],
    request_id: str | None,
    *,
    attempts: int = 1,
    latency_s: float = 0.0,
    with_body: bool = True,
    usage: Usage | None = None,
    cost_usd: float | None = None,
) -> Result:
    """The `Result` of a 200 answer `data` to `body`; one without text keeps all but it.

    `with_body` False leaves the body out of a successful result (one that failed keeps
    it: its caller will want to see why). `usage` is read from `data` unless given.
    """
    value, parsed, error = _read(reading, data)
    if error is not None:
        error.index, error.attempts = index, attempts
    return Result(
        index,
        text=value if isinstance(value, str) else None,
        parsed=parsed,
        output=value,
        usage=usage if usage is not None else usage_of(data),
        latency_s=latency_s,
        attempts=attempts,
        model=data.get("model"),
        response_id=data.get("id"),
        request_id=request_id,
        status_code=200,
        body=data if with_body or error is not None else None,
        error=error,
        cost_usd=cost_usd,
        tool_calls=tool_calls_of(reading.endpoint, data),
        embedding=value if reading.endpoint == EMBEDDINGS_ENDPOINT else None,
    )


def _read(reading: Reading, data: dict[str, Any]) -> tuple[Any, Any, errors.RequestError | None]:
    """The answer's value (text or embedding), what it parses to, or why it is no good."""
    if reading.endpoint == EMBEDDINGS_ENDPOINT:
        items = sorted(data.get("data") or [], key=lambda item: item.get("index", 0))
        vectors = [item.get("embedding") for item in items]
        return (vectors[0] if reading.single_input and vectors else vectors), None, None
    try:
        text = answer_text(reading, data)
    except errors.EmptyResponseError as empty:
        return None, None, empty
    if (schema_class := reading.schema_class) is not None:
        try:
            return text, schema_class.model_validate_json(text), None  # type: ignore[attr-defined]
        except ValueError as invalid:  # pydantic's ValidationError is a ValueError
            return (
                text,
                None,
                errors.ParseError(
                    f"the answer does not validate as {schema_class.__name__}: {invalid}",
                    text=text,
                    validation_error=str(invalid),
                ),
            )
    parsed = None
    if reading.wants_json:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return text, parsed, None


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An answer as the response cache and the batch journal keep it: the provider's JSON
    and ids, re-read with its request to give the very `Result` the first answer gave
    (text, parsed object, embedding, tool calls, or the same error for an answer without
    text), whatever the request kind, the API or the route it came by.

    Parameters:
        body: the 200 answer's JSON (for an `error`, the error answer's, if any).
        request_id: the ``x-request-id`` of the HTTP request that got it.
        cost_usd: what it cost when it was paid for.
        batch_id: the Batch API job that answered it, if one did.
        error: an `APIError` answer (a Batch API error line): its status, code, message.
    """

    body: dict[str, Any] | None
    request_id: str | None = None
    cost_usd: float | None = None
    batch_id: str | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def of(cls, result: Result, *, errors_too: bool = False) -> StoredAnswer | None:
        """What to keep of `result`: an answer the provider gave (any 200 answer, even one
        without text; with `errors_too`, an `APIError` status too); None for the rest
        (timeouts, dropped connections, refusals of our own: sending again may do better)."""
        if result.status_code == 200 and result.body is not None:
            return cls(result.body, result.request_id, result.cost_usd, result.batch_id)
        error = result.error
        if errors_too and isinstance(error, errors.APIError) and error.status_code >= 400:
            fields = {"status_code": error.status_code, "code": error.code}
            fields["message"] = error.message
            return cls(error.body, error.request_id, 0.0, result.batch_id, fields)
        return None

    def to_json(self) -> str:
        fields = {
            "body": self.body,
            "request_id": self.request_id,
            "cost_usd": self.cost_usd,
            "batch_id": self.batch_id,
            "error": self.error,
        }
        return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredAnswer:
        """Read one back (also the rows of caches written before `error` existed)."""
        data = json.loads(text)
        return cls(
            data.get("body"),
            data.get("request_id"),
            data.get("cost_usd"),
            data.get("batch_id"),
            data.get("error"),
        )

    def result(self, index: int, request: AnyRequest, *, cost_usd: float | None) -> Result:
        """The `Result` this answer gives `request` (read as the worker read it)."""
        if self.error is not None:
            error = errors.APIError(
                str(self.error.get("message")),
                status_code=int(self.error.get("status_code") or 500),
                code=self.error.get("code"),
                body=self.body,
                request_id=self.request_id,
                index=index,
                attempts=1,
            )
            return Result(
                index,
                attempts=1,
                status_code=error.status_code,
                body=self.body,
                request_id=self.request_id,
                error=error,
                batch_id=self.batch_id,
            )
        endpoint, sent = http_call(request)
        data = self.body or {}
        result = answer_result(
            index, reading_of(request, endpoint, sent), data, self.request_id, cost_usd=cost_usd
        )
        return replace(result, batch_id=self.batch_id)
