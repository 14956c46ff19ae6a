"""Hedging: when a running request gets a duplicate and how many may (in-process), then
a real straggler on the bundled server."""

from __future__ import annotations

import pytest

from batch_stream_openai import run_batch, stream_batch
from batch_stream_openai._policy.hedging import HEDGE_AFTER_P50, HEDGE_AFTER_P95, Hedging
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import SYSTEM, TEST_API_KEY, ask, wait_until

pytestmark = pytest.mark.timeout(10)


@pytest.mark.fast
def test_no_threshold_until_enough_answers_then_a_multiple_of_the_p95() -> None:
    hedging = Hedging(0.02)
    for i in range(19):
        hedging.answered(0.1 if i % 4 else 1.0)  # a quarter of them slow
    assert hedging.threshold(tail=False) is None
    hedging.answered(1.0)
    assert hedging.threshold(tail=False) == pytest.approx(HEDGE_AFTER_P95 * 1.0)
    assert hedging.threshold(tail=True) == pytest.approx(1.0)


@pytest.mark.fast
def test_answers_that_all_take_about_as_long_are_hedged_past_a_multiple_of_the_median() -> None:
    hedging = Hedging(0.02)
    for i in range(20):
        hedging.answered(0.100 + i / 10_000)  # only noise: no straggler among them
    assert hedging.threshold(tail=True) == pytest.approx(HEDGE_AFTER_P50 * 0.101, rel=0.02)


@pytest.mark.fast
def test_hedges_stay_within_the_fraction_of_the_requests_read() -> None:
    hedging = Hedging(0.02)
    assert not hedging.allowed(read=49)
    assert hedging.allowed(read=50)
    hedging.sent_one()
    assert not hedging.allowed(read=99)
    assert hedging.allowed(read=100)


@pytest.mark.timeout(60)
def test_a_stragglers_duplicate_wins_and_the_server_sees_the_original_cancelled(
    fake: FakeOpenAIServer,
) -> None:
    fake.configure(latency=0.02)
    requests = [ask(f"q{i}") for i in range(100)]
    requests[60] = ask("late [[straggle=20]]")
    stream = stream_batch(
        requests,
        base_url=fake.base_url,
        api_key=TEST_API_KEY,
        max_concurrency=10,
        workers=2,
        return_results=True,
        hedge=True,
    )
    results = dict(stream)
    late = results[60]
    assert late.ok and late.hedged and late.attempts == 2 and late.latency_s < 10
    assert late.text == expected_answer(SYSTEM, "late [[straggle=20]]")
    assert sorted(results) == list(range(100)) and all(r.ok for r in results.values())
    assert 1 <= stream.summary.hedges <= 2  # 2% of 100
    assert sum(r.hedged for r in results.values()) == stream.summary.hedges
    assert fake.stats().requests == 100 + stream.summary.hedges

    def original_cancelled() -> bool:
        statuses = [r.status for r in fake.requests() if "late" in str(r.body)]
        return sorted(statuses) == [0, 200]

    wait_until(original_cancelled, what="the original's connection closed")


@pytest.mark.timeout(60)
def test_without_hedge_nothing_is_sent_twice(fake: FakeOpenAIServer) -> None:
    requests = [ask(f"q{i}") for i in range(50)] + [ask("late [[straggle=0.5]]")]
    results = run_batch(requests, base_url=fake.base_url, api_key=TEST_API_KEY, workers=1)
    assert not [r for r in results if isinstance(r, Exception)]
    assert fake.stats().requests == 51
