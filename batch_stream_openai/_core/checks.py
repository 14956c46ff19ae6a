"""Argument checks with messages that name the field (and the index) at fault."""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable, Sequence

import psutil

from .._batchapi.provider import batch_route_error, missing_setup
from .._spending.prices import PriceTable
from ..request import EmbeddingRequest, OpenAIRequest, RawRequest

__all__ = [
    "RequestChecker",
    "check_api_key",
    "check_base_urls",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_hedge",
    "check_int",
    "check_positive",
    "check_workers",
    "pickled_callable",
]

_REQUEST_TYPES = (OpenAIRequest, EmbeddingRequest, RawRequest)
# hedge=True: at most this share of the batch's requests is sent twice.
DEFAULT_HEDGE_FRACTION = 0.02
# Worker processes allowed per CPU core (and at least this many in all): far beyond this,
# processes only compete for the cores and memory, and starting them stalls the machine.
_WORKERS_PER_CORE = 8
_MIN_WORKERS_ALLOWED = 32


class RequestChecker:
    """Checks each request before it is sent: its type, that its route has a key,
    (under a cost cap) that its model has a known price, and (``mode="batch"``) that its
    provider has a batch API.

    Parameters:
        needs_key: requests for OpenAI models need ``OPENAI_API_KEY`` (no ``api_key`` was
            given, and the workers read this machine's environment).
        prices: with a cost cap, where prices come from: a model without one is refused.
        jobs: the batch goes to providers' batch APIs.
    """

    def __init__(
        self, needs_key: bool, prices: PriceTable | None = None, jobs: bool = False
    ) -> None:
        self.needs_key = needs_key
        self.prices = prices
        self.jobs = jobs

    def with_prices(self, prices: PriceTable) -> RequestChecker:
        """This checker, also requiring a known price for every model."""
        return RequestChecker(self.needs_key, prices, self.jobs)

    def for_jobs(self) -> RequestChecker:
        """This checker, also requiring a batch API for every model."""
        return RequestChecker(self.needs_key, self.prices, jobs=True)

    def __call__(self, index: int, request: object) -> None:
        self.check_type(index, request)
        self.check_key(index, request)
        self.check_price(index, request)
        self.check_batch_route(index, request)

    def check_all(self, requests: Sequence[object]) -> None:
        """Check a whole list: every item's type first, then keys, prices and routes."""
        for index, request in enumerate(requests):
            self.check_type(index, request)
        for index, request in enumerate(requests):
            self.check_key(index, request)
            self.check_price(index, request)
            self.check_batch_route(index, request)

    def check_batch_route(self, index: int, request: object) -> None:
        if not self.jobs or not isinstance(request, _REQUEST_TYPES):
            return
        refused = batch_route_error(index, request.model)
        if refused is not None:
            raise ValueError(refused)
        if (unready := missing_setup(index, request.model)) is not None:
            raise ValueError(unready)

    def check_price(self, index: int, request: object) -> None:
        if self.prices is None or not isinstance(request, _REQUEST_TYPES):
            return
        model = request.model
        if self.prices.price(model) is None:
            raise ValueError(
                f"requests[{index}]: max_cost needs the price of model {model!r}, which "
                f"is not known; give it: prices={{{model!r}: {{'input': ..., 'output': ...}}}} "
                "(USD per million tokens)"
            )

    @staticmethod
    def check_type(index: int, request: object) -> None:
        if not isinstance(request, _REQUEST_TYPES):
            raise TypeError(
                f"requests[{index}] must be an OpenAIRequest, EmbeddingRequest or RawRequest, "
                f"got {type(request).__name__}"
            )

    def check_key(self, index: int, request: object) -> None:
        if not self.needs_key or not isinstance(request, _REQUEST_TYPES):
            return
        if request.uses_openai_sdk and not os.environ.get("OPENAI_API_KEY"):
            raise ValueError(
                f"requests[{index}] (model {request.model!r}) goes to the OpenAI API, which "
                "needs a key: pass api_key= or set OPENAI_API_KEY (any non-empty value for a "
                "local server that checks none)"
            )


def check_api_key(api_key: object) -> None:
    if api_key is None:
        return
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
    # Never echo the key: the message names the problem only.
    if not api_key or any(c.isspace() or not c.isprintable() for c in api_key):
        raise ValueError("api_key must be a non-empty string without spaces or control characters")
    if not api_key.isascii():
        raise ValueError("api_key must be ASCII (it is sent in an HTTP header)")


def check_base_urls(base_url: object) -> tuple[str, ...]:
    """The endpoints `base_url` names (a URL, or a list of them); () for None."""
    if base_url is None:
        return ()
    if isinstance(base_url, str):
        _check_url("base_url", base_url)
        return (base_url.rstrip("/"),)
    if not isinstance(base_url, Sequence) or not base_url:
        raise TypeError(
            f"base_url must be a URL or a non-empty list of URLs, got {type(base_url).__name__}"
        )
    for number, url in enumerate(base_url):
        _check_url(f"base_url[{number}]", url)
    urls = tuple(url.rstrip("/") for url in base_url)  # ".../v1/" and ".../v1" are one
    if len(set(urls)) < len(urls):
        raise ValueError(f"base_url lists an endpoint twice: {list(base_url)!r}")
    return urls


def _check_url(name: str, url: object) -> None:
    if not isinstance(url, str):
        raise TypeError(f"{name} must be a str, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{name} has a bad port: {url!r} ({exc})") from None


def check_hedge(hedge: object) -> float | None:
    """The share of extra requests hedging may send (``True``: 0.02), or None (off)."""
    if hedge is None or hedge is False:
        return None
    if hedge is True:
        return DEFAULT_HEDGE_FRACTION
    if (
        not isinstance(hedge, (int, float))
        or isinstance(hedge, bool)
        or not math.isfinite(hedge)
        or not 0 < hedge <= 1
    ):
        raise ValueError(
            f"hedge must be True, False or a fraction of the batch in (0, 1], got {hedge!r}"
        )
    return float(hedge)


def check_positive(name: str, value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str | None, ...]) -> None:
    """`value` is one of `choices`, or a ValueError naming `name` and them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def check_int(name: str, value: object, *, minimum: int) -> int:
    """`value` if it is an int of at least `minimum`; else the error naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_workers(workers: object, max_concurrency: int, backend: str) -> int | None:
    """The worker count to use (None: the default), at most `max_concurrency`.

    A count far above this machine's cores is an error for local workers: starting a
    million processes would stall the machine long before the first request.
    """
    if workers is None:
        return None
    check_int("workers", workers, minimum=0)
    assert isinstance(workers, int)
    cores = psutil.cpu_count() or 1
    allowed = max(_MIN_WORKERS_ALLOWED, _WORKERS_PER_CORE * cores)
    if backend != "ray" and workers > allowed:
        raise ValueError(
            f"workers={workers} is far more than this machine's {cores} CPU cores can use "
            f"(at most {allowed} here); the default is one per core"
        )
    return min(workers, max_concurrency)


def pickled_callable(name: str, value: object, dump: Callable[[], bytes]) -> bytes:
    """`dump()`, or a TypeError naming `value` when it (or what it holds) cannot pickle."""
    try:
        return dump()
    except Exception as exc:
        raise TypeError(
            f"{name} {value!r} cannot be sent to the workers: cloudpickle failed with {exc!r} "
            "(a lock, an open file or a client in its closure? create those inside it, or "
            "in an initializer)"
        ) from None
