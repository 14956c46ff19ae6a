"""What is worth retrying, and how long to wait: the policy, built from tenacity values.

Retried: 429 (but not ``insufficient_quota``), 408, 409, 5xx, timeouts, connection errors,
and whatever the server marks ``x-should-retry: true``. Not retried: other 4xx, empty
answers, our own errors, and what the server marks ``x-should-retry: false``. Waits are
exponential with full jitter, capped, and never shorter than a ``retry-after-ms`` /
``retry-after`` header asks (itself capped at `MAX_RETRY_AFTER_S`).

Workers make one attempt per task and say whether its error is retryable; the parent's
dispatcher asks `RetrySchedule` when to send the next attempt, so that every attempt
passes through the pool's shared rate budget. Nothing here imports ``openai``.
"""

from __future__ import annotations

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from .._wire.config import RetryPolicy
from ..errors import APIError

__all__ = ["MAX_RETRY_AFTER_S", "RetrySchedule"]

# A server asking one request to wait longer than this is taken to ask this much; the
# request's own deadline (`RetryPolicy.deadline`) still bounds the total.
MAX_RETRY_AFTER_S = 120.0


class wait_retry_after(wait_base):
    """Wait at least what the server asked for (capped), and at least the jittered backoff.

    Many requests rejected at once are all told the same short wait; taken as is, they
    would all come back together and be rejected together. The jittered backoff, which
    grows with each attempt, spreads them out.
    """

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        asked = error.retry_after_s if isinstance(error, APIError) else None
        backoff = float(self.backoff(retry_state))
        return backoff if asked is None else max(min(asked, MAX_RETRY_AFTER_S), backoff)


class RetrySchedule:
    """When, if at all, a failed request gets its next attempt.

    Example::

        schedule = RetrySchedule(RetryPolicy(max_attempts=6))
        wait = schedule.next_wait(error, attempts=1, elapsed_s=0.2)
        if wait is not None:
            ...  # send attempt 2 in `wait` seconds

    Parameters:
        policy: attempts, total deadline and backoff of each request.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._retry = retry_if_exception(lambda exc: getattr(exc, "retryable", False))
        self._stop = stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.deadline)
        self._wait = wait_retry_after(
            wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff)
        )

    def __repr__(self) -> str:
        return f"<RetrySchedule {self.policy}>"

    def next_wait(self, error: BaseException, attempts: int, elapsed_s: float) -> float | None:
        """Seconds until the next attempt, or None when `error` is final.

        Parameters:
            error: how the last attempt failed.
            attempts: attempts made so far, the failed one included.
            elapsed_s: seconds since the first attempt was sent.
        """
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempts
        state.set_exception((type(error), error, None))
        state.start_time, state.outcome_timestamp = 0.0, elapsed_s
        if not self._retry(state) or self._stop(state):
            return None
        return float(self._wait(state))
