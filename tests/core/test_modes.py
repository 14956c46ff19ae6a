"""The modes other than batch: flex (with its fallback), a deadline online; option checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from batch_stream_openai import APIError, BatchPool, DeadlineExceededError, OpenAIRequest
from batch_stream_openai._spending.prices import PriceTable
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import SYSTEM, answers, ask

pytestmark = pytest.mark.timeout(60)


def test_flex_sends_the_flex_tier_and_prices_it_at_the_flex_rate(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    request = OpenAIRequest(SYSTEM, "f0", model="gpt-5-mini")  # a model with a flex price
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        flex = pool.run([request], mode="flex", return_results=True)[0]
        online = pool.run([request], return_results=True)[0]
    tiers = [r.body.get("service_tier") for r in fake.requests()]
    assert tiers == ["flex", None]
    assert flex.text == online.text == answers(["f0"])[0]
    prices = PriceTable({})
    assert flex.usage is not None and flex.usage == online.usage
    assert flex.cost_usd == pytest.approx(prices.cost("gpt-5-mini", flex.usage, "flex"))
    assert online.cost_usd == pytest.approx(prices.cost("gpt-5-mini", online.usage))
    assert flex.cost_usd < online.cost_usd * 0.6


def test_flex_without_capacity_falls_back_to_the_standard_tier(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(flex_unavailable=3)  # the first attempt and both retries
    try:
        with BatchPool(max_concurrency=2, workers=1, max_retries=2, **pool_options) as pool:
            result = pool.run([ask("g0")], mode="flex", return_results=True)[0]
    finally:
        fake.configure(flex_unavailable=0)
    assert result.text == answers(["g0"])[0]
    assert result.attempts == 4
    tiers = [r.body.get("service_tier") for r in fake.requests()]
    assert tiers == ["flex", "flex", "flex", None]


def test_flex_without_the_fallback_yields_the_429(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(flex_unavailable=2)
    try:
        with BatchPool(max_concurrency=2, workers=1, max_retries=1, **pool_options) as pool:
            [value] = pool.run([ask("h0")], mode="flex", flex_fallback=False)
    finally:
        fake.configure(flex_unavailable=0)
    assert isinstance(value, APIError) and value.status_code == 429
    assert value.code == "resource_unavailable"
    assert len(fake.requests()) == 2


def test_online_requests_not_done_by_the_deadline_yield_deadline_exceeded(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["quick", "[[latency=30]] slow", "[[latency=30]] slower", "also quick"]
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        values = dict(pool.stream([ask(u) for u in users], deadline=1.5))
        # The pool is usable afterwards, and the given-up requests are not waited for.
        assert pool.run([ask("after")]) == answers(["after"])
    assert values[0] == answers(["quick"])[0]
    for index in (1, 2, 3):  # two were running, one was never sent
        assert isinstance(values[index], DeadlineExceededError)
        assert values[index].index == index


def test_mode_options_are_checked(pool_options: dict[str, Any]) -> None:
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        with pytest.raises(ValueError, match="mode must be one of"):
            pool.run([ask("x")], mode="cheap")
        with pytest.raises(ValueError, match="batch_size must be at most 50000"):
            pool.run([ask("x")], mode="batch", batch_size=50_001)
        with pytest.raises(ValueError, match="journal='j' cannot act here: it is only for mode='b"):
            pool.run([ask("x")], journal="j")
        with pytest.raises(ValueError, match="flex_fallback=False cannot act here: it is only f"):
            pool.run([ask("x")], flex_fallback=False)
        with pytest.raises(ValueError, match="deadline must be timezone-aware"):
            pool.run([ask("x")], deadline=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="deadline must be a positive number"):
            pool.run([ask("x")], deadline=-1)
