"""Rich results and batch summaries: what a user running 100k requests needs to see.

`Result` is what ``stream(..., return_results=True)`` yields per request; `BatchSummary`
adds a whole batch up. Both are plain picklable data.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchSummary", "RateLimitHeaders", "Result", "Usage", "usage_of"]


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


def usage_of(body: Mapping[str, Any]) -> Usage | None:
    """The usage block of a Chat Completions or Responses answer, if it has one."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses API
        details = usage.get("output_tokens_details") or {}
        return Usage(
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
            int(details.get("reasoning_tokens") or 0),
        )
    details = usage.get("completion_tokens_details") or {}
    return Usage(
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("reasoning_tokens") or 0),
    )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"0.5s"``."""
    if not value:
        return None
    parts = _DURATION_PART.findall(value)
    if not parts:
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one answer (None where absent)."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Read the headers; None when the answer carries none."""
        remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
        remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        if remaining_requests is None and remaining_tokens is None:
            return None
        return cls(
            remaining_requests,
            remaining_tokens,
            _duration_s(headers.get("x-ratelimit-reset-requests")),
            _duration_s(headers.get("x-ratelimit-reset-tokens")),
        )

    def pause_s(self) -> float:
        """How long to hold new requests back: until the exhausted budget resets."""
        pause = 0.0
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            pause = max(pause, self.reset_requests_s or 1.0)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            pause = max(pause, self.reset_tokens_s or 1.0)
        return pause


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
