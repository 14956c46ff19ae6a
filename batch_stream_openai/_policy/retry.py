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

from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from ..errors import APIError

__all__ = ["MAX_RETRY_AFTER_S", "Retries", "RetryPolicy", "RetrySchedule", "Tries"]

# A server asking one request to wait longer than this is taken to ask this much; the
# request's own deadline (`RetryPolicy.deadline`) still bounds the total.
MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried.

    Parameters:
        max_attempts: attempts in all, the first included (``max_retries + 1``).
        deadline: seconds from the first attempt after which no new attempt starts.
        initial_backoff: scale of the first backoff, in seconds.
        max_backoff: cap of a single backoff without a ``retry-after`` header.
    """

    max_attempts: int = 6
    deadline: float = 1800.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0


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

    Example:

    >>> from batch_stream_openai.errors import APIError
    >>> schedule = RetrySchedule(RetryPolicy(max_attempts=6))
    >>> overloaded = APIError("overloaded", status_code=503, retry_after_s=2.0, retryable=True)
    >>> schedule.next_wait(overloaded, attempts=1, elapsed_s=0.2)  # the server's hint
    2.0
    >>> schedule.next_wait(APIError("bad request", status_code=400), 1, 0.2) is None
    True

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


@dataclass(slots=True)
class Tries:
    """What the retry policy knows of one request (kept in its ledger entry).

    Parameters:
        counted: attempts the policy counts: its tier's, failovers not included.
        first_sent_at: when its first attempt went (monotonic; None: not yet).
        failed_on: endpoints an attempt of it failed on (the next goes elsewhere).
        failing_over: its next attempt goes at once to another endpoint: not a retry.
        failovers: attempts sent elsewhere at once after an endpoint failed.
        standard: sent at the standard tier from now on (flex had no capacity for it).
    """

    counted: int = 0
    first_sent_at: float | None = None
    failed_on: frozenset[int] = frozenset()
    failing_over: bool = False
    failovers: int = 0
    standard: bool = False


class Retries:
    """When a failed attempt goes again: at once to another endpoint (a failover, not a
    retry), after a backoff (`RetrySchedule`), at the standard tier (flex had no capacity
    for it, retries included), or never.

    Example:

    >>> from batch_stream_openai.errors import APIError
    >>> retries = Retries(RetrySchedule(RetryPolicy()), endpoints=2, flex_fallback=False)
    >>> tries = Tries()
    >>> retries.sent(tries, now=0.0)  # each attempt but a hedge
    >>> down = APIError("bad gateway", status_code=502, retryable=True)
    >>> retries.after(tries, down, blamed=0, now=0.1)  # at once, to the other endpoint
    0.0
    >>> sorted(tries.failed_on)
    [0]

    Parameters:
        schedule: the backoff and the limits of each request.
        endpoints: how many endpoints the pool sends to (a failover needs another).
        flex_fallback: flex's "no capacity" 429 ends at the standard tier, not in failure.
    """

    def __init__(self, schedule: RetrySchedule, endpoints: int, flex_fallback: bool) -> None:
        self._schedule = schedule
        self._endpoints = endpoints
        self._flex_fallback = flex_fallback

    def __repr__(self) -> str:
        return f"<Retries {self._schedule} endpoints={self._endpoints}>"

    def sent(self, tries: Tries, now: float) -> None:
        """An attempt went (not a hedge: a duplicate is no try)."""
        if tries.first_sent_at is None:
            tries.first_sent_at = now
        tries.counted += not tries.failing_over
        tries.failovers += tries.failing_over
        tries.failing_over = False

    def after(self, tries: Tries, error: Exception, blamed: int | None, now: float) -> float | None:
        """Seconds until the next attempt (0: at once), or None when `error` is final.

        `blamed`: the endpoint the attempt failed because of (refused, timed out, 5xx).
        Its retry goes at once to an endpoint it has not failed on while there is one;
        once it has failed on every endpoint, its retries avoid only the last one (else
        a dead replica could take every retry of it).
        """
        if blamed is not None:
            failed = tries.failed_on | {blamed}
            if len(failed) >= self._endpoints:
                tries.failed_on = frozenset({blamed})
            else:
                tries.failed_on = failed
                if getattr(error, "retryable", False):
                    tries.failing_over = True
                    return 0.0
        elapsed = now - (tries.first_sent_at if tries.first_sent_at is not None else now)
        wait = self._schedule.next_wait(error, tries.counted, elapsed)
        if wait is not None:
            return wait
        if tries.standard or not self._flex_fallback or not _flex_unavailable(error):
            return None
        tries.standard, tries.counted = True, 0  # flex gave up on it: the standard tier
        return 0.0


def _flex_unavailable(error: Exception) -> bool:
    """A 429 saying the flex tier has no capacity now (``resource_unavailable``)."""
    return isinstance(error, APIError) and error.code == "resource_unavailable"
