"""A tqdm progress bar for one batch: done, failed, retried, cached, in flight, tokens, $."""

from __future__ import annotations

from typing import Any

from ..results import BatchSummary

__all__ = ["ProgressBar"]


class ProgressBar:
    """Shows a batch's progress on stderr; refreshed as groups of results arrive.

    Parameters:
        summary: the batch's live counts.
        total: the number of requests when known (a list), else None.
    """

    def __init__(self, summary: BatchSummary, total: int | None) -> None:
        from tqdm.auto import tqdm

        self._summary = summary
        self._bar: Any = tqdm(total=total, unit="req", desc="batch", dynamic_ncols=True)

    def update(self, in_flight: int) -> None:
        """Move the bar to the summary's counts."""
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
            in_flight=in_flight,
            tok_s=f"{summary.tokens_per_s:.0f}",
            usd=f"{summary.cost_usd:.4f}",
            refresh=False,
        )

    def close(self) -> None:
        self._bar.close()
