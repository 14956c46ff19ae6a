"""Retry policy: what is retried, how long it waits, how failures are reported.

Real SDK exceptions built on real httpx2 responses; the sleep is injected, so the
waits are recorded instead of slept.
"""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest

from batch_stream_openai import errors
from batch_stream_openai.config import RetryPolicy
from batch_stream_openai.retry import (
    build_retrying,
    is_retryable,
    retry_after_seconds,
    to_request_error,
)

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(status: int, headers: dict[str, str] | None = None, code: str = "x") -> Exception:
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    body = {"message": f"status {status}", "code": code, "type": code}
    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1/v1")
    return client._make_status_error(f"status {status}", body=body, response=response)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert is_retryable(status_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    assert not is_retryable(status_error(status))


def test_insufficient_quota_is_not_retried() -> None:
    assert not is_retryable(status_error(429, code="insufficient_quota"))


def test_connection_errors_and_timeouts_are_retried() -> None:
    assert is_retryable(openai.APIConnectionError(request=REQUEST))
    assert is_retryable(openai.APITimeoutError(request=REQUEST))
    assert not is_retryable(ValueError("ours"))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "100", "retry-after": "5"}, 0.1),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(status_error(429, headers)) == seconds


def run_flaky(failures: list[Exception], policy: RetryPolicy) -> tuple[object, list[float], int]:
    slept: list[float] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def call() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    async def main() -> object:
        try:
            return await build_retrying(policy, sleep)(call)
        except Exception as exc:
            return exc

    return asyncio.run(main()), slept, calls


def test_honours_retry_after_then_succeeds() -> None:
    failures = [status_error(429, {"retry-after-ms": "1500"}), status_error(503)]
    result, slept, calls = run_flaky(failures, RetryPolicy(max_attempts=5, max_backoff=1.0))
    assert result == "ok"
    assert calls == 3
    assert slept[0] == 1.5  # what the server asked for, not the 1 s backoff cap
    assert 0 <= slept[1] <= 1.0  # jittered exponential, capped


def test_stops_after_max_attempts_with_the_last_error() -> None:
    failures = [status_error(503) for _ in range(10)]
    result, slept, calls = run_flaky(failures, RetryPolicy(max_attempts=3))
    assert calls == 3
    assert len(slept) == 2
    assert isinstance(result, openai.InternalServerError)


def test_does_not_retry_a_bad_request() -> None:
    result, slept, calls = run_flaky([status_error(400)], RetryPolicy(max_attempts=5))
    assert calls == 1
    assert slept == []
    assert isinstance(result, openai.BadRequestError)


def test_final_errors_are_converted_and_the_key_masked() -> None:
    key = "sk-live-abcdefghijklmnop"
    sdk_error = status_error(401)
    sdk_error.message = f"Incorrect API key provided: {key}"  # type: ignore[attr-defined]
    error = to_request_error(sdk_error, index=4, attempts=1, secret=key)
    assert isinstance(error, errors.APIError)
    assert (error.status_code, error.index, error.attempts, error.retryable) == (401, 4, 1, False)
    assert key not in str(error)
    sdk_timeout = openai.APITimeoutError(request=REQUEST)
    timeout = to_request_error(sdk_timeout, index=0, attempts=3, secret=None)
    assert isinstance(timeout, errors.APITimeoutError)
    assert timeout.retryable
