"""How a batch is sent: ``mode="online"`` (the workers), ``"batch"`` (the provider's Batch
API, at half price) or ``"flex"`` (online at the flex tier); its deadline.

`BatchMode.check` reads the per-batch options of `BatchPool.stream` that choose the
route, with the exact error for a bad one; `BatchMode.route` builds the Batch API route
(`jobs.py`) that a ``"batch"`` batch reads its input through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._batchapi.options import JobOptions
from .._spending.admission import Admission
from .._spending.cap import Spending
from .._spending.prices import PriceTable
from .._wire.config import Secret
from ..results import BatchSummary
from .checks import check_bool, check_choice, check_int, check_positive

if TYPE_CHECKING:
    from .._batchapi.route import JobRoute

__all__ = ["MODES", "BatchMode"]

MODES = ("online", "batch", "flex")
FLEX_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class BatchMode:
    """The route options of one batch, checked."""

    mode: str = "online"
    deadline: float | None = None  # monotonic
    journal: Path | None = None
    jobs: JobOptions = field(default_factory=JobOptions)
    flex_fallback: bool = True

    @property
    def service_tier(self) -> str | None:
        """What every online body carries (``"flex"`` in flex mode)."""
        return "flex" if self.mode == "flex" else None

    def attempt_timeout(self, pool_timeout: float) -> float | None:
        """Flex answers may take long: 900 s an attempt (OpenAI's advice), unless the
        pool was given a longer timeout; None (the pool's) in the other modes."""
        return max(FLEX_TIMEOUT_S, pool_timeout) if self.mode == "flex" else None

    @classmethod
    def check(cls, options: Mapping[str, Any], max_retries: int, online_rate: float) -> BatchMode:
        """The options' route, or the exact error for the first bad one (an option that
        cannot act in the mode is refused before, by `options.refuse_idle`)."""
        mode = options.get("mode", "online")
        check_choice("mode", mode, MODES)
        deadline = _deadline_of(options.get("deadline"))
        batch_size = _given_or(options, "batch_size", 50_000)
        check_int("batch_size", batch_size, minimum=1)
        if batch_size > 50_000:
            raise ValueError(
                f"batch_size must be at most 50000 (the API's limit), got {batch_size}"
            )
        poll_interval = _given_or(options, "poll_interval", 30.0)
        check_positive("poll_interval", poll_interval)
        reserve = options.get("online_reserve")
        if reserve is not None:
            check_positive("online_reserve", reserve)
        journal = options.get("journal")
        if journal is not None and not isinstance(journal, (str, Path)):
            raise TypeError(f"journal must be a path, got {type(journal).__name__}")
        jobs = JobOptions(
            batch_size, float(poll_interval), max_retries, deadline, reserve, online_rate
        )
        flex_fallback = options.get("flex_fallback")
        check_bool("flex_fallback", True if flex_fallback is None else flex_fallback)
        path = Path(journal) if journal is not None else None
        return cls(mode, deadline, path, jobs, flex_fallback is not False)

    def route(
        self,
        requests: Iterable[Any],
        *,
        base_url: str,
        api_key: Secret | None,
        prices: PriceTable,
        check_item: Callable[[int, object], None] | None,
        spending: Spending | None,
        admission: Admission,
        replay: bool,
        wake: Callable[[], None],
        summary: BatchSummary,
    ) -> JobRoute:
        """The Batch API route of this batch's `requests` (its thread starts on first
        read); the caller's journal is opened (and locked) now, so a bad one fails here."""
        # Imported here: only a batch in batch mode needs the route (and its SDK calls).
        from .._batchapi.journal import Journal
        from .._batchapi.provider import Providers
        from .._batchapi.route import JobRoute

        return JobRoute(
            requests,
            providers=Providers(base_url, api_key),
            journal=Journal(self.journal) if self.journal is not None else None,
            options=self.jobs,
            prices=prices,
            check_item=check_item,
            spending=spending,
            admission=admission,
            replay=replay,
            wake=wake,
            summary=summary,
        )


def _given_or(options: Mapping[str, Any], name: str, default: Any) -> Any:
    """The option as given (0 included: checked, never replaced), else its default."""
    value = options.get(name)
    return default if value is None else value


def _deadline_of(deadline: object) -> float | None:
    """A `deadline` (seconds from now, or an aware datetime) as a monotonic time."""
    if deadline is None:
        return None
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise ValueError("deadline must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return time.monotonic() + (deadline.timestamp() - time.time())
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError(f"deadline must be seconds or a datetime, got {type(deadline).__name__}")
    if not math.isfinite(deadline) or deadline <= 0:
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
    return time.monotonic() + float(deadline)
