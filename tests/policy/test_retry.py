"""Retry policy: what is retried, how long it waits, how failures are reported.

Errors are built as a worker builds them from an HTTP answer (`retryable_status`,
`parse_retry_after`); the schedule is asked for each wait, so nothing is slept. The SDK's
own exceptions (which LiteLLM raises) are raised by the SDK in real calls.
"""

from __future__ import annotations

import math
import time

import pytest

from batch_stream_openai import errors
from batch_stream_openai._policy.retry import MAX_RETRY_AFTER_S, RetryPolicy, RetrySchedule
from batch_stream_openai._wire.failures import to_request_error
from batch_stream_openai._wire.statuses import parse_retry_after, retryable_status
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import sdk_error


def status_error(
    status: int, headers: dict[str, str] | None = None, code: str = "x"
) -> errors.APIError:
    """The error a worker makes of an HTTP `status` answer with these headers."""
    headers = headers or {}
    return errors.APIError(
        f"status {status}",
        status_code=status,
        code=code,
        retry_after_s=parse_retry_after(headers),
        retryable=retryable_status(status, code, headers.get("x-should-retry")),
    )


def converted(exc: Exception) -> errors.RequestError:
    return to_request_error(exc, index=0, attempts=1, secret=None)


@pytest.mark.fast
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert converted(status_error(status)).retryable


@pytest.mark.fast
@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    assert not converted(status_error(status)).retryable


@pytest.mark.fast
def test_insufficient_quota_is_not_retried() -> None:
    assert not converted(status_error(429, code="insufficient_quota")).retryable


@pytest.mark.fast
def test_the_server_can_say_whether_to_retry() -> None:
    assert converted(status_error(400, {"x-should-retry": "true"})).retryable
    assert not converted(status_error(503, {"x-should-retry": "false"})).retryable


@pytest.mark.fast
def test_connection_errors_and_timeouts_are_retried() -> None:
    connection = converted(ConnectionResetError("reset by peer"))
    assert isinstance(connection, errors.APIConnectionError) and connection.retryable
    timeout = converted(TimeoutError())
    assert isinstance(timeout, errors.APITimeoutError) and timeout.retryable
    assert not converted(ValueError("ours")).retryable


@pytest.mark.fast
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "100", "retry-after": "5"}, 0.1),
        ({}, None),
        ({"retry-after": "soon"}, None),
        # A broken retry-after-ms must not hide a valid retry-after.
        ({"retry-after-ms": "abc", "retry-after": "5"}, 5.0),
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "-3"}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers) == seconds
    assert converted(status_error(429, headers)).retry_after_s == seconds  # type: ignore[attr-defined]


@pytest.mark.fast
def test_retry_after_as_an_http_date() -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    seconds = parse_retry_after({"retry-after": when})
    assert seconds is not None and 25 < seconds <= 30


def waits_for(failures: list[Exception], policy: RetrySchedule) -> tuple[list[float], int]:
    """The waits the schedule asks between attempts, and the attempts made in all."""
    waits: list[float] = []
    for attempt, failure in enumerate(failures, 1):
        wait = policy.next_wait(converted(failure), attempt, sum(waits))
        if wait is None:
            return waits, attempt
        waits.append(wait)
    return waits, len(failures) + 1  # the attempt after the last failure succeeds


@pytest.mark.fast
def test_honours_retry_after_then_succeeds() -> None:
    failures = [status_error(429, {"retry-after-ms": "1500"}), status_error(503)]
    waits, attempts = waits_for(failures, RetrySchedule(RetryPolicy(max_attempts=5, max_backoff=1)))
    assert attempts == 3
    assert waits[0] == 1.5  # what the server asked for, not the 1 s backoff cap
    assert 0 <= waits[1] <= 1.0  # jittered exponential, capped


@pytest.mark.fast
def test_a_huge_retry_after_is_capped_for_the_request() -> None:
    for asked in ("3600", "1e9"):
        (wait,), _ = waits_for(
            [status_error(429, {"retry-after": asked})], RetrySchedule(RetryPolicy())
        )
        assert wait == MAX_RETRY_AFTER_S
    assert math.isfinite(MAX_RETRY_AFTER_S)


@pytest.mark.fast
def test_stops_after_max_attempts_with_the_last_error() -> None:
    failures = [status_error(503) for _ in range(10)]
    waits, attempts = waits_for(failures, RetrySchedule(RetryPolicy(max_attempts=3)))
    assert attempts == 3
    assert len(waits) == 2


@pytest.mark.fast
def test_stops_after_the_deadline() -> None:
    schedule = RetrySchedule(RetryPolicy(max_attempts=100, deadline=10))
    error = converted(status_error(503))
    assert schedule.next_wait(error, 1, 0.5) is not None
    assert schedule.next_wait(error, 2, 11.0) is None


@pytest.mark.fast
def test_does_not_retry_a_bad_request() -> None:
    waits, attempts = waits_for([status_error(400)], RetrySchedule(RetryPolicy(max_attempts=5)))
    assert attempts == 1
    assert waits == []


@pytest.mark.timeout(30)
def test_final_errors_are_converted_and_the_key_masked(fake: FakeOpenAIServer) -> None:
    key = "sk-live-abcdefghijklmnop"
    raised = sdk_error(fake, "[[echo_auth]] [[status=401]] who am I", api_key=key)
    error = to_request_error(raised, index=4, attempts=1, secret=key)
    assert isinstance(error, errors.APIError)
    assert (error.status_code, error.index, error.attempts, error.retryable) == (401, 4, 1, False)
    assert key in str(raised.body)  # what the server echoed
    assert key not in str(error) and key not in repr(error.body)
    assert "sk-...mnop" in repr(error.body)
    sdk_timeout = sdk_error(fake, "[[hang]] anyone?", timeout=0.3)
    timeout = to_request_error(sdk_timeout, index=0, attempts=3, secret=None)
    assert isinstance(timeout, errors.APITimeoutError)
    assert timeout.retryable
