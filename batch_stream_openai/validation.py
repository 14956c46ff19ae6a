"""Argument checks with messages that name the field (and the index) at fault."""

from __future__ import annotations

from .request import OpenAIRequest, RawRequest

__all__ = [
    "check_api_key",
    "check_callable",
    "check_int",
    "check_positive",
    "check_request",
]


def check_request(index: int, request: object) -> None:
    if not isinstance(request, (OpenAIRequest, RawRequest)):
        raise TypeError(
            f"requests[{index}] must be an OpenAIRequest or RawRequest, "
            f"got {type(request).__name__}"
        )


def check_api_key(api_key: object) -> None:
    if api_key is None:
        return
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
    # Never echo the key: the message names the problem only.
    if not api_key or any(c.isspace() or not c.isprintable() for c in api_key):
        raise ValueError("api_key must be a non-empty string without spaces or control characters")


def check_positive(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
