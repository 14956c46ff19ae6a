"""What an error answer says about trying again: whether it is worth it, how long to wait.

Both sides read it: a worker marks each failed attempt retryable or not as it converts
it, the parent's retry schedule (`_policy/retry.py`) honours the wait the server asked
for. Retryable: 429 (but not ``insufficient_quota``), 408, 409, 5xx, and whatever the
server marks ``x-should-retry: true``; the server's ``x-should-retry: false`` wins too.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

__all__ = ["parse_retry_after", "retryable_status"]

_RETRYABLE_STATUS = frozenset({408, 409, 429})


def retryable_status(status: int, code: str | None = None, should_retry: str | None = None) -> bool:
    """Whether an error answer with this status (and error code, ``x-should-retry``) is."""
    if should_retry in ("true", "false"):  # the server knows best, as the SDK agrees
        return should_retry == "true"
    if status == 429:
        return code != "insufficient_quota"
    return status in _RETRYABLE_STATUS or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a server asked for, in seconds: ``retry-after-ms``, else ``retry-after``.

    A value that is not a finite number >= 0 (or, for ``retry-after``, an HTTP date) is
    ignored, so a broken ``retry-after-ms`` does not hide a valid ``retry-after``.
    """
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _finite(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None
