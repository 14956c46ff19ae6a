"""A hard cap on what a batch may spend: ``max_cost=``, across every worker.

Before a request is sent, its worst case is reserved: its estimated input tokens at the
input price, plus its output cap (``max_output_tokens``) at the output price. With no
cap, the output is estimated per model, from the answers of that model seen so far: 1.5
times the longest. Until a model has answered once, one request of it goes alone (the
others wait one round trip for its answer, instead of all being sent on a guess: 1,024
tokens reserved for answers of 10,000 overspent 8x). When the answer comes, the
reservation is settled with what it really cost. A request whose reservation would take
spend past the cap is not sent; once nothing is in flight that could settle below its
reservation, nothing more ever can be, and the batch ends with `BudgetExceededError` for
every index not sent.

So with ``max_output_tokens`` spend never passes the cap; without it, it can pass only by
what answers longer than 1.5 times the longest earlier answer of their model cost beyond
their reservation. The Batch API route reserves every line when it is spooled, long
before any answer: there the first estimate (`FIRST_OUTPUT_GUESS`) stands until jobs
answer, and only ``max_output_tokens`` makes the cap certain.

An attempt that failed with an HTTP error status cost nothing; one that timed out or
lost its connection may have been paid for, so its reservation counts as spent. Every
attempt is reserved anew, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import APIError
from .prices import PriceTable

__all__ = ["FIRST_OUTPUT_GUESS", "NOTHING_RESERVED", "Reservation", "Spending"]

# Output tokens assumed for an uncapped request before its model has answered: enough for
# most chat answers; the longest answer seen (with a margin) takes over with the first.
FIRST_OUTPUT_GUESS = 1024
_OUTPUT_MARGIN = 1.5


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one attempt holds of the cap until it is settled.

    Parameters:
        usd: its worst case.
        model: the model it was reserved for (answers teach its output length).
        probe: the first uncapped request of its model: the others wait for its answer.
    """

    usd: float
    model: str = ""
    probe: bool = False


# What an attempt holds without a cap.
NOTHING_RESERVED = Reservation(0.0)


class Spending:
    """What one batch has spent and has reserved, against its cap.

    Example:

    >>> spending = Spending(2.50, PriceTable())
    >>> reserved = spending.reserve("gpt-4o-mini", 900, output_cap=100)
    >>> reserved is not None  # it fits: send it, and settle it with what it cost
    True
    >>> spending.settle(reserved, cost_usd=0.0002, error=None, output_tokens=80)
    >>> round(spending.spent, 6)
    0.0002

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
        self._most_output: dict[str, int] = {}  # {model: most output tokens of one answer}
        self._probing: set[str] = set()  # models whose first uncapped answer is awaited

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
        self,
        model: str,
        input_tokens: int,
        output_cap: int | None,
        tier: str = "default",
        learn_first: bool = True,
    ) -> Reservation | None:
        """Reserve an attempt's worst case; None when it would take spend past the cap,
        or (`learn_first`) when it waits for the first answer of its model."""
        price = self._prices.price(model, tier)
        if price is None:
            raise ValueError(f"no price is known for model {model!r}")
        probe = False
        output = output_cap
        if output is None:
            seen = self._most_output.get(model)
            if seen is not None:
                output = max(16, int(seen * _OUTPUT_MARGIN))
            elif learn_first and model in self._probing:
                return None  # its model's first answer tells how long answers are
            else:
                output, probe = FIRST_OUTPUT_GUESS, learn_first
        worst = price.worst_case(input_tokens, output)
        if self.spent + self.reserved + worst > self.max_cost:
            return None
        self.reserved += worst
        self._open += 1
        if probe:
            self._probing.add(model)
        return Reservation(worst, model, probe)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose attempt was never made (its line left a job
        unanswered, to go again or online): nothing is charged."""
        self._open -= 1
        self.reserved = max(0.0, self.reserved - reservation.usd) if self._open else 0.0
        if reservation.probe:
            self._probing.discard(reservation.model)

    def charge(self, cost_usd: float) -> None:
        """An answer this run made no reservation for (a job an earlier run created and
        reserved): its cost counts, nothing is settled."""
        self.spent += cost_usd

    def settle(
        self,
        reservation: Reservation,
        cost_usd: float | None,
        error: BaseException | None,
        output_tokens: int = 0,
    ) -> None:
        """An attempt that had `reservation` ended: charge what it cost (see the module)."""
        self.release(reservation)
        if error is None:
            model = reservation.model
            self._most_output[model] = max(self._most_output.get(model, 0), output_tokens)
            self.spent += cost_usd if cost_usd is not None else reservation.usd
        elif not isinstance(error, APIError):
            self.spent += reservation.usd  # a timeout or a lost connection may have been billed
