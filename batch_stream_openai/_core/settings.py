"""A pool's settings, checked once: every argument of `BatchPool`, with its errors.

`PoolSettings.check` raises the exact error for a bad argument (naming it) before
anything starts, and gathers what the other parts need: the worker configuration, the
budgets, the retry schedule, the cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

from .._backends import check_backend
from .._policy.fleet import ROUTINGS
from .._policy.retry import RetryPolicy
from .._spending.prices import Price, check_prices
from .._wire.config import ClientConfig, Secret, WorkerConfig
from .._wire.protocol import Postprocess
from .checks import (
    check_api_key,
    check_base_urls,
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_positive,
    check_workers,
    pickled_callable,
)

__all__ = ["PoolSettings", "default_workers"]

# Where OpenAI-routed requests go when neither base_url nor OPENAI_BASE_URL says.
_OPENAI_BASE_URL = "https://api.openai.com/v1"


def default_workers(max_concurrency: int) -> int:
    """Worker processes for a pool: one per physical core, fewer for small concurrency.

    One process keeps ~25 requests busy cheaply; past that the SDK's CPU cost per
    request wants more cores. Each worker costs ~60 MB, so memory caps the count too.
    """
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    by_memory = max(1, psutil.virtual_memory().available // (256 * 2**20))
    by_concurrency = -(-max_concurrency // 25)
    return int(max(1, min(cores, by_memory, by_concurrency)))


@dataclass(frozen=True)
class PoolSettings:
    """Every `BatchPool` argument, checked (see `BatchPool` for what each means)."""

    max_concurrency: int  # with "auto", its cap
    auto_concurrency: bool
    endpoint_concurrency: int | None
    routing: str
    workers: int
    backend: str
    base_url: tuple[str, ...]  # () for OPENAI_BASE_URL or OpenAI's
    api_key: str | None = field(repr=False)
    timeout: float
    max_retries: int
    postprocess: Postprocess | None
    rpm: float | None
    tpm: float | None
    adaptive: bool
    hang_timeout: float | None
    initializer: Callable[[], object] | None
    start_method: str
    ray_address: str | None
    cache: Path | None
    prices: Mapping[str, Price]
    metrics_port: int | None

    @classmethod
    def check(cls, **given: Any) -> PoolSettings:
        """The settings from `BatchPool`'s keyword arguments (all of them, as given), or
        the exact error for the first bad one."""
        auto, max_concurrency = _concurrency(given["max_concurrency"], given["max_concurrency_cap"])
        if given["endpoint_concurrency"] is not None:
            check_int("endpoint_concurrency", given["endpoint_concurrency"], minimum=1)
        check_choice("routing", given["routing"], ROUTINGS)
        check_callable("postprocess", given["postprocess"])
        check_callable("initializer", given["initializer"])
        check_int("max_retries", given["max_retries"], minimum=0)
        check_positive("timeout", given["timeout"])
        for name in ("rpm", "tpm", "hang_timeout"):
            if given[name] is not None:
                check_positive(name, given[name])
        check_bool("adaptive", given["adaptive"])
        check_api_key(given["api_key"])
        backend, workers = _backend_and_workers(given["backend"], given["workers"], max_concurrency)
        return cls(
            max_concurrency=max_concurrency,
            auto_concurrency=auto,
            endpoint_concurrency=given["endpoint_concurrency"],
            routing=given["routing"],
            workers=workers,
            backend=backend,
            base_url=check_base_urls(given["base_url"]),
            api_key=given["api_key"],
            timeout=float(given["timeout"]),
            max_retries=given["max_retries"],
            postprocess=given["postprocess"],
            rpm=given["rpm"],
            tpm=given["tpm"],
            adaptive=given["adaptive"],
            hang_timeout=given["hang_timeout"],
            initializer=given["initializer"],
            start_method=_start_method(given["start_method"]),
            ray_address=given["ray_address"],
            cache=_cache_path(given["cache"]),
            prices=check_prices(given["prices"]),
            metrics_port=_port("metrics_port", given["metrics_port"]),
        )

    @property
    def routed_base_url(self) -> str:
        """Where OpenAI-routed requests go: the (first) argument, ``OPENAI_BASE_URL``, or
        OpenAI. The Batch API and the response cache's keys use this one."""
        return self.endpoint_urls[0]

    @property
    def endpoint_urls(self) -> tuple[str, ...]:
        """Every endpoint OpenAI-routed requests go to (`fleet.py`)."""
        from_environment = os.environ.get("OPENAI_BASE_URL") or _OPENAI_BASE_URL
        return self.base_url or (from_environment.rstrip("/"),)

    @property
    def secret(self) -> Secret | None:
        """The `api_key` argument, masked (None: ``OPENAI_API_KEY`` is used)."""
        return Secret(self.api_key) if self.api_key is not None else None

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_retries + 1)

    def worker_config_blob(self) -> bytes:
        """What every worker starts with, cloudpickled (the key kept as a `Secret`)."""
        config = WorkerConfig(
            client=ClientConfig(
                api_key=self.secret,
                base_urls=self.base_url,
                timeout=self.timeout,
                max_connections=self.max_concurrency,
            ),
            initializer=self.initializer,
        )
        return pickled_callable("initializer", self.initializer, lambda: cloudpickle.dumps(config))


def _concurrency(max_concurrency: object, cap: object) -> tuple[bool, int]:
    """``(auto, the limit)``: with ``"auto"``, the limit is its cap."""
    cap = check_int("max_concurrency_cap", cap, minimum=1)
    if max_concurrency == "auto":
        return True, cap
    if isinstance(max_concurrency, str):
        raise ValueError(f"max_concurrency must be an int or 'auto', got {max_concurrency!r}")
    return False, check_int("max_concurrency", max_concurrency, minimum=1)


def _backend_and_workers(backend: object, workers: object, max_concurrency: int) -> tuple[str, int]:
    """The backend and its worker count (``workers=0``: one thread, in process)."""
    backend = check_backend(backend)
    if workers == 0:
        if backend == "ray":
            raise ValueError("workers=0 (in-process mode) needs backend='process' or 'thread'")
        backend, workers = "thread", 1
    return backend, check_workers(workers, max_concurrency, backend) or default_workers(
        max_concurrency
    )


def _start_method(start_method: object) -> str:
    if start_method is None:
        from .._backends.process import default_start_method

        return default_start_method()
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    return str(start_method)


def _cache_path(cache: object) -> Path | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        from .._spending.cache import default_cache_path

        return default_cache_path()
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache).expanduser()
    raise TypeError(f"cache must be a path, True or None, got {type(cache).__name__}")


def _port(name: str, port: object) -> int | None:
    """A TCP port to listen on (1 to 65535), or None."""
    if port is None:
        return None
    if (checked := check_int(name, port, minimum=1)) > 65535:
        raise ValueError(f"{name} must be a TCP port, at most 65535, got {port}")
    return checked
