"""How fast the dispatcher may send: shared RPM/TPM budgets and adaptive concurrency.

Both live in the parent, which sees every request of every worker, so the limits hold
for the whole pool without workers coordinating.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import deque
from collections.abc import Callable

from ..request import AnyRequest, EmbeddingRequest, OpenAIRequest

__all__ = [
    "BURST_WINDOW_S",
    "MAX_POOL_PAUSE_S",
    "AdaptiveConcurrency",
    "Budget",
    "Pacer",
    "estimate_tokens",
    "token_estimate",
]

# A burst of 429s arrives as many messages within moments; it halves concurrency once.
BURST_WINDOW_S = 1.0
# The window over which a per-minute limit holds.
_WINDOW_S = 60.0
# Longest pause of the whole pool that one answer can cause (a 429's retry-after, an
# exhausted x-ratelimit budget). Repeated 429s keep it going; the request that got the
# 429 itself waits what its retry policy says.
MAX_POOL_PAUSE_S = 30.0


class Pacer:
    """At most `per_minute` units (requests, tokens) in any 60-second window, spread out.

    Two rules, both of which a send must pass:

    - a generic cell rate algorithm spaces sends evenly: the "theoretical arrival time"
      moves forward by ``cost / rate`` per send, and the next send waits while it lies
      in the future (no burst beyond one send, so a fresh pool does not spend a whole
      minute's budget in its first second);
    - a sliding window makes the limit exact for sends of unequal cost: a send waits
      until its own cost fits beside what was sent in the last 60 s (the rate rule
      alone would let 5,000 then 10,000 tokens go 30 s apart under a 10,000 limit).
      A send larger than the whole limit goes alone, when the window is empty.

    Example:

    >>> pacer = Pacer(per_minute=240)
    >>> pacer.delay(1)  # seconds to wait before one more may go
    0.0
    >>> charge = pacer.consume(1)
    >>> pacer.delay(1) > 0  # spread out: 4 a second at most
    True
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not per_minute > 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.per_minute = float(per_minute)
        self.per_second = per_minute / 60
        self._clock = clock
        self._next_free = 0.0
        self._window: deque[list[float]] = deque()  # [[sent_at, cost], ...] of the last 60 s
        self._in_window = 0.0  # the sum of their costs

    def __repr__(self) -> str:
        return f"<Pacer {self.per_minute:g}/min in_window={self._in_window:g}>"

    def delay(self, cost: float = 1.0) -> float:
        """Seconds until a send of `cost` units may go (0 when it may go now)."""
        now = self._clock()
        self._expire(now)
        wait = self._next_free - now
        free = self.per_minute - cost  # what the window may hold beside this send
        if self._in_window > free and self._window:
            held = self._in_window
            for sent_at, spent in self._window:  # oldest first: wait until enough expires
                held -= spent
                if held <= free:
                    wait = max(wait, sent_at + _WINDOW_S - now)
                    break
            else:
                wait = max(wait, self._window[-1][0] + _WINDOW_S - now)
        return max(0.0, wait)

    def consume(self, cost: float) -> list[float]:
        """Account for a send of `cost` units now; returns its charge, for `correct`."""
        now = self._clock()
        self._next_free = max(self._next_free, now) + cost / self.per_second
        charge = [now, float(cost)]
        self._window.append(charge)
        self._in_window += cost
        return charge

    def correct(self, charge: list[float], actual: float) -> None:
        """The send of `charge` turned out to cost `actual` units."""
        delta = actual - charge[1]
        self._next_free += delta / self.per_second
        if charge[0] > self._clock() - _WINDOW_S:
            self._in_window += delta
        charge[1] = actual

    def _expire(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - _WINDOW_S:
            self._in_window -= self._window.popleft()[1]


class AdaptiveConcurrency:
    """AIMD on the concurrency limit: halve on a burst of 429s, grow back by one per window.

    Parameters:
        maximum: the caller's `max_concurrency`; the limit never exceeds it.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self._last_decrease = -BURST_WINDOW_S

    def __repr__(self) -> str:
        return f"<AdaptiveConcurrency {int(self.limit)}/{self.maximum}>"

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(1, int(self.limit))

    def on_throttled(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= BURST_WINDOW_S:
            self.limit = max(1.0, self.limit / 2)
            self._last_decrease = now

    def on_success(self) -> None:
        # +1 after a full window of successes: additive increase, as in TCP.
        self.limit = min(float(self.maximum), self.limit + 1 / self.limit)


def estimate_tokens(request: AnyRequest) -> int:
    """Tokens a request will likely use: its prompt's tokens plus its output cap."""
    prompt, cap = token_estimate(request)
    return prompt + (cap or 0)


def token_estimate(request: AnyRequest) -> tuple[int, int | None]:
    """A request's prompt tokens (estimated) and its output cap (None: uncapped).

    Prompts are counted with tiktoken when it is installed and its encoding is at hand,
    else as characters / 4; the budgets are corrected by the usage each answer reports.
    A cap that is not a usable number counts as none: estimating never raises.
    """
    if isinstance(request, OpenAIRequest):
        return _count_tokens(request.system_prompt + "\n" + request.user_prompt), (
            request.max_output_tokens
        )
    if isinstance(request, EmbeddingRequest):
        texts = [request.input] if isinstance(request.input, str) else request.input
        return sum(_count_tokens(text) for text in texts), 0
    body = request.body
    prompt = json.dumps(body.get("messages") or body.get("input"), default=str)
    caps = (
        _count(body.get(key))
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens")
    )
    return _count_tokens(prompt), next((cap for cap in caps if cap is not None), None)


def _count(value: object) -> int | None:
    """A usable token count (an int or a finite float >= 0, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


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

    Every attempt is charged (retries and re-sends too): providers count them all.

    Parameters:
        max_concurrency: requests in flight at most.
        rpm: requests per minute at most, or None.
        tpm: (estimated) tokens per minute at most, or None.
        adaptive: react to 429s (halve concurrency, wait what the server asks) and to
            exhausted ``x-ratelimit-remaining-*`` headers (wait for the reset); one answer
            pauses the pool for `MAX_POOL_PAUSE_S` at most.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        max_concurrency: int,
        rpm: float | None,
        tpm: float | None,
        adaptive: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.counts_tokens = tpm is not None
        self._clock = clock
        self._requests = Pacer(rpm, clock) if rpm is not None else None
        self._tokens = Pacer(tpm, clock) if tpm is not None else None
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
        wait = self._paused_until - self._clock()
        if self._requests is not None:
            wait = max(wait, self._requests.delay(1))
        if self._tokens is not None:
            wait = max(wait, self._tokens.delay(tokens))
        return max(0.0, wait)

    def spend(self, tokens: int) -> list[float] | None:
        """Account for an attempt sent now; returns its token charge, for `on_answer`."""
        if self._requests is not None:
            self._requests.consume(1)
        return self._tokens.consume(tokens) if self._tokens is not None else None

    def on_answer(
        self, charge: list[float] | None, used_tokens: int | None, pause_s: float
    ) -> None:
        """Account for an answer: its real token count, and any pause its headers ask."""
        if self._tokens is not None and charge is not None and used_tokens is not None:
            self._tokens.correct(charge, used_tokens)
        if self._adaptive is not None:
            self._adaptive.on_success()
            self._pause(pause_s)

    def on_throttled(self, retry_after_s: float | None) -> None:
        """A 429 arrived."""
        if self._adaptive is not None:
            self._adaptive.on_throttled()
            self._pause(retry_after_s or 0.0)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            until = self._clock() + min(seconds, MAX_POOL_PAUSE_S)
            self._paused_until = max(self._paused_until, until)
