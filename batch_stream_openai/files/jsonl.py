"""The OpenAI Batch API's JSONL line formats: input lines in, output lines out.

An input line is either a Batch API line or a prompt line (the fields of `OpenAIRequest`)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
    {"custom_id": "q2", "system_prompt": "Be brief.", "user_prompt": "Hi", "api": "chat"}

An output line is a Batch API output line, plus ``x_request_sha256``: the first 16 hex
digits of the SHA-256 of the request as sent, so a resumed run can tell a changed request
from one already done; and ``x_stats``, what ``batch-stream-openai report`` draws (when
the line was written, its latency, attempts, model, tokens, cost)::

    {"id": "batch_req_...", "custom_id": "q1", "response": {"status_code": 200,
     "request_id": "req_...", "body": {...}}, "error": null, "x_request_sha256": "...",
     "x_stats": {"at": 1765000000.123, "latency_s": 0.41, "attempts": 1, ...}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._wire.bodies import http_call
from ..errors import LineError
from ..request import (
    ENDPOINTS,
    AnyRequest,
    OpenAIRequest,
    RawRequest,
)
from ..results import Result

__all__ = [
    "InputLine",
    "LineError",
    "OutputState",
    "compact_output",
    "custom_id_digest",
    "error_object",
    "id_key",
    "line_stats",
    "output_line",
    "parse_input_line",
    "read_input",
    "recover_output",
    "request_sha256",
]

_BATCH_API_KEYS = ("custom_id", "method", "url", "body")
_PROMPT_KEYS = ("custom_id", *(f.name for f in dataclasses.fields(OpenAIRequest)))
_KEY_MASK = 2**64 - 1


@dataclass(frozen=True, slots=True)
class InputLine:
    """One valid input line, ready to send.

    Parameters:
        number: the line's number in the file, from 1.
        custom_id: the line's ``custom_id``, or ``line-<number>`` for a prompt line without.
        request: what to send.
        request_sha256: `request_sha256` of the request.
    """

    number: int
    custom_id: str
    request: AnyRequest
    request_sha256: str


def read_input(path: Path, default_model: str | None) -> Iterator[InputLine | LineError]:
    """Stream a JSONL input file: one `InputLine` or `LineError` per non-blank line.

    Example:

    >>> line = '{"custom_id": "q1", "system_prompt": "Be brief.", "user_prompt": "Hi"}'
    >>> _ = Path("in.jsonl").write_text(line + '\\n{"x": 1}\\n')
    >>> for item in read_input(Path("in.jsonl"), "gpt-4o-mini"):
    ...     print(type(item).__name__, getattr(item, "custom_id", None))
    InputLine q1
    LineError None

    Parameters:
        path: the JSONL file; read one line at a time, never whole.
        default_model: the model of lines that name none (None: a prompt line gets
            `OpenAIRequest`'s default, a Batch API line is an error).
    """
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if raw.strip():
                yield parse_input_line(raw, number, default_model)


def parse_input_line(raw: bytes, number: int, default_model: str | None) -> InputLine | LineError:
    """Parse and validate one input line.

    Example:

    >>> line = parse_input_line(b'{"system_prompt": "Be brief.", "user_prompt": "Hi"}', 1, None)
    >>> line.custom_id, line.request.user_prompt
    ('line-1', 'Hi')

    Parameters:
        raw: the line, as read from the file.
        number: its line number, for messages and the default ``custom_id``.
        default_model: as for `read_input`.
    """
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return LineError(number, f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return LineError(number, f"expected a JSON object, got {type(data).__name__}")
    request: AnyRequest
    try:
        if any(key in data for key in ("method", "url", "body")):
            custom_id, request = _batch_api_request(data, default_model)
        else:
            custom_id, request = _prompt_request(data, number, default_model)
    except (TypeError, ValueError) as exc:
        return LineError(number, str(exc))
    return InputLine(number, custom_id, request, request_sha256(request))


def _batch_api_request(data: dict[str, Any], default_model: str | None) -> tuple[str, RawRequest]:
    _check_keys(data, required=_BATCH_API_KEYS, allowed=_BATCH_API_KEYS)
    custom_id = _custom_id(data["custom_id"])
    if data["method"] != "POST":
        raise ValueError(f"method must be 'POST', got {data['method']!r}")
    if data["url"] not in ENDPOINTS:
        raise ValueError(f"unsupported url {data['url']!r}: use {', '.join(ENDPOINTS)}")
    body = data["body"]
    if not isinstance(body, dict):
        raise TypeError(f"body must be a JSON object, got {type(body).__name__}")
    if "model" not in body:
        if default_model is None:
            raise ValueError("body has no 'model' and no default model was given (--model)")
        body = {**body, "model": default_model}
    return custom_id, RawRequest(data["url"], body, custom_id=custom_id)


def _prompt_request(
    data: dict[str, Any], number: int, default_model: str | None
) -> tuple[str, OpenAIRequest]:
    _check_keys(data, required=("system_prompt", "user_prompt"), allowed=_PROMPT_KEYS)
    fields = {key: value for key, value in data.items() if key != "custom_id"}
    if default_model is not None:
        fields.setdefault("model", default_model)
    custom_id = _custom_id(data["custom_id"]) if "custom_id" in data else f"line-{number}"
    return custom_id, OpenAIRequest(**fields)


def _check_keys(data: dict[str, Any], *, required: Iterable[str], allowed: Iterable[str]) -> None:
    if missing := [key for key in required if key not in data]:
        raise ValueError(f"missing {', '.join(map(repr, missing))}")
    allowed = set(allowed)
    if unknown := [key for key in data if key not in allowed]:
        raise ValueError(
            f"unknown key {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(allowed))})"
        )


def _custom_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"custom_id must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"custom_id {value!r} has a lone surrogate at position {exc.start}: not valid text"
        ) from None
    return value


def request_sha256(request: AnyRequest) -> str:
    """First 16 hex digits of the SHA-256 of ``(url, body)`` as sent: equal bodies, equal hash.

    Example:

    >>> request_sha256(RawRequest("/v1/responses", {"model": "gpt-4o-mini", "input": "Hi"}))
    '...'
    """
    url, body = http_call(request)
    canonical = json.dumps([url, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def custom_id_digest(custom_id: str) -> int:
    """The SHA-256 of a ``custom_id`` as an int; ``digest % N`` is its shard of N.

    Example:

    >>> custom_id_digest("q1") % 3  # the shard of "q1" in ``--shard I/3``
    0
    """
    return int.from_bytes(hashlib.sha256(custom_id.encode()).digest(), "big")


def id_key(digest: int) -> int:
    """64 bits of a `custom_id_digest`: all the resume state keeps per ``custom_id``."""
    return digest & _KEY_MASK


def output_line(custom_id: str, request_digest: str, result: Result) -> bytes:
    """The Batch API output line of one finished request, newline included.

    Example:

    >>> output_line("q1", "0123456789abcdef", Result(0, text="Hi"))  # doctest: +ELLIPSIS
    b'{"id":"batch_req_...","custom_id":"q1",...}\\n'

    Parameters:
        custom_id: the input line's ``custom_id``.
        request_digest: its `request_sha256`, kept as ``x_request_sha256``.
        result: what ``stream_batch(..., return_results=True)`` yielded for it.
    """
    response = None
    if result.status_code:
        response = {
            "status_code": result.status_code,
            "request_id": result.request_id,
            "body": result.body,
        }
    record = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": None if result.error is None else error_object(result.error, result.attempts),
        "x_request_sha256": request_digest,
        "x_stats": line_stats(result),
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def line_stats(result: Result) -> dict[str, Any]:
    """What the report (`stats.py`) needs of a line that the Batch API format lacks:
    when it was written (epoch seconds), its latency and attempts, and those of its model,
    tokens, cost, cache hit, hedge and Batch API job that apply."""
    stats: dict[str, Any] = {
        "at": round(time.time(), 3),
        "latency_s": round(result.latency_s, 4),
        "attempts": result.attempts,
    }
    if result.model:
        stats["model"] = result.model
    if (usage := result.usage) is not None:
        stats["tokens"] = [usage.input_tokens, usage.output_tokens]
    if result.cost_usd is not None:
        stats["cost_usd"] = result.cost_usd
    if result.cached:
        stats["cached"] = True
    if result.hedged:
        stats["hedged"] = True
    if result.batch_id:
        stats["batch_id"] = result.batch_id
    return stats


def error_object(error: Exception, attempts: int) -> dict[str, Any]:
    """The ``error`` of a failed request's output line."""
    return {
        "type": type(error).__name__,
        "code": getattr(error, "code", None),
        "message": getattr(error, "message", str(error)),
        "attempts": attempts,
    }


@dataclass
class OutputState:
    """What an output file already holds; the latest line of a ``custom_id`` wins.

    Parameters:
        done: `id_key` -> ``x_request_sha256`` of the latest line.
        failed: the `id_key`s whose latest line is an error.
        torn_bytes: bytes of a torn last line cut away (0: none).
        superseded: lines that a later line of the same ``custom_id`` replaces.
    """

    done: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    torn_bytes: int = 0
    superseded: int = 0

    def add(self, raw: bytes) -> None:
        """Record one output line; ValueError when it is not a complete output line."""
        if not raw.endswith(b"\n"):
            raise ValueError("no newline at its end")
        key, record = _line_key(raw)
        self.superseded += key in self.done
        self.done[key] = str(record.get("x_request_sha256", ""))
        if record.get("error") is None:
            self.failed.discard(key)
        else:
            self.failed.add(key)

    def note_written(self, custom_id: str) -> None:
        """A new line for `custom_id` was appended (its request digest is already known)."""
        self.superseded += id_key(custom_id_digest(custom_id)) in self.done


def _line_key(raw: bytes) -> tuple[int, dict[str, Any]]:
    record = json.loads(raw)
    custom_id = record.get("custom_id") if isinstance(record, dict) else None
    if not isinstance(custom_id, str):
        raise ValueError("not a Batch API output line (no custom_id)")
    return id_key(custom_id_digest(custom_id)), record


def recover_output(output: IO[bytes], name: str) -> OutputState:
    """Read an output file opened ``a+b``; cut a torn last line away.

    Example:

    >>> line = output_line("q1", "0123456789abcdef", Result(0, text="Hi"))
    >>> _ = Path("out.jsonl").write_bytes(line + line[:20])  # the last line torn
    >>> with open("out.jsonl", "a+b") as output:
    ...     state = recover_output(output, "out.jsonl")
    >>> state.torn_bytes, len(state.done)
    (20, 1)

    Only the last line may be unreadable (a write cut short by ``kill -9``); an unreadable
    line before it raises ValueError naming the line.

    Parameters:
        output: the file, opened for reading and appending.
        name: the file's name, for messages.
    """
    state = OutputState()
    output.seek(0)
    offset = 0
    unreadable: tuple[int, int, str] | None = None  # (line number, offset, why)
    for number, raw in enumerate(output, 1):
        if unreadable is not None:
            raise ValueError(f"{name}:{unreadable[0]}: unreadable output line: {unreadable[2]}")
        try:
            state.add(raw)
        except ValueError as exc:
            unreadable = (number, offset, str(exc))
        offset += len(raw)
    if unreadable is not None:
        output.truncate(unreadable[1])
        state.torn_bytes = offset - unreadable[1]
    output.seek(0, 2)
    return state


def compact_output(output: IO[bytes], path: Path, state: OutputState) -> int:
    """Rewrite the output with only the latest line of each ``custom_id``; lines dropped.

    Example:

    >>> first = output_line("q1", "0123456789abcdef", Result(0, error=ValueError("no")))
    >>> again = output_line("q1", "0123456789abcdef", Result(0, text="Hi"))
    >>> _ = Path("out.jsonl").write_bytes(first + again)  # q1 sent again
    >>> with open("out.jsonl", "a+b") as output:
    ...     state = recover_output(output, "out.jsonl")
    ...     state.superseded and compact_output(output, Path("out.jsonl"), state)
    1
    >>> Path("out.jsonl").read_bytes() == again
    True

    Two streaming passes (where each repeated ``custom_id``'s latest line is, then the
    copy) into a temporary file next to it, synced and renamed over it: a crash leaves
    either the old file or the new one, never a mix. Memory holds only the repeated ids.

    Parameters:
        output: the output file, opened for reading (its lock stays held meanwhile).
        path: its path; the temporary file goes into the same directory.
        state: what `recover_output` and the run recorded.
    """
    output.flush()
    seen: set[int] = set()
    latest: dict[int, int] = {}  # {key of a repeated custom_id: offset of its last line}
    offset = 0
    output.seek(0)
    for raw in output:
        key, _ = _line_key(raw)
        if key in seen:
            latest[key] = offset
        seen.add(key)
        offset += len(raw)
    seen.clear()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.compacting")
    dropped = 0
    with temporary.open("wb") as copy:
        output.seek(0)
        offset = 0
        for raw in output:
            key, _ = _line_key(raw)
            if key in latest and latest[key] != offset:
                dropped += 1
            else:
                copy.write(raw)
            offset += len(raw)
        copy.flush()
        os.fsync(copy.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    state.superseded = 0
    return dropped
