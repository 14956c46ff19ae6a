"""A hard cap on what a batch may spend: ``max_cost=``, across every worker.

Before a request is sent, its worst case is reserved: its estimated input tokens at the
input price, plus its output cap (``max_output_tokens``) at the output price, or, with no
cap, half again the most output tokens any answer of the batch has had so far (starting
from a conservative `_FIRST_OUTPUT_GUESS`). Only a cap makes the worst case certain: an
uncapped answer longer than any before it can cost more than was reserved for it. When
the answer comes, the reservation is settled with what it really cost. A request whose
reservation would take spend past the cap is not sent; once nothing is in flight that
could settle below its reservation, nothing more ever can be, and the batch ends with
`BudgetExceededError` for every index not sent.

An attempt that failed with an HTTP error status cost nothing; one that timed out or
lost its connection may have been paid for, so its reservation counts as spent. Every
attempt is reserved anew, retries included.
"""

from __future__ import annotations

from .costs import PriceTable
from .errors import APIError

__all__ = ["Spending"]

# Output tokens assumed for an uncapped request before any answer was seen: enough for
# most chat answers; the running maximum (with a margin) takes over with the first answer.
_FIRST_OUTPUT_GUESS = 1024
_OUTPUT_MARGIN = 1.5


class Spending:
    """What one batch has spent and has reserved, against its cap.

    Example::

        spending = Spending(2.50, PriceTable())
        reserved = spending.reserve("gpt-4o-mini", input_tokens=900, output_cap=None)
        if reserved is not None:
            ...  # send it; later:
            spending.settle(reserved, result)

    Parameters:
        max_cost: USD the batch may spend at most.
        prices: where model prices come from.
    """

    def __init__(self, max_cost: float, prices: PriceTable) -> None:
        self.max_cost = max_cost
        self.spent = 0.0  # settled: what answers (and attempts that may be paid) cost
        self.reserved = 0.0  # the worst cases of attempts in flight
        self._open = 0  # how many reservations are not settled yet
        self._prices = prices
        self._most_output: int | None = None  # the most output tokens one answer has had

    def __repr__(self) -> str:
        return f"<Spending ${self.spent:.4f} + ${self.reserved:.4f} reserved of ${self.max_cost}>"

    @property
    def open_reservations(self) -> int:
        """Reservations of attempts not settled yet."""
        return self._open

    @property
    def exhausted(self) -> bool:
        """Nothing in flight can free room: a request that does not fit now never will."""
        return self._open == 0

    def reserve(
        self, model: str, input_tokens: int, output_cap: int | None, tier: str = "default"
    ) -> float | None:
        """Reserve an attempt's worst case; None when it would take spend past the cap."""
        price = self._prices.price(model, tier)
        if price is None:
            raise ValueError(f"no price is known for model {model!r}")
        worst = price.worst_case(input_tokens, output_cap or self._output_guess())
        if self.spent + self.reserved + worst > self.max_cost:
            return None
        self.reserved += worst
        self._open += 1
        return worst

    def settle(
        self,
        reserved: float,
        cost_usd: float | None,
        error: BaseException | None,
        output_tokens: int = 0,
    ) -> None:
        """An attempt that had `reserved` ended: charge what it cost (see the module)."""
        self._open -= 1
        self.reserved = max(0.0, self.reserved - reserved) if self._open else 0.0
        if error is None:
            self._most_output = max(self._most_output or 0, output_tokens)
            self.spent += cost_usd if cost_usd is not None else reserved
        elif not isinstance(error, APIError):
            self.spent += reserved  # a timeout or a lost connection may have been billed

    def _output_guess(self) -> int:
        if self._most_output is None:
            return _FIRST_OUTPUT_GUESS
        return max(16, int(self._most_output * _OUTPUT_MARGIN))
