"""Rate budgets: pacing, adaptive concurrency, token estimates, rate-limit headers."""

from __future__ import annotations

import time

import pytest

from batch_stream_openai import OpenAIRequest
from batch_stream_openai.limits import AdaptiveConcurrency, Budget, Pacer, estimate_tokens
from batch_stream_openai.request import RawRequest
from batch_stream_openai.results import RateLimitHeaders


def test_pacer_spaces_sends_at_the_rate() -> None:
    pacer = Pacer(per_minute=600)  # one every 0.1 s
    assert pacer.delay() == 0
    pacer.consume(1)
    assert 0.09 < pacer.delay() <= 0.1
    pacer.consume(1)
    assert 0.19 < pacer.delay() <= 0.2
    pacer.correct(-2)  # the sends turned out to cost nothing
    assert pacer.delay() == 0


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
    budget.spend(50)
    assert 0.45 < budget.delay(50) <= 0.5
    budget.on_answer(estimated_tokens=50, used_tokens=0, pause_s=0)
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
    budget.on_answer(0, None, pause_s=0.3)
    assert 0.2 < budget.delay(0) + (time.monotonic() - started) <= 0.31
