"""Rich results and batch summaries: what a user running 100k requests needs to see.

`Result` is what ``stream(..., return_results=True)`` yields per request; `BatchSummary`
adds a whole batch up. Both are plain picklable data.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchSummary", "Result", "Usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used, as the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Result:
    """Everything known about one finished request.

    Example::

        for index, result in stream_batch(requests, return_results=True):
            if result.error is None:
                print(result.text, result.usage.output_tokens, result.latency_s)

    Parameters:
        index: position of the request in the caller's iterable.
        text: the answer's text; None when the request failed.
        parsed: the text parsed as JSON when the request asked for JSON output.
        output: what `postprocess` returned (the text when there is none).
        usage: tokens used, when the provider said.
        latency_s: seconds from the first attempt to the answer, retries included.
        attempts: times the request was sent.
        model: the model that answered, as the provider named it.
        response_id: the provider's id of the answer (``chatcmpl-...``, ``resp_...``).
        request_id: the ``x-request-id`` the provider gave the HTTP request.
        status_code: the HTTP status of the last attempt (0 when none arrived).
        body: the full JSON answer.
        error: the Exception that ended the request, or None.
    """

    index: int
    text: str | None = None
    parsed: Any = None
    output: Any = None
    usage: Usage | None = None
    latency_s: float = 0.0
    attempts: int = 0
    model: str | None = None
    response_id: str | None = None
    request_id: str | None = None
    status_code: int = 0
    body: dict[str, Any] | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def value(self) -> Any:
        """What the plain stream yields for this request: `output`, or the `error`."""
        return self.output if self.error is None else self.error


def usage_of(body: Mapping[str, Any]) -> Usage | None:
    """The usage block of a Chat Completions or Responses answer, if it has one."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses API
        details = usage.get("output_tokens_details")
        return Usage(
            _count(usage.get("input_tokens")),
            _count(usage.get("output_tokens")),
            _count(details.get("reasoning_tokens") if isinstance(details, dict) else None),
        )
    details = usage.get("completion_tokens_details")
    return Usage(
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        _count(details.get("reasoning_tokens") if isinstance(details, dict) else None),
    )


def _count(value: object) -> int:
    """A token count as reported; anything but a non-negative int counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class BatchSummary:
    """Counts for one batch, updated as results arrive; final when the stream ends.

    Example::

        stream = stream_batch(requests)
        for index, result in stream:
            ...
        print(stream.summary)  # 1000 requests: 998 ok, 2 failed (APIError: 2), ...
    """

    ok: int = 0
    failed: int = 0
    failed_by_type: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def wall_s(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def requests_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        total = self.input_tokens + self.output_tokens
        return total / self.wall_s if self.wall_s > 0 else 0.0

    def add(self, error: BaseException | None, attempts: int, usage: Usage | None) -> None:
        """Count one finished request."""
        if error is None:
            self.ok += 1
        else:
            self.failed += 1
            self.failed_by_type[type(error).__name__] += 1
        self.retries += max(0, attempts - 1)
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens

    def __str__(self) -> str:
        failures = ", ".join(f"{name}: {n}" for name, n in self.failed_by_type.most_common())
        return (
            f"{self.done} requests: {self.ok} ok, {self.failed} failed"
            + (f" ({failures})" if failures else "")
            + f", {self.retries} retries ({self.rate_limited} rate-limited), "
            f"{self.input_tokens + self.output_tokens} tokens, {self.wall_s:.2f} s, "
            f"{self.requests_per_s:.0f} requests/s"
        )
