"""Rate budgets: pacing, adaptive concurrency, token estimates, rate-limit headers."""

from __future__ import annotations

import time

import pytest

from batch_stream_openai import OpenAIRequest
from batch_stream_openai._policy.limits import (
    MAX_POOL_PAUSE_S,
    AdaptiveConcurrency,
    Budget,
    Pacer,
    estimate_tokens,
)
from batch_stream_openai._worker.providers import RateLimitHeaders
from batch_stream_openai.request import RawRequest

from ..helpers import FakeClock

pytestmark = pytest.mark.fast


def test_pacer_spaces_sends_at_the_rate() -> None:
    pacer = Pacer(per_minute=600)  # one every 0.1 s
    assert pacer.delay() == 0
    first = pacer.consume(1)
    assert 0.09 < pacer.delay() <= 0.1
    second = pacer.consume(1)
    assert 0.19 < pacer.delay() <= 0.2
    pacer.correct(first, 0)  # the sends turned out to cost nothing
    pacer.correct(second, 0)
    assert pacer.delay() == 0


def test_pacer_never_lets_a_window_hold_more_than_the_limit() -> None:
    # 5,000 then 10,000 tokens at 10,000 per minute: the second must wait until the
    # first has left the window, not only until the rate says (which would be 30 s).
    clock = FakeClock(1000.0)
    pacer = Pacer(per_minute=10_000, clock=clock)
    pacer.consume(5_000)
    clock.now += 30
    assert pacer.delay(10_000) == pytest.approx(30.0)
    clock.now += 30
    assert pacer.delay(10_000) == 0
    pacer.consume(10_000)
    clock.now += 59.9
    assert pacer.delay(1) > 0


def test_a_send_larger_than_the_limit_goes_alone() -> None:
    clock = FakeClock(1000.0)
    pacer = Pacer(per_minute=100, clock=clock)
    assert pacer.delay(500) == 0  # an empty window: it goes, or it never would
    pacer.consume(500)
    clock.now += 60
    assert pacer.delay(1) > 0  # the rate rule still spaces what follows


def test_budget_pause_from_one_answer_is_capped() -> None:
    for pause in (3600.0, 1e12):
        budget = Budget(10, rpm=None, tpm=None, adaptive=True)
        budget.on_throttled(pause)
        assert MAX_POOL_PAUSE_S - 1 < budget.delay(0) <= MAX_POOL_PAUSE_S
        budget = Budget(10, rpm=None, tpm=None, adaptive=True)
        budget.on_answer(None, None, pause_s=pause)
        assert budget.delay(0) <= MAX_POOL_PAUSE_S


def test_pacer_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate limit must be > 0"):
        Pacer(0)


def test_adaptive_concurrency_halves_once_per_burst_and_grows_back() -> None:
    limit = AdaptiveConcurrency(64)
    limit.on_throttled()
    limit.on_throttled()  # same burst: no second halving
    assert limit.allowed == 32
    for _ in range(34):
        limit.on_success()
    assert limit.allowed == 33  # about one step per window of `limit` successes
    for _ in range(10_000):
        limit.on_success()
    assert limit.allowed == 64


def test_budget_waits_for_the_server_retry_after_only_when_adaptive() -> None:
    adaptive = Budget(10, rpm=None, tpm=None, adaptive=True)
    adaptive.on_throttled(0.5)
    assert 0.4 < adaptive.delay(0) <= 0.5
    assert adaptive.concurrency() == 5
    fixed = Budget(10, rpm=None, tpm=None, adaptive=False)
    fixed.on_throttled(0.5)
    assert fixed.delay(0) == 0
    assert fixed.concurrency() == 10


def test_budget_token_pacing_is_corrected_by_real_usage() -> None:
    budget = Budget(10, rpm=None, tpm=6000, adaptive=False)  # 100 tokens per second
    charge = budget.spend(50)
    assert 0.45 < budget.delay(50) <= 0.5
    budget.on_answer(charge, used_tokens=0, pause_s=0)
    assert budget.delay(50) == 0


def test_token_estimates_count_prompts_and_the_output_cap() -> None:
    short = estimate_tokens(OpenAIRequest("s", "x" * 400))
    capped = estimate_tokens(OpenAIRequest("s", "x" * 400, max_output_tokens=100))
    assert 50 <= short <= 150
    assert capped == short + 100
    raw = RawRequest(
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "x" * 400}],
            "max_tokens": 7,
        },
    )
    assert 50 <= estimate_tokens(raw) - 7 <= 150


@pytest.mark.parametrize("cap", ["abc", [5], -3, True, None, 2.5])
def test_token_estimates_never_raise_on_a_strange_body(cap: object) -> None:
    for field in ("max_output_tokens", "max_tokens", "max_completion_tokens"):
        raw = RawRequest("/v1/responses", {"model": "gpt-4o-mini", "input": "x" * 400, field: cap})
        assert 50 <= estimate_tokens(raw) <= 150


@pytest.mark.parametrize("cap", [float("inf"), float("nan")])
def test_a_body_that_json_cannot_carry_is_rejected_when_built(cap: float) -> None:
    with pytest.raises(ValueError, match=r"RawRequest.body cannot be sent as JSON"):
        RawRequest("/v1/responses", {"model": "gpt-4o-mini", "input": "x", "max_tokens": cap})


def test_rate_limit_headers_are_parsed_like_openai_sends_them() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "1200",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-reset-tokens": "250ms",
    }
    parsed = RateLimitHeaders.parse(headers)
    assert parsed == RateLimitHeaders(0, 1200, 90.0, 0.25)
    assert parsed is not None and parsed.pause_s() == 90.0
    assert RateLimitHeaders.parse({}) is None


def test_budget_pause_from_headers() -> None:
    budget = Budget(10, rpm=None, tpm=None, adaptive=True)
    started = time.monotonic()
    budget.on_answer(None, None, pause_s=0.3)
    assert 0.2 < budget.delay(0) + (time.monotonic() - started) <= 0.31
