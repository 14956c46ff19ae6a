"""The fake server's settings and what it reports: plain values both sides share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedRequest", "ServerSettings", "ServerStats"]


@dataclass(frozen=True)
class ServerStats:
    """Counters of a running fake server, as returned by :meth:`FakeOpenAIServer.stats`.

    Example: ``server.stats().by_status.get(200, 0)``.

    Parameters:
        requests: API requests received since start/reset (everything outside ``/_control/``).
        in_flight: Requests currently being handled.
        max_in_flight: Highest ``in_flight`` since start/reset.
        by_status: Responses sent by HTTP status; dropped/abandoned connections under ``0``.
        queued: Of ``in_flight``, those waiting for a slot (``capacity`` mode).
        max_queued: Highest ``queued`` since start/reset.
    """

    requests: int
    in_flight: int
    max_in_flight: int
    by_status: dict[int, int]
    queued: int = 0
    max_queued: int = 0


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
        batch_seconds: How long a Batch API job takes, from created to completed.
        batch_expire: The next N jobs expire half way through their run, with the lines
            they answered so far (about 40% of them).
        batch_refuse: The next N jobs fail validation with ``token_limit_exceeded`` (as
            when the enqueued-token limit is reached).
        batch_fail_validation: The next N jobs fail validation with ``invalid_request``.
        batch_stuck: The next N Gemini batches never end, and say they were created two
            days ago (a job past its window).
        batch_refuse_upload: The next N file uploads are answered 413 with an HTML page, as
            a proxy in front of the API does past its body size limit.
        flex_unavailable: The next N requests with ``service_tier: "flex"`` are answered
            429 ``resource_unavailable``.
        capacity: Requests served at once, like a GPU server (0: no limit). Each holds
            its slot for its latency (the service time); the others wait in a FIFO
            queue, so their latency grows with it (see `capacity.py`).
        queue_limit: With ``capacity``: requests that may wait (0: no limit); one more is
            answered 503.
        prefix_cache: Prompt tokens the server keeps prefilled, like a GPU server's
            prefix cache (0: none): a prompt starting with cached blocks skips their
            prefill, and reports them as ``cached_tokens`` (see `prefix_cache.py`).
        prefill_rate: Prompt tokens per second the server prefills (0: at once): a
            request takes its uncached tokens / this, in its capacity slot, before its
            latency (the decode).
    """

    latency: float = 0.0
    rpm: float = 0.0
    tpm: float = 0.0
    batch_seconds: float = 1.0
    batch_expire: float = 0.0
    batch_refuse: float = 0.0
    batch_fail_validation: float = 0.0
    batch_refuse_upload: float = 0.0
    batch_stuck: float = 0.0
    flex_unavailable: float = 0.0
    capacity: float = 0.0
    queue_limit: float = 0.0
    prefix_cache: float = 0.0
    prefill_rate: float = 0.0

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
