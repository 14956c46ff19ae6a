"""What a request must get past before it is sent: the response cache and the cost cap.

The dispatcher asks `Admission` about each request it reads:

- with a cache (`cache.py`): its key; a stored answer for it (the request is then done);
  or whether an identical request is in flight already (it then waits for that one's
  answer instead of being sent: in-flight dedup);
- with ``max_cost`` (`cap.py`): a reservation of the attempt's worst case, before
  each attempt is sent, and its settlement when the attempt ends;
- and what each answer cost: its usage at its model's price (`prices.py`), worked out
  here, in the parent, once (the workers only report the usage).

Without either, every answer is "no key, no hit, no reservation needed": the hot path
pays a few attribute lookups.
"""

from __future__ import annotations

from .._pickling import set_unshared
from .._wire.answers import StoredAnswer
from ..errors import BudgetExceededError
from ..request import AnyRequest
from ..results import Result
from .cache import ResponseCache, cache_key
from .cap import NOTHING_RESERVED, Reservation, Spending
from .prices import PriceTable

__all__ = ["Admission"]


class Admission:
    """The response cache, in-flight dedup, the cost cap and the prices of one batch.

    Parameters:
        cache: the response cache, or None.
        base_url: where OpenAI-routed requests go (part of the cache key).
        spending: the batch's cost cap, or None.
        replays: cache hits need a worker (there is a `postprocess` to run on them).
        prices: where answers are priced (None: they are not).
        tier: the price tier online answers are sent at (``"flex"`` in flex mode).
    """

    def __init__(
        self,
        cache: ResponseCache | None = None,
        base_url: str = "",
        spending: Spending | None = None,
        replays: bool = False,
        prices: PriceTable | None = None,
        tier: str = "default",
    ) -> None:
        self.cache = cache
        self.spending = spending
        self.replays = replays
        self._prices = prices
        self._tier = tier
        self._base_url = base_url
        self._owners: dict[bytes, int] = {}  # {key: index of the request sent for it}
        self._duplicates: dict[bytes, list[int]] = {}  # {key: indices waiting for it}

    def __repr__(self) -> str:
        return (
            f"<Admission cache={self.cache} spending={self.spending} in_flight={len(self._owners)}>"
        )

    @property
    def caps_cost(self) -> bool:
        """There is a cost cap (each attempt reserves its worst case)."""
        return self.spending is not None

    def refusal(self, index: int) -> BudgetExceededError:
        """The error of request `index`, not sent: it could take spend past the cap."""
        cap = self.spending.max_cost if self.spending is not None else 0.0
        return BudgetExceededError(
            f"not sent: it could take the batch's spend past max_cost=${cap:g}", index=index
        )

    @property
    def cost_exhausted(self) -> bool:
        """The cap is reached and nothing in flight can free room: nothing more can go."""
        return self.spending is not None and self.spending.exhausted

    def key_of(self, request: AnyRequest) -> bytes | None:
        """The request's cache key, or None without a cache."""
        return cache_key(request, self._base_url) if self.cache is not None else None

    def stored(self, key: bytes | None) -> StoredAnswer | None:
        """The cached answer for `key`, or None."""
        if key is None or self.cache is None:
            return None
        return self.cache.get(key)

    def keep(self, key: bytes | None, answer: StoredAnswer) -> None:
        """Store an answer that came another way (a Batch API job), without a cache: drop it."""
        if key is not None and self.cache is not None:
            self.cache.put(key, answer)

    def wait_for(self, key: bytes | None, index: int) -> bool:
        """Park `index` behind an identical request in flight; False when there is none."""
        if key is None or key not in self._owners:
            return False
        self._duplicates.setdefault(key, []).append(index)
        return True

    def claim(self, key: bytes | None, index: int) -> None:
        """`index` is sent for `key`: identical requests read from now on wait for it."""
        if key is not None and key not in self._owners:
            self._owners[key] = index

    def done(self, key: bytes | None, index: int, result: Result) -> list[int]:
        """`index` is done: store its answer; return the duplicates that waited for it.

        The dispatcher answers them with the same answer (counted as deduplicated), or,
        if the request failed without one, sends each on its own.
        """
        if key is None or self._owners.get(key) != index:
            return []
        del self._owners[key]
        if not result.cached and self.cache is not None:
            answer = StoredAnswer.of(result)
            if answer is not None:
                self.cache.put(key, answer)
        return self._duplicates.pop(key, [])

    def price(self, result: Result, model: str, standard: bool) -> float:
        """Set what `result` cost, a result just received from a worker (nothing else
        holds it yet): its usage at the price of `model` (or of the model the provider
        named, a dated name say), at the batch's tier (`standard`: sent at the standard
        tier, flex having had no capacity). Each answer is priced once, here. Returns
        what its cached input tokens saved (USD)."""
        if self._prices is None or result.usage is None:
            return 0.0
        tier = "default" if standard else self._tier
        price = self._prices.price(model, tier)
        if price is None and result.model is not None:
            price = self._prices.price(result.model, tier)
        if price is None:
            return 0.0
        set_unshared(result, "cost_usd", price.cost(result.usage))
        return price.cache_saving(result.usage)

    def reserve_cost(
        self, model: str, prompt_tokens: int, output_cap: int | None
    ) -> Reservation | None:
        """Reserve an attempt's worst case (nothing without a cap); None when it may not go."""
        if self.spending is None:
            return NOTHING_RESERVED
        return self.spending.reserve(model, prompt_tokens, output_cap)

    def settle_cost(self, reservation: Reservation, result: Result | None) -> None:
        """An attempt that had `reservation` ended with `result` (None: its worker died)."""
        if self.spending is None:
            return
        if result is None:
            self.spending.settle(reservation, None, ConnectionError("the worker died"))
            return
        output = result.usage.output_tokens if result.usage is not None else 0
        self.spending.settle(reservation, result.cost_usd, result.error, output)

    def commit(self) -> None:
        """Write the cached answers now (the batch ended)."""
        if self.cache is not None:
            self.cache.commit()

    def tick(self) -> None:
        """Commit cached answers that have waited long enough (called by the batch loop)."""
        if self.cache is not None:
            self.cache.commit_if_due()
