"""One Batch API job's lines: written to its files, read back, and what each answer says.

A job's folder (beside the journal) holds ``input.jsonl`` (the lines uploaded, in the
Batch API's shape), ``requests.pickle`` (each line's request: its answer is read by it,
and it is sent online from it if it comes to that) and, once the job ended, its
``output.jsonl`` and ``errors.jsonl`` as downloaded.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from .._spending.cap import Reservation
from .._spending.prices import PriceTable
from .._wire.answers import answer_result, reading_of, usage_of
from .._wire.bodies import http_call
from .._wire.protocol import Task
from .._wire.statuses import retryable_status
from ..errors import APIError
from ..results import Result
from .journal import JobRecord

__all__ = ["Job", "batch_line", "line_digest", "line_result"]


def line_digest(line: bytes) -> bytes:
    """A short digest of an input line: a re-run with the journal checks it sends the same."""
    return hashlib.sha256(line).digest()[:8]


def batch_line(
    index: int, request: Any, *, prefix: str = "", versioned: bool = True
) -> tuple[str, str, bytes]:
    """The request as an OpenAI Batch API input line: ``(endpoint, model, line)``. The
    line's model is the request's without `prefix` (a provider's, for its own API); an
    API whose endpoints have no version (Azure's) is not `versioned`."""
    endpoint, body = http_call(request)
    model = str(body.get("model"))
    if prefix:
        body = {**body, "model": model.removeprefix(prefix)}
    if not versioned:
        endpoint = endpoint.removeprefix("/v1")
    line = {"custom_id": str(index), "method": "POST", "url": endpoint, "body": body}
    return endpoint, model, json.dumps(line).encode() + b"\n"


@dataclass
class Job:
    """A group of lines on its way: spooled (open), submitted, or waiting to be re-created."""

    record: JobRecord
    folder: Path
    lines: int = 0
    size: int = 0  # bytes of input lines
    lines_sent: list[tuple[int, bytes]] = field(default_factory=list)  # (index, digest)
    status: str = "spooled"
    retry_at: float = 0.0  # monotonic: when a refused job is created again
    refusals: int = 0
    reserved: dict[int, Reservation] = field(default_factory=dict)  # {index: ...} (max_cost)
    counts: tuple[int, int] = (0, 0)  # the provider's (answered, total) lines
    waited_s: float = 0.0  # from its creation at the provider to its end
    files: tuple[BinaryIO, BinaryIO] | None = None  # input lines, pickled requests

    def write(self, index: int, line: bytes, request: Any, digest: bytes) -> None:
        """Add one request: its input line, its pickle, and its digest (see `Groups`)."""
        if self.files is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.files = (
                open(self.folder / "input.jsonl", "ab"),  # noqa: SIM115 (closed in close_files)
                open(self.folder / "requests.pickle", "ab"),  # noqa: SIM115
            )
        self.files[0].write(line)
        pickle.dump((index, Task.pickle_payload(request)), self.files[1])
        self.lines += 1
        self.size += len(line)
        self.lines_sent.append((index, digest))

    @property
    def indices(self) -> list[int]:
        """The indices spooled into it."""
        return [index for index, _ in self.lines_sent]

    def close_files(self) -> None:
        if self.files is not None:
            for file in self.files:
                file.close()
            self.files = None

    def requests(self, indices: set[int]) -> dict[int, Any]:
        """The requests of `indices`, from the pickled spool."""
        found: dict[int, Any] = {}
        with open(self.folder / "requests.pickle", "rb") as pickles:
            while True:
                try:
                    index, payload = pickle.load(pickles)
                except EOFError:
                    return found
                if index in indices:
                    found[index] = pickle.loads(payload)

    def answers(self) -> Iterator[dict[str, Any]]:
        """The downloaded output and error lines."""
        for name in ("output", "errors"):
            path = self.folder / f"{name}.jsonl"
            if path.exists():
                with open(path, "rb") as lines:
                    for raw in lines:
                        if raw.strip():
                            yield json.loads(raw)


def line_result(
    line: dict[str, Any],
    request: Any,
    attempts: int,
    prices: PriceTable,
    batch_id: str | None,
    waited_s: float,
) -> Result:
    """The `Result` of one output or error line, priced at the batch rate, its latency the
    job's `waited_s`; a line with a status other than 200 fails with its `APIError` (even
    when its ``error`` is null)."""
    index = int(line["custom_id"])
    response = line.get("response") or {}
    status = int(response.get("status_code") or 0)
    data = response.get("body") or {}
    request_id = response.get("request_id")
    if status != 200:
        return Result(
            index,
            attempts=attempts,
            status_code=status,
            body=data or None,
            request_id=request_id,
            error=_line_error(line, status, index, attempts),
            batch_id=batch_id,
            latency_s=waited_s,
        )
    endpoint, body = http_call(request)
    usage = usage_of(data)
    cost = prices.cost(request.model, usage, tier="batch")
    reading = reading_of(request, endpoint, body)
    result = answer_result(
        index, reading, data, request_id, attempts=attempts, usage=usage, cost_usd=cost
    )
    return replace(result, batch_id=batch_id, latency_s=waited_s)


def _line_error(line: dict[str, Any], status: int, index: int, attempts: int) -> APIError:
    """The `APIError` of an output or error line that did not answer 200."""
    data = (line.get("response") or {}).get("body") or {}
    detail = data.get("error") if isinstance(data, dict) else None
    detail = detail or line.get("error") or {}
    code = detail.get("code") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    return APIError(
        str(message or f"the batch line failed with status {status}"),
        status_code=status or 500,
        code=code,
        body=data or None,
        index=index,
        attempts=attempts,
        retryable=retryable_status(status or 500, code),
    )
