"""What is worth retrying, how long to wait, and how a final failure is reported.

Retried: 429 (but not ``insufficient_quota``), 408, 409, 5xx, timeouts, connection errors.
Not retried: other 4xx, empty answers, our own errors. Waits are exponential with full
jitter, capped, and a ``retry-after-ms`` / ``retry-after`` header from the server wins.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from . import errors
from .config import RetryPolicy, mask_secret

__all__ = ["build_retrying", "is_retryable", "retry_after_seconds", "to_request_error"]

_RETRYABLE_STATUS = frozenset({408, 409, 429})
# A server asking for more than this is treated as asking for this much; the request's
# deadline still bounds the total.
_MAX_RETRY_AFTER_S = 120.0


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK (or LiteLLM) exception carries, if any."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if code is None and isinstance(getattr(exc, "body", None), dict):
        code = exc.body.get("code")  # type: ignore[attr-defined]
    return str(code) if code is not None else None


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt of the failed call might succeed."""
    status = status_code_of(exc)
    if status is not None:
        if status == 429:
            return _error_code(exc) != "insufficient_quota"
        return status in _RETRYABLE_STATUS or status >= 500
    return isinstance(exc, (openai.APIConnectionError, asyncio.TimeoutError, ConnectionError))


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait a server asked for in ``retry-after-ms`` or ``retry-after``, in seconds."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class wait_retry_after(wait_base):
    """Wait at least what the server asked for, and at least the jittered backoff.

    Many requests rejected at once are all told the same short wait; taken as is, they
    would all come back together and be rejected together. The jittered backoff, which
    grows with each attempt, spreads them out.
    """

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        asked = retry_after_seconds(exc) if exc is not None else None
        backoff = float(self.backoff(retry_state))
        return backoff if asked is None else max(min(asked, _MAX_RETRY_AFTER_S), backoff)


def build_retrying(
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    on_retry: Callable[[BaseException], None] | None = None,
) -> AsyncRetrying:
    """The tenacity controller for one request; `sleep` is injectable for tests.

    `on_retry` is called with each failure that will be retried, before the wait.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc)

    return AsyncRetrying(
        before_sleep=before_sleep,
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(policy.deadline),
        wait=wait_retry_after(
            wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff)
        ),
        sleep=sleep,
        reraise=True,
    )


def to_request_error(
    exc: BaseException, *, index: int, attempts: int, secret: str | None
) -> errors.RequestError:
    """Convert any failure into the picklable exception the caller receives.

    `secret` (the API key) is masked wherever it appears in the message.
    """
    if isinstance(exc, errors.RequestError):
        exc.index, exc.attempts = index, attempts
        return exc
    message = _message_of(exc)
    if secret:
        message = message.replace(secret, mask_secret(secret))
    retryable = is_retryable(exc)
    status = status_code_of(exc)
    common: dict[str, Any] = {"index": index, "attempts": attempts, "retryable": retryable}
    if status is not None:
        body = getattr(exc, "body", None)
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        return errors.APIError(
            message,
            status_code=status,
            code=_error_code(exc),
            # The SDK keeps only the inner "error" object; the wire shape wraps it.
            body={"error": body} if isinstance(body, dict) else None,
            request_id=headers.get("x-request-id"),
            **common,
        )
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return errors.APITimeoutError(message or "request timed out", **common)
    if isinstance(exc, (openai.APIConnectionError, ConnectionError)):
        return errors.APIConnectionError(message, **common)
    return errors.RequestError(f"{type(exc).__name__}: {message}", **common)


def _message_of(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) and message else str(exc)
