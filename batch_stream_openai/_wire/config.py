"""Plain, picklable settings built in the parent and shipped to every worker.

This module imports nothing heavy: the parent process never needs the `openai` package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ClientConfig",
    "Secret",
    "WorkerConfig",
    "mask_in",
    "mask_secret",
    "maskable",
]

# A "key" shorter than this, or one of these placeholders (vLLM's "EMPTY", ...), is not a
# secret: masking it would rewrite ordinary text ("not known" -> "not ***nown" for "k").
_MIN_SECRET_LENGTH = 12
_PLACEHOLDERS = frozenset({"sk-no-key-required", "no-key-required", "not-needed"})


def mask_secret(secret: str) -> str:
    """``sk-abc...wxyz`` -> ``sk-...wxyz``: enough to tell keys apart, not to use one."""
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) > 12 else "***"


def maskable(secret: str | None) -> bool:
    """Whether `secret` is a real secret, to be masked wherever it shows up: long enough
    that it appears in a text only because the text quotes it (an echoed header)."""
    return (
        secret is not None
        and len(secret) >= _MIN_SECRET_LENGTH
        and secret.lower() not in _PLACEHOLDERS
    )


def mask_in(value: Any, secret: str | None) -> Any:
    """`value` (text, or JSON-like data) with every occurrence of `secret` masked (when it
    is `maskable`: a placeholder such as ``"EMPTY"`` is left alone, and so is the text)."""
    if secret is None or value is None or not maskable(secret):
        return value
    if isinstance(value, str):
        return value.replace(secret, mask_secret(secret)) if secret in value else value
    text = json.dumps(value)
    if secret not in text:
        return value
    return json.loads(text.replace(secret, mask_secret(secret)))


class Secret:
    """An API key that does not show: masked in its repr, never plain in memory or pickles.

    The key is kept XOR-ed with a random pad of its length and revealed only where a
    client is built (in a worker), so the pool's settings, its pickled config and a core
    dump of the parent do not hold it as plain bytes. This keeps the key out of logs,
    reprs and files by accident; it does not protect it from someone who can read the
    process's memory and knows where to look.

    Example:

    >>> secret = Secret("sk-live-0123456789abcdef")
    >>> secret
    Secret('sk-...cdef')
    >>> secret.reveal()  # the key, for the SDK client only
    'sk-live-0123456789abcdef'
    """

    __slots__ = ("_masked", "_pad", "masked")

    def __init__(self, value: str) -> None:
        plain = value.encode()
        self._pad = os.urandom(len(plain))
        self._masked = bytes(a ^ b for a, b in zip(plain, self._pad, strict=True))
        self.masked = mask_secret(value)

    def __repr__(self) -> str:
        return f"Secret({self.masked!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unmask, (self._masked, self._pad))

    def reveal(self) -> str:
        """The key itself: for building a client, nothing else."""
        return bytes(a ^ b for a, b in zip(self._masked, self._pad, strict=True)).decode()


def _unmask(masked: bytes, pad: bytes) -> Secret:
    secret = Secret.__new__(Secret)
    secret._masked, secret._pad = masked, pad
    secret.masked = mask_secret(secret.reveal())
    return secret


@dataclass(frozen=True)
class ClientConfig:
    """Everything a worker needs to build its HTTP client; the key is masked in the repr.

    Parameters:
        api_key: OpenAI API key (kept as a `Secret`); None means ``OPENAI_API_KEY`` from
            the environment.
        base_urls: the OpenAI-compatible endpoints a `Task` names by number; empty means
            one, ``OPENAI_BASE_URL`` or the SDK's.
        timeout: seconds one attempt may take, all of it (connect, send, wait, read).
        max_connections: connection pool size of the worker's client.
    """

    api_key: Secret | str | None = field(default=None)
    base_urls: tuple[str, ...] = ()
    timeout: float = 600.0
    max_connections: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key))

    @property
    def resolved_api_key(self) -> str | None:
        """The key the SDK will use: the argument, else ``OPENAI_API_KEY``."""
        if isinstance(self.api_key, Secret):
            return self.api_key.reveal()
        return os.environ.get("OPENAI_API_KEY")


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a pool is started with (shipped with cloudpickle).

    Parameters:
        client: how to build the worker's HTTP client.
        initializer: called once in each worker before it serves (load a tokenizer, set
            up logging); if it raises, the worker reports the traceback and exits.
    """

    client: ClientConfig
    initializer: Callable[[], object] | None = None
