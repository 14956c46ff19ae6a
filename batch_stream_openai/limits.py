"""How fast the dispatcher may send: shared RPM/TPM budgets and adaptive concurrency.

Both live in the parent, which sees every request of every worker, so the limits hold
for the whole pool without workers coordinating.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

from .request import AnyRequest, OpenAIRequest

__all__ = ["AdaptiveConcurrency", "Budget", "Pacer", "estimate_tokens"]

# A burst of 429s arrives as many messages within moments; it halves concurrency once.
_BURST_WINDOW_S = 1.0


class Pacer:
    """Spaces out units (requests, tokens) so that at most `per_minute` go per minute.

    A generic cell rate algorithm: the "theoretical arrival time" moves forward by
    ``cost / rate`` per send, and a send waits while it lies in the future. No burst is
    allowed beyond one send, so a limit is never exceeded over any window.

    Example::

        pacer = Pacer(per_minute=240)
        if (wait := pacer.delay()) == 0:
            pacer.consume(1)
    """

    def __init__(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.per_second = per_minute / 60
        self._clock = time.monotonic
        self._next_free = 0.0

    def __repr__(self) -> str:
        return f"<Pacer {self.per_second * 60:g}/min wait={self.delay():.3f}s>"

    def delay(self) -> float:
        """Seconds until the next send may go (0 when it may go now)."""
        return max(0.0, self._next_free - self._clock())

    def consume(self, cost: float) -> None:
        """Account for a send of `cost` units."""
        self._next_free = max(self._next_free, self._clock()) + cost / self.per_second

    def correct(self, delta: float) -> None:
        """Account for `delta` more (or fewer, when negative) units than were consumed."""
        self._next_free += delta / self.per_second


class AdaptiveConcurrency:
    """AIMD on the concurrency limit: halve on a burst of 429s, grow back by one per window.

    Parameters:
        maximum: the caller's `max_concurrency`; the limit never exceeds it.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self._last_decrease = -_BURST_WINDOW_S

    def __repr__(self) -> str:
        return f"<AdaptiveConcurrency {int(self.limit)}/{self.maximum}>"

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self.limit))

    def on_throttled(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= _BURST_WINDOW_S:
            self.limit = max(1.0, self.limit / 2)
            self._last_decrease = now

    def on_success(self) -> None:
        # +1 after a full window of successes: additive increase, as in TCP.
        self.limit = min(float(self.maximum), self.limit + 1 / self.limit)


def estimate_tokens(request: AnyRequest) -> int:
    """Tokens a request will likely use: its prompt's tokens plus its output cap.

    Prompts are counted with tiktoken when it is installed and its encoding is at hand,
    else as characters / 4; the budget is corrected by the usage each answer reports.
    """
    if isinstance(request, OpenAIRequest):
        prompt = request.system_prompt + "\n" + request.user_prompt
        output_cap = request.max_output_tokens or 0
    else:
        prompt = json.dumps(request.body.get("messages") or request.body.get("input"))
        output_cap = int(
            request.body.get("max_completion_tokens")
            or request.body.get("max_tokens")
            or request.body.get("max_output_tokens")
            or 0
        )
    return _count_tokens(prompt) + output_cap


@functools.cache
def _encoder() -> Callable[[str], list[int]] | None:
    try:
        import tiktoken

        encode: Callable[[str], list[int]] = tiktoken.get_encoding("o200k_base").encode
        return encode
    except Exception:  # not installed, or its encoding file cannot be fetched offline
        return None


def _count_tokens(text: str) -> int:
    encode = _encoder()
    return len(encode(text)) if encode is not None else len(text) // 4 + 1


class Budget:
    """Whether the next request may go now: concurrency, RPM/TPM, and server pushback.

    Parameters:
        max_concurrency: requests in flight at most.
        rpm: requests per minute at most, or None.
        tpm: (estimated) tokens per minute at most, or None.
        adaptive: react to 429s (halve concurrency, wait what the server asks) and to
            exhausted ``x-ratelimit-remaining-*`` headers (wait for the reset).
    """

    def __init__(
        self, max_concurrency: int, rpm: float | None, tpm: float | None, adaptive: bool
    ) -> None:
        self.max_concurrency = max_concurrency
        self.counts_tokens = tpm is not None
        self._requests = Pacer(rpm) if rpm is not None else None
        self._tokens = Pacer(tpm) if tpm is not None else None
        self._adaptive = AdaptiveConcurrency(max_concurrency) if adaptive else None
        self._paused_until = 0.0

    def __repr__(self) -> str:
        return (
            f"<Budget concurrency={self.concurrency()}/{self.max_concurrency} "
            f"requests={self._requests} tokens={self._tokens} wait={self.delay(0):.3f}s>"
        )

    def concurrency(self) -> int:
        """Requests that may be in flight now."""
        return self._adaptive.allowed if self._adaptive else self.max_concurrency

    def delay(self, tokens: int) -> float:
        """Seconds until a request of `tokens` estimated tokens may go."""
        waits = [self._paused_until - time.monotonic()]
        if self._requests is not None:
            waits.append(self._requests.delay())
        if self._tokens is not None:
            waits.append(self._tokens.delay())
        return max(0.0, *waits)

    def spend(self, tokens: int) -> None:
        """Account for a request sent now."""
        if self._requests is not None:
            self._requests.consume(1)
        if self._tokens is not None:
            self._tokens.consume(tokens)

    def on_answer(self, estimated_tokens: int, used_tokens: int | None, pause_s: float) -> None:
        """Account for an answer: its real token count, and any pause its headers ask."""
        if self._tokens is not None and used_tokens is not None:
            self._tokens.correct(used_tokens - estimated_tokens)
        if self._adaptive is not None:
            self._adaptive.on_success()
            self._pause(pause_s)

    def on_throttled(self, retry_after_s: float | None) -> None:
        """A 429 arrived at a worker."""
        if self._adaptive is not None:
            self._adaptive.on_throttled()
            self._pause(retry_after_s or 0.0)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
