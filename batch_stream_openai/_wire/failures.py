"""Failed attempts as this library's picklable errors (worker side).

aiohttp errors (the OpenAI route) and SDK-style exceptions (LiteLLM raises those) hold
connections and httpx objects and do not pickle (openai#2629); what the caller gets is an
exception from `errors.py` carrying the evidence: status, code, body, request id, the wait
the server asked for, and whether another attempt might succeed. The API key is masked
wherever it appears, since some proxies echo the Authorization header.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp

from .. import errors
from .config import mask_in
from .statuses import parse_retry_after, retryable_status

__all__ = ["to_request_error"]

# What LiteLLM appends to some messages: its traceback, then a bug-report link.
_APPENDED = ("\nTraceback (most recent call last):", "\n\nThis looks like a bug in LiteLLM")

# LiteLLM reports some missing provider keys as a connection error with status 500
# ("Missing Gemini API key"); they are an authentication failure, not worth a retry.
_MISSING_KEY_HINTS = ("missing", "no api key", "api key not")


def to_request_error(
    exc: BaseException, *, index: int, attempts: int, secret: str | None
) -> errors.RequestError:
    """Convert any failure of one attempt into the exception the caller receives."""
    if isinstance(exc, errors.RequestError):
        exc.index, exc.attempts = index, attempts
        return exc
    common: dict[str, Any] = {"index": index, "attempts": attempts}
    notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
    message = mask_in(_message_of(exc) + notes, secret)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return _api_error(exc, status, message, secret, common)
    timed_out, cause = _network_cause(exc)
    where = _host_of(exc)
    if timed_out:
        return errors.APITimeoutError(
            f"no answer{where} within the timeout", retryable=True, **common
        )
    if cause is not None or isinstance(exc, aiohttp.ClientError) or _sdk(exc, "APIConnectionError"):
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else f": {message}"
        return errors.APIConnectionError(
            f"cannot connect{where}{mask_in(detail, secret)}", retryable=True, **common
        )
    return errors.RequestError(f"{type(exc).__name__}: {message}", **common)


def _sdk(exc: BaseException, name: str) -> bool:
    """Whether `exc` is the openai SDK's exception `name`. Only code that imported the
    SDK can raise one, so the hot path (aiohttp) never has to import it to know."""
    sdk = sys.modules.get("openai")
    return sdk is not None and isinstance(exc, getattr(sdk, name))


def _api_error(
    exc: BaseException, status: int, message: str, secret: str | None, common: dict[str, Any]
) -> errors.APIError:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    body = getattr(exc, "body", None)
    if _is_missing_provider_key(exc, status, message):
        status = 401
    code = _error_code(exc, body)
    return errors.APIError(
        message,
        status_code=status,
        code=code,
        # The SDK keeps only the inner "error" object; the wire shape wraps it.
        body=mask_in({"error": body} if isinstance(body, dict) else None, secret),
        request_id=headers.get("x-request-id"),
        retry_after_s=parse_retry_after(headers),
        retryable=retryable_status(status, code, headers.get("x-should-retry")),
        **common,
    )


def _is_missing_provider_key(exc: BaseException, status: int, message: str) -> bool:
    text = message.lower()
    return (
        type(exc).__module__.startswith("litellm")
        and status >= 500
        and "api key" in text
        and any(hint in text for hint in _MISSING_KEY_HINTS)
    )


def _network_cause(exc: BaseException) -> tuple[bool, BaseException | None]:
    """Whether the failure is a timeout, and the OS-level error behind a failed connection.

    The SDK's aiohttp transport reports a refused connection or a failed DNS lookup as
    a connect *timeout*; the chain of causes says what really happened.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (asyncio.TimeoutError, TimeoutError)):
            return True, None
        if isinstance(seen, OSError):
            return False, seen
        seen = seen.__cause__ or seen.__context__
    return _sdk(exc, "APITimeoutError"), None


def _host_of(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f" to {exc.host}:{exc.port}"
    url = getattr(getattr(exc, "request", None), "url", None)
    host, port = getattr(url, "host", None), getattr(url, "port", None)
    if not host:
        return ""
    if port is None:
        port = 443 if getattr(url, "scheme", "") == "https" else 80
    return f" to {host}:{port}"


def _error_code(exc: BaseException, body: object) -> str | None:
    code = getattr(exc, "code", None)
    if code is None and isinstance(body, dict):
        code = body.get("code")
    return str(code) if code is not None else None


def _message_of(exc: BaseException) -> str:
    """The exception's message, without the traceback and the bug-report boilerplate
    LiteLLM appends to some (a whole traceback in an error message helps nobody)."""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    for cut in _APPENDED:
        text = text.split(cut, 1)[0]
    return text.strip()
