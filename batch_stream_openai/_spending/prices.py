"""What a request costs: a price per model (the caller's, else genai-prices) times its usage.

Prices are looked up once per model and tier in the maintained `genai-prices` table
(OpenAI, Anthropic, Google and more, with cached-input, batch and flex prices), then kept:
the cost of one answer is three multiplications, cheap enough for every result. The
caller's ``prices={"my-model": {"input": 0.15, "output": 0.60}}`` (USD per million tokens,
optional ``"cached_input"``) overrides or adds models. Cached input tokens are priced at
the cached rate, reasoning tokens as output (they are part of the output count).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._signals import block_group_signals
from ..results import Usage

__all__ = ["Price", "PriceTable", "check_prices", "warm_up"]

# Price tiers: what the request was sent as ("batch": the Batch API, "flex": flex tier).
TIERS = ("default", "batch", "flex")
_CONTEXT = {"default": None, "batch": {"processing": "batch"}, "flex": {"service_tier": "flex"}}
_PRICE_KEYS = frozenset({"input", "output", "cached_input"})


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for one model (and tier).

    Example:

    >>> Price(input=0.15, output=0.60, cached_input=0.075).cost(Usage(1000, 200))
    0.00027
    """

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        """What `usage` costs, in USD."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        dollars = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        )
        return dollars / 1e6

    def cache_saving(self, usage: Usage) -> float:
        """What reading `usage`'s cached input tokens from the prompt cache saved, in
        USD (0 without a cached-input price)."""
        if self.cached_input is None:
            return 0.0
        cached = min(usage.cached_tokens, usage.input_tokens)
        return cached * (self.input - self.cached_input) / 1e6

    def worst_case(self, input_tokens: int, output_tokens: int) -> float:
        """The most a request of that many tokens can cost (no cached input), in USD."""
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


def check_prices(prices: object) -> dict[str, Price]:
    """The caller's ``prices=``, checked: ``{model: {"input": x, "output": y, ...}}``."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise TypeError(f"prices must be a dict of model -> prices, got {type(prices).__name__}")
    checked = {}
    for model, entry in prices.items():
        if not isinstance(model, str) or not isinstance(entry, Mapping):
            raise TypeError(f"prices[{model!r}] must map 'input'/'output' to USD per 1M tokens")
        unknown = set(entry) - _PRICE_KEYS
        if unknown or not {"input", "output"} <= set(entry):
            raise ValueError(
                f"prices[{model!r}] needs 'input' and 'output' (and may have 'cached_input'), "
                f"USD per million tokens; got {sorted(entry)}"
            )
        for key, value in entry.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"prices[{model!r}][{key!r}] must be a number >= 0, got {value!r}")
        checked[model] = Price(
            float(entry["input"]), float(entry["output"]), _float(entry.get("cached_input"))
        )
    return checked


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


class PriceTable:
    """Prices by model and tier: the caller's overrides, else genai-prices, looked up once.

    Example:

    >>> table = PriceTable({"my-model": Price(0.15, 0.60)})
    >>> table.cost("my-model", Usage(1000, 200))  # USD, or None when the price is unknown
    0.00027
    >>> table.cost("my-model", Usage(1000, 200), tier="batch")  # half
    0.000135

    Parameters:
        overrides: the caller's prices (`check_prices`), by model name. A batch or flex
            request for a model given here is charged half, as OpenAI charges; so is a
            batch request whose batch price genai-prices does not list (Azure's).
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._known: dict[tuple[str, str], Price | None] = {}  # {(model, tier): price}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PriceTable overrides={sorted(self._overrides)} known={len(self._known)}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"overrides": self._overrides}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["overrides"])  # type: ignore[misc]

    def price(self, model: str, tier: str = "default") -> Price | None:
        """The price of `model` sent at `tier`, or None when no table knows it."""
        key = (model, tier)
        if key not in self._known:
            with self._lock:
                self._known[key] = self._look_up(model, tier)
        return self._known[key]

    def cost(self, model: str | None, usage: Usage | None, tier: str = "default") -> float | None:
        """What `usage` of `model` costs in USD, or None when either is unknown."""
        if model is None or usage is None:
            return None
        price = self.price(model, tier)
        return price.cost(usage) if price is not None else None

    def _look_up(self, model: str, tier: str) -> Price | None:
        name = model.removeprefix("openai/")
        own = self._overrides.get(model) or self._overrides.get(name)
        if own is not None:
            return own if tier == "default" else _halved(own)
        price = _genai_price(name, tier)
        if tier == "batch" and price is not None and price == _genai_price(name, "default"):
            # The table lists no batch price (Azure's, say): every batch API routed halves.
            return _halved(price)
        return price


def _halved(price: Price) -> Price:
    """A batch or flex price the table does not list: half, as every batch API charges."""
    cached = None if price.cached_input is None else price.cached_input / 2
    return Price(price.input / 2, price.output / 2, cached)


_warming = threading.Lock()
_warmed = False


def warm_up() -> None:
    """Load genai-prices' table in a thread of its own now (its import and first lookup
    take ~0.3 s), once per process: the first answer of a batch, priced in the parent,
    then does not wait for it while the caller waits for that answer."""
    global _warmed
    with _warming:
        if _warmed:
            return
        _warmed = True
    thread = threading.Thread(target=_warm, name="price-table", daemon=True)
    thread.start()


def _warm() -> None:
    # Ctrl-C and SIGTERM are the main thread's: one this thread took while the main thread
    # ignores them for a moment (starting a worker) would be lost.
    block_group_signals()
    _genai_price("gpt-4o-mini", "default")


def _genai_price(model: str, tier: str) -> Price | None:
    """The price genai-prices has for `model` at `tier` (imported on first use: ~1 s)."""
    try:
        from genai_prices import Usage as PricedUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - a dependency; absent only in odd installs
        return None
    provider = None if "/" in model else "openai"
    try:
        calculation = calc_price(
            PricedUsage(input_tokens=1),
            model,
            provider_id=provider or "litellm",
            price_context=_CONTEXT[tier],
        )
    except LookupError:
        return None
    prices = calculation.model_price
    per_million = {
        key: _per_million(getattr(prices, attribute, None))
        for key, attribute in (
            ("input", "input_mtok"),
            ("output", "output_mtok"),
            ("cached_input", "cache_read_mtok"),
        )
    }
    if per_million["input"] is None:
        return None
    # An embedding model has no output price: it has no output.
    return Price(per_million["input"], per_million["output"] or 0.0, per_million["cached_input"])


def _per_million(value: object) -> float | None:
    """A genai-prices price (a Decimal, or tiered prices: their base rate) as a float."""
    base = getattr(value, "base", value)
    try:
        return float(base) if base is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
