"""Plain, picklable settings built in the parent and shipped to every worker.

This module imports nothing heavy: the parent process never needs the `openai` package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ClientConfig", "RetryPolicy", "WorkerConfig", "mask_secret"]


def mask_secret(secret: str) -> str:
    """``sk-abc...wxyz`` -> ``sk-...wxyz``: enough to tell keys apart, not to use one."""
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) > 12 else "***"


@dataclass(frozen=True)
class ClientConfig:
    """Everything a worker needs to build its HTTP client; the key is masked in the repr.

    Parameters:
        api_key: OpenAI API key; None means ``OPENAI_API_KEY`` from the environment.
        base_url: OpenAI-compatible endpoint; None means ``OPENAI_BASE_URL`` or the SDK's.
        timeout: seconds one attempt may take.
        max_connections: connection pool size of the worker's client.
    """

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    timeout: float = 600.0
    max_connections: int = 100

    def __repr__(self) -> str:
        key = mask_secret(self.api_key) if self.api_key else None
        return (
            f"ClientConfig(api_key={key!r}, base_url={self.base_url!r}, "
            f"timeout={self.timeout!r}, max_connections={self.max_connections!r})"
        )

    @property
    def resolved_api_key(self) -> str | None:
        """The key the SDK will use: the argument, else ``OPENAI_API_KEY``."""
        return self.api_key or os.environ.get("OPENAI_API_KEY")


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


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a pool is started with (shipped with cloudpickle).

    Parameters:
        client: how to build the worker's HTTP client.
        retry: how hard each request is tried.
        initializer: called once in each worker before it serves (load a tokenizer, set
            up logging); if it raises, the worker reports the traceback and exits.
    """

    client: ClientConfig
    retry: RetryPolicy
    initializer: Callable[[], object] | None = None
