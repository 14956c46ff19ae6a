"""Shared RPM budgets and adaptive concurrency, measured by the server that enforces them."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from batch_stream_openai import BatchPool, OpenAIRequest, stream_batch
from batch_stream_openai.testing import FakeOpenAIServer

pytestmark = pytest.mark.timeout(120)


def ask(user: str) -> OpenAIRequest:
    return OpenAIRequest("s", user, model="gpt-4o-mini", api="chat")


def test_an_rpm_limit_spreads_requests_across_all_workers(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    stream = stream_batch(
        [ask(f"paced {i}") for i in range(12)],
        max_concurrency=12,
        workers=2,
        rpm=240,
        **pool_options,
    )
    assert sorted(index for index, _ in stream) == list(range(12))
    times = sorted(r.received_at for r in fake.requests())
    assert len(times) == 12
    assert times[-1] - times[0] >= 2.5  # 240/min = one every 0.25 s: 11 gaps
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > 0.15  # spaced out, not sent in bursts


def test_adaptive_mode_meets_far_fewer_429s_than_a_fixed_concurrency(
    pool_options: dict[str, Any],
) -> None:
    rejected: dict[bool, int] = {}
    with FakeOpenAIServer(latency=0.05, rpm=3000) as limited:  # 50 requests per second
        for adaptive in (False, True):
            limited.reset()
            options = {**pool_options, "base_url": limited.base_url}
            with BatchPool(
                max_concurrency=100, workers=2, adaptive=adaptive, max_retries=30, **options
            ) as pool:
                stream = pool.stream([ask(f"storm {i}") for i in range(200)])
                results = [result for _, result in stream]
            assert all(isinstance(r, str) for r in results)
            rejected[adaptive] = limited.stats().by_status.get(429, 0)
            assert stream.summary.rate_limited == rejected[adaptive]
    # How many fewer depends on the machine's load; BENCHMARKS.md has measured ratios.
    assert rejected[True] < rejected[False], rejected
