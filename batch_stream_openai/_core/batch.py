"""One batch assembled from checked options: its input, policies, delivery and loop.

`BatchPool` lends each batch what the pool keeps (`PoolParts`: the workers, the budget,
the endpoints, the prices, the cache); `build_batch` checks the batch's own options
(raising the exact error before anything starts), and puts together the `Dispatcher`
that decides, the `BatchLoop` that runs it against the workers and, with
``mode="batch"``, the Batch API route that is its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._backends import Worker
from .._observe.tally import Tally
from .._observe.telemetry import Telemetry
from .._policy.fleet import Fleet
from .._policy.hedging import Hedging
from .._policy.limits import Budget
from .._policy.retry import Retries, RetrySchedule
from .._spending.admission import Admission
from .._spending.cache import ResponseCache
from .._spending.cap import Spending
from .._spending.prices import PriceTable
from .._wire.prefixes import prefix_key
from .._wire.protocol import BatchOptions, Postprocess
from ..results import BatchSummary
from .checks import (
    RequestChecker,
    check_bool,
    check_callable,
    check_choice,
    check_hedge,
    check_positive,
    pickled_callable,
)
from .delivery import Delivery
from .dispatcher import Dispatcher, Policies
from .intake import Intake
from .loop import BatchLoop
from .modes import BatchMode
from .options import refuse_idle
from .progress import ProgressBar
from .settings import PoolSettings
from .supervisor import Supervisor

if TYPE_CHECKING:
    from .._batchapi.route import JobRoute

__all__ = ["Batch", "PoolParts", "build_batch"]


@dataclass(frozen=True)
class PoolParts:
    """What a pool lends each of its batches."""

    settings: PoolSettings
    budget: Budget
    fleet: Fleet
    schedule: RetrySchedule
    prices: PriceTable
    checker: RequestChecker
    cache: ResponseCache | None
    supervisor: Supervisor
    postprocess: Postprocess | None  # the pool's (a batch's own wins)
    served: Tally | None = None  # the tally `metrics_port` serves, if any


@dataclass(frozen=True)
class Batch:
    """One batch, checked and ready: the loop to run, its summary, and with
    ``mode="batch"`` the Batch API route (told each index the caller takes)."""

    loop: BatchLoop
    summary: BatchSummary
    route: JobRoute | None


def build_batch(
    parts: PoolParts,
    batch_id: int,
    requests: Iterable[Any],
    options: Mapping[str, Any],
    *,
    replay: bool,
    online_rate: float,
) -> Batch:
    """The batch of `requests` with `options` (`BatchPool.stream`'s), checked now.

    `replay`: give back what earlier runs of a journaled batch yielded too (`run`);
    `online_rate`: requests per second the pool did online (a deadline's estimate).
    """
    refuse_idle(options)
    postprocess = options.get("postprocess") or parts.postprocess
    check_callable("postprocess", postprocess)
    rich = options.get("return_results", False)
    check_bool("return_results", rich)
    check_bool("progress", options.get("progress", False))
    hedge = check_hedge(options.get("hedge", False))
    group = options.get("group_prefixes", True)
    check_bool("group_prefixes", group)
    check_choice("prompt_cache_key", options.get("prompt_cache_key"), (None, "auto"))
    cache_key = options.get("prompt_cache_key") == "auto"
    spending = _spending(options.get("max_cost"), parts.prices)
    checker = parts.checker if spending is None else parts.checker.with_prices(parts.prices)
    mode = BatchMode.check(options, parts.settings.max_retries, online_rate)
    check_item = _check_requests(requests, checker.for_jobs() if mode.mode == "batch" else checker)
    summary = BatchSummary()
    admission = Admission(
        parts.cache,
        parts.settings.routed_base_url,
        spending,
        replays=postprocess is not None,
        prices=parts.prices,
        tier="flex" if mode.mode == "flex" else "default",
    )
    route = None
    if mode.mode == "batch":
        route = mode.route(
            requests,
            base_url=parts.settings.routed_base_url,
            api_key=parts.settings.secret,
            prices=parts.prices,
            check_item=check_item,
            spending=spending,
            admission=admission,
            replay=replay,
            wake=parts.supervisor.wake,
            summary=summary,
        )
    total = len(requests) if isinstance(requests, Sized) else None
    telemetry = Telemetry.start(
        lambda: dispatcher.state(), lambda: _described(options, total, parts), parts.served
    )
    dispatcher: Dispatcher[Worker] = Dispatcher(
        batch_id,
        _intake(requests, route, check_item, group, parts.fleet, cache_key),
        _policies(parts, mode, admission, hedge, telemetry),
        Delivery(
            summary,
            rich=rich,
            urls=parts.fleet.urls,
            on_finish=None if route is None else route.finished,
            telemetry=telemetry,
        ),
        deadline=mode.deadline,
    )
    cap = None if spending is None else spending.max_cost
    progress = ProgressBar(summary, total, cap) if options.get("progress") else None
    message = _options_message(batch_id, postprocess, rich, mode, parts, cache_key)
    loop = BatchLoop(dispatcher, parts.supervisor, message, admission, progress, telemetry)
    return Batch(loop, summary, route)


def _intake(
    requests: Iterable[Any],
    route: JobRoute | None,
    check_item: Callable[[int, object], None] | None,
    group: bool,
    fleet: Fleet,
    prompt_cache_key: bool,
) -> Intake:
    """The dispatcher's input: the caller's requests, or the Batch API route's items;
    with their prefix keys when the grouping, the endpoints or `prompt_cache_key` use
    them."""
    keyed = group or fleet.cache_aware or prompt_cache_key
    return Intake(
        requests if route is None else route,
        indexed=route is not None,
        check_item=check_item if route is None else None,
        prefix_of=prefix_key if keyed else None,
        group=group,
        drain=len(fleet.urls) == 1,
    )


def _policies(
    parts: PoolParts,
    mode: BatchMode,
    admission: Admission,
    hedge: float | None,
    telemetry: Telemetry | None,
) -> Policies:
    """What decides for the batch: the pool's budget and endpoints, its own retries,
    admission and hedging (and where each attempt is recorded)."""
    flex_fallback = mode.mode == "flex" and mode.flex_fallback
    return Policies(
        parts.budget,
        Retries(parts.schedule, len(parts.fleet.urls), flex_fallback),
        admission,
        parts.fleet,
        Hedging(hedge) if hedge is not None else None,
        telemetry,
    )


def _described(options: Mapping[str, Any], total: int | None, parts: PoolParts) -> dict[str, Any]:
    """The batch span's attributes: its size when known, and the options that shape it."""
    settings = parts.settings
    shaped = {
        "size": total,
        "mode": options.get("mode", "online"),
        "max_concurrency": "auto" if settings.auto_concurrency else settings.max_concurrency,
        "endpoints": len(parts.fleet.urls),
        "cache": parts.cache is not None,
        "max_cost": options.get("max_cost"),
        "hedge": bool(options.get("hedge")),
        "workers": settings.workers,
    }
    return {f"batch_stream_openai.batch.{k}": v for k, v in shaped.items() if v is not None}


def _check_requests(
    requests: object, checker: RequestChecker
) -> Callable[[int, object], None] | None:
    """Check a list whole now; the check for each item of any other iterable."""
    if isinstance(requests, Sequence):
        checker.check_all(requests)
        return None
    if not isinstance(requests, Iterable):
        raise TypeError(
            f"requests must be an iterable of OpenAIRequest, got {type(requests).__name__}"
        )
    return checker


def _options_message(
    batch_id: int,
    postprocess: Postprocess | None,
    rich: bool,
    mode: BatchMode,
    parts: PoolParts,
    prompt_cache_key: bool,
) -> BatchOptions:
    """What the workers are told of the batch before its first task."""
    blob = None
    if postprocess is not None:
        blob = pickled_callable("postprocess", postprocess, lambda: cloudpickle.dumps(postprocess))
    return BatchOptions(
        batch_id,
        blob,
        # The cache and the batch journal keep answers whole (`StoredAnswer`).
        with_body=rich or parts.cache is not None or mode.mode == "batch",
        service_tier=mode.service_tier,
        timeout=mode.attempt_timeout(parts.settings.timeout),
        prompt_cache_key=prompt_cache_key,
    )


def _spending(max_cost: object, prices: PriceTable) -> Spending | None:
    if max_cost is None:
        return None
    check_positive("max_cost", max_cost)
    assert isinstance(max_cost, (int, float))
    return Spending(float(max_cost), prices)
