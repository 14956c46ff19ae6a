"""Rich results and batch summaries: what a user running 100k requests needs to see.

`Result` is what ``stream(..., return_results=True)`` yields per request; `BatchSummary`
adds a whole batch up. Both are plain picklable data.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._pickling import pickles_fast

__all__ = ["BatchSummary", "EndpointSummary", "Result", "ResultPair", "ToolCall", "Usage"]


@pickles_fast
@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used, as the provider reported them.

    Parameters:
        input_tokens: prompt tokens, cached ones included.
        output_tokens: answer tokens, reasoning ones included.
        reasoning_tokens: of the output, those spent reasoning.
        cached_tokens: of the input, those read from the provider's prompt cache.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@pickles_fast
@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model called instead of answering in text.

    Parameters:
        id: the call's id (``call_...``), to answer it with.
        name: the tool's name.
        arguments: the arguments, parsed from their JSON (the raw string if they are not
            valid JSON).
    """

    id: str | None
    name: str
    arguments: Any


@pickles_fast
@dataclass(frozen=True, slots=True)
class Result:
    """Everything known about one finished request.

    Example:

    >>> from batch_stream_openai import stream_batch
    >>> for index, result in stream_batch(requests[:1], return_results=True):
    ...     if result.error is None:
    ...         print(result.text, result.usage.output_tokens > 0, result.latency_s > 0)
    echo: What is 0 + 0? [...] True True

    Parameters:
        index: position of the request in the caller's iterable.
        text: the answer's text; None when the request failed.
        parsed: the text parsed as JSON when the request asked for JSON output: an
            instance of the pydantic class when ``response_format`` was one.
        output: what `postprocess` returned (the text, or the embedding, when there is
            none): the plain value of a successful request.
        usage: tokens used, when the provider said.
        latency_s: seconds from the first attempt to the answer, retries included.
        attempts: times the request was sent.
        model: the model that answered, as the provider named it.
        response_id: the provider's id of the answer (``chatcmpl-...``, ``resp_...``).
        request_id: the ``x-request-id`` the provider gave the HTTP request.
        status_code: the HTTP status of the last attempt (0 when none arrived).
        body: the full JSON answer.
        error: the Exception that ended the request, or None.
        cached: the answer came from the response cache (or from an identical request
            of the same batch), not from a new call: it cost nothing.
        cost_usd: what the answer cost, from its usage and the model's price (0 when
            cached); None when the price or the usage is unknown.
        tool_calls: the tools the model called (`ToolCall`), when it answered with calls.
        embedding: the vector of an `EmbeddingRequest` (a list of vectors for a list input).
        batch_id: the Batch API job that answered it (``mode="batch"``), else None.
        base_url: the endpoint that answered (of the pool's ``base_url`` list), for an
            OpenAI-routed request.
        hedged: a duplicate of it was sent, as it ran long (``hedge=``); the first
            answer won.
        replayed: ``mode="batch"``: an earlier run with the same journal yielded this
            answer already (`run` gives every answer back; a `stream` gives back the one
            it was on when it stopped, which its caller may not have finished with).
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
    cached: bool = False
    cost_usd: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    embedding: list[float] | list[list[float]] | None = None
    batch_id: str | None = None
    base_url: str | None = None
    hedged: bool = False
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def value(self) -> Any:
        """What the plain stream yields for this request: `output`, or the `error`."""
        return self.output if self.error is None else self.error


# (index, value) as a stream yields it: the text or the Exception, a `Result`, or what
# `postprocess` made.
ResultPair = tuple[int, Any]


@dataclass
class EndpointSummary:
    """One endpoint's attempts in a batch (`BatchSummary.endpoints`).

    Parameters:
        ok, failed: attempts answered, and failed (refused, timed out, an error status).
        latency_s: their latencies added up (see `mean_latency_s`).
    """

    ok: int = 0
    failed: int = 0
    latency_s: float = 0.0

    @property
    def mean_latency_s(self) -> float:
        attempts = self.ok + self.failed
        return self.latency_s / attempts if attempts else 0.0

    def __str__(self) -> str:
        return f"{self.ok} ok, {self.failed} failed, {self.mean_latency_s * 1000:.0f} ms mean"


@dataclass
class BatchSummary:
    """Counts for one batch, updated as results arrive; final when the stream ends.

    Example:

    >>> from batch_stream_openai import stream_batch
    >>> stream = stream_batch(requests)
    >>> done = [index for index, result in stream]
    >>> print(stream.summary)  # doctest: +ELLIPSIS
    3 requests: 3 ok, 0 failed...
    >>> stream.summary.ok, stream.summary.input_tokens > 0
    (3, True)

    Parameters:
        ok, failed: results without and with an error; ``failed_by_type`` by error type.
        retries: attempts after the first, over all requests; ``rate_limited``: 429s.
        cached: results taken from the response cache; ``deduplicated``: of those, the
            ones that waited for an identical request of this batch instead.
        input_tokens, output_tokens: as the provider reported them (cached answers too).
        cached_input_tokens: of the input tokens, those the provider read from its
            prompt (prefix) cache; ``prompt_cache_rate`` is their share.
        cost_usd: what this batch spent; ``unpriced``: answers whose price is unknown
            (not in ``cost_usd``); ``saved_usd``: what the cached answers cost when they
            were first paid for; ``prompt_cache_saved_usd``: what the prompt cache's
            cheaper input saved (for models with a cached-input price).
        jobs: ``mode="batch"``: the Batch API jobs by status (``{"in_progress": 2, ...}``,
            ``"done"`` for those read); ``job_lines``: (answered, total) lines of the
            jobs still open.
        hedges: duplicates sent of requests that ran long (``hedge=``).
        endpoints: the attempts of each endpoint (`EndpointSummary`), by base URL.
    """

    ok: int = 0
    failed: int = 0
    failed_by_type: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0
    cached: int = 0
    deduplicated: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    saved_usd: float = 0.0
    prompt_cache_saved_usd: float = 0.0
    jobs: dict[str, int] = field(default_factory=dict)
    job_lines: tuple[int, int] = (0, 0)
    hedges: int = 0
    endpoints: dict[str, EndpointSummary] = field(default_factory=dict)
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
    def prompt_cache_rate(self) -> float:
        """The share of the input tokens read from the provider's prompt cache."""
        return self.cached_input_tokens / self.input_tokens if self.input_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        total = self.input_tokens + self.output_tokens
        return total / self.wall_s if self.wall_s > 0 else 0.0

    def add(self, result: Result, attempts: int) -> None:
        """Count one finished request."""
        error = result.error
        if error is None:
            self.ok += 1
            if result.cost_usd is None and not result.cached:
                self.unpriced += 1
        else:
            self.failed += 1
            self.failed_by_type[type(error).__name__] += 1
        self.retries += max(0, attempts - 1)
        if result.cost_usd is not None:
            self.cost_usd += result.cost_usd
        usage = result.usage
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.cached_input_tokens += usage.cached_tokens

    def add_attempt(self, base_url: str, latency_s: float, ok: bool) -> None:
        """Count one attempt that `base_url` answered (or failed)."""
        endpoint = self.endpoints.get(base_url)
        if endpoint is None:
            endpoint = self.endpoints[base_url] = EndpointSummary()
        if ok:
            endpoint.ok += 1
        else:
            endpoint.failed += 1
        endpoint.latency_s += latency_s

    def finish(self) -> None:
        """The batch ended (its wall time stops)."""
        self.finished_at = time.monotonic()

    def add_prompt_cache_saving(self, usd: float) -> None:
        """Count what an answer's cached input tokens saved."""
        self.prompt_cache_saved_usd += usd

    def add_hedge(self) -> None:
        """Count a hedge sent."""
        self.hedges += 1

    def add_throttled(self) -> None:
        """Count a 429 answer."""
        self.rate_limited += 1

    def add_cached(self, paid_usd: float | None, deduplicated: bool) -> None:
        """Count that the next result added came from the cache (or an identical request)."""
        self.cached += 1
        self.deduplicated += deduplicated
        self.saved_usd += paid_usd or 0.0

    def __str__(self) -> str:
        failures = ", ".join(f"{name}: {n}" for name, n in self.failed_by_type.most_common())
        parts = [
            f"{self.done} requests: {self.ok} ok, {self.failed} failed"
            + (f" ({failures})" if failures else ""),
            f"{self.retries} retries ({self.rate_limited} rate-limited)",
        ]
        if self.cached:
            parts.append(f"{self.cached} cached ({self.deduplicated} deduplicated)")
        if self.jobs:
            parts.append(f"{sum(self.jobs.values())} batch jobs")
        if self.hedges:
            parts.append(f"{self.hedges} hedges")
        if len(self.endpoints) > 1:
            parts.append(
                "endpoints: " + "; ".join(f"{url} {e}" for url, e in self.endpoints.items())
            )
        parts.append(f"{self.input_tokens + self.output_tokens} tokens")
        if self.cached_input_tokens:
            saved = self.prompt_cache_saved_usd
            parts.append(
                f"{self.prompt_cache_rate:.0%} of input from the prompt cache"
                + (f" (${saved:.4f} saved)" if saved else "")
            )
        cost = f"${self.cost_usd:.4f}"
        if self.unpriced:
            cost += f" (+{self.unpriced} unpriced)"
        if self.saved_usd:
            cost += f", ${self.saved_usd:.4f} saved"
        parts += [cost, f"{self.wall_s:.2f} s", f"{self.requests_per_s:.0f} requests/s"]
        return ", ".join(parts)
