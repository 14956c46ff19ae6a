"""A tqdm progress bar for one batch: done of the total when it is known, the rate and the
ETA (tqdm's), failed, retried, cached, Batch API jobs, sent and waiting, tokens, $."""

from __future__ import annotations

from typing import Any

from .._observe.tally import State
from ..results import BatchSummary

__all__ = ["ProgressBar"]


class ProgressBar:
    """Shows a batch's progress on stderr; refreshed as groups of results arrive.

    Parameters:
        summary: the batch's live counts.
        total: the number of requests when known (a list), else None.
        max_cost: the batch's spending cap, if any (spend is shown against it).
    """

    def __init__(
        self, summary: BatchSummary, total: int | None, max_cost: float | None = None
    ) -> None:
        from tqdm.auto import tqdm

        self._summary = summary
        self._cap = "" if max_cost is None else f"/{max_cost:.2f}"
        self._bar: Any = tqdm(total=total, unit="req", desc="batch", dynamic_ncols=True)

    def update(self, state: State) -> None:
        """Move the bar to the summary's counts; `state`: what is sent and waiting (a
        request waiting for its retry, or for the rate limit, is not in flight)."""
        summary = self._summary
        self._bar.update(summary.done - self._bar.n)
        extra: dict[str, Any] = {"cached": summary.cached} if summary.cached else {}
        if summary.jobs:  # the Batch API's jobs: "2 in_progress 1 done (1500/3000)"
            states = " ".join(f"{n} {status}" for status, n in sorted(summary.jobs.items()))
            answered, total = summary.job_lines
            extra["jobs"] = states + (f" ({answered}/{total})" if total else "")
        self._bar.set_postfix(
            failed=summary.failed,
            retried=summary.retries,
            **extra,
            in_flight=state.in_flight,
            **({"waiting": state.waiting} if state.waiting else {}),
            tok_s=f"{summary.tokens_per_s:.0f}",
            usd=f"{summary.cost_usd:.4f}{self._cap}",
            refresh=False,
        )

    def close(self) -> None:
        self._bar.close()
