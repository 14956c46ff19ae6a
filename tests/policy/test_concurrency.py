"""``max_concurrency="auto"``: its limit against a modelled GPU server in-process, then a
real pool against the bundled server in capacity mode."""

from __future__ import annotations

import random
import statistics

import pytest

from batch_stream_openai import APIError, BatchPool, stream_batch
from batch_stream_openai._policy.concurrency import (
    INITIAL_LIMIT,
    OVERLOAD_SAMPLE,
    REPROBE_S,
    SLACK_S,
    TOLERANCE,
    GradientLimit,
)
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY, FakeClock, ask

pytestmark = pytest.mark.timeout(10)


def serve(
    limit: GradientLimit, clock: FakeClock, capacity: int, service_s: float, rounds: int
) -> list[int]:
    """Run `rounds` round trips against a server serving `capacity` at once: each round,
    `limit.allowed` requests go and come back after the queueing the model says."""
    seen = []
    for _ in range(rounds):
        in_flight = limit.allowed
        latency = service_s * max(1.0, in_flight / capacity)
        clock.now += latency
        for left in range(in_flight - 1, -1, -1):
            limit.on_answer(latency, left)
        seen.append(limit.allowed)
    return seen


@pytest.mark.fast
def test_the_limit_grows_to_the_capacity_and_settles_below_the_tolerance() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    assert limit.allowed == INITIAL_LIMIT
    seen = serve(limit, clock, capacity=64, service_s=0.1, rounds=60)
    assert max(seen[:10]) >= 64  # within a few round trips
    for allowed in seen[20:]:
        assert 0.9 * 64 <= allowed <= (TOLERANCE + SLACK_S / 0.1) * 64 * 1.15


@pytest.mark.fast
def test_the_limit_never_passes_its_cap() -> None:
    clock = FakeClock()
    limit = GradientLimit(50, clock)
    assert max(serve(limit, clock, capacity=1000, service_s=0.1, rounds=30)) == 50


@pytest.mark.fast
def test_a_burst_of_overload_halves_the_limit_once() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    serve(limit, clock, capacity=64, service_s=0.1, rounds=20)
    before = limit.allowed
    for _ in range(OVERLOAD_SAMPLE):  # a full queue turns everything away
        limit.on_overload()
    assert limit.allowed == before // 2
    clock.now += 1.0
    for _ in range(OVERLOAD_SAMPLE):
        limit.on_overload()
    assert limit.allowed == before // 4


@pytest.mark.fast
def test_a_503_now_and_then_and_other_errors_are_not_load() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    serve(limit, clock, capacity=64, service_s=0.1, rounds=20)
    before = limit.allowed
    for answer in range(3000):
        clock.now += 0.002
        if answer % 30 == 0:
            limit.on_overload()  # one 503 in 30
        elif answer % 7 == 0:
            limit.on_error()  # a 400, a refused connection
        else:
            limit.on_answer(0.1, before - 1)
    assert limit.allowed >= 0.9 * before


@pytest.mark.fast
def test_after_a_burst_the_limit_is_back_within_a_few_round_trips() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    serve(limit, clock, capacity=64, service_s=0.1, rounds=30)
    before = limit.allowed
    for _ in range(5):  # five bursts in a row take it down to 1/32 of it
        clock.now += 1.0
        for _ in range(OVERLOAD_SAMPLE):
            limit.on_overload()
    assert limit.allowed <= before / 16
    seen = serve(limit, clock, capacity=64, service_s=0.1, rounds=12)
    assert seen[-1] >= 0.9 * before, (before, seen)


@pytest.mark.fast
def test_an_unused_limit_does_not_grow() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    for _ in range(100):
        limit.on_answer(0.1, 0)  # one request at a time: the limit is not what holds it
    assert limit.allowed == INITIAL_LIMIT


@pytest.mark.fast
def test_a_slower_server_is_measured_again_instead_of_starving_it() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    serve(limit, clock, capacity=64, service_s=0.1, rounds=30)
    # Longer prompts: the server needs twice as long for each, whatever the load.
    serve(limit, clock, capacity=64, service_s=0.2, rounds=int(REPROBE_S / 0.2) + 60)
    assert limit.baseline is not None and limit.baseline >= 0.2
    assert limit.allowed >= 0.9 * 64


@pytest.mark.timeout(90)
def test_auto_finds_what_a_capacity_server_sustains_without_timeouts() -> None:
    capacity = 16
    with FakeOpenAIServer(latency=0.05, capacity=capacity) as server:
        in_flight: list[int] = []
        latencies: list[float] = []
        stream = stream_batch(
            [ask(f"q{i}") for i in range(1500)],
            base_url=server.base_url,
            api_key=TEST_API_KEY,
            max_concurrency="auto",
            workers=1,
            return_results=True,
        )
        for done, (_, result) in enumerate(stream):
            assert result.ok, result.error
            if done >= 500:  # it has found its limit
                latencies.append(result.latency_s)
                if done % 50 == 0:
                    in_flight.append(server.stats().in_flight)
    assert 0.75 * capacity <= statistics.median(in_flight) <= 1.6 * capacity
    assert statistics.median(latencies) <= 1.6 * 0.05 + 0.02


@pytest.mark.timeout(60)
def test_auto_still_halves_on_429(fake: FakeOpenAIServer) -> None:
    with BatchPool(
        base_url=fake.base_url,
        api_key=TEST_API_KEY,
        max_concurrency="auto",
        workers=1,
        max_retries=0,
    ) as pool:
        limit = pool.fleet.endpoints[0].limit
        assert limit is not None
        pool.run([ask(f"warm {i}") for i in range(400)])
        before = limit.limit
        assert before > INITIAL_LIMIT  # a fast server is not taken for a queueing one
        results = pool.run([ask(f"busy {i} [[status=429 retry_after=0]]") for i in range(5)])
        assert all(isinstance(r, APIError) and r.status_code == 429 for r in results)
        assert limit.limit == before / 2  # once for the burst


@pytest.mark.fast
def test_a_halving_during_a_probe_is_not_undone_when_the_probe_ends() -> None:
    clock = FakeClock()
    limit = GradientLimit(1024, clock)
    serve(limit, clock, capacity=64, service_s=0.1, rounds=int(REPROBE_S / 0.1))
    while limit.allowed > limit.limit / 2 + 1:  # until the probe window (at half) starts
        serve(limit, clock, capacity=64, service_s=0.1, rounds=1)
    before = limit.limit
    for _ in range(OVERLOAD_SAMPLE):  # timeouts of what was sent at the full limit
        limit.on_overload()
    while limit.allowed <= limit.limit / 2 + 1:  # until the probe ends
        serve(limit, clock, capacity=64, service_s=0.1, rounds=1)
    assert limit.limit == before / 2


@pytest.mark.fast
def test_answers_of_very_different_lengths_are_not_taken_for_queueing() -> None:
    clock, rng = FakeClock(), random.Random(1)
    limit = GradientLimit(1024, clock)
    for _ in range(20_000):  # unloaded: 20 to 400 output tokens at 5 ms each
        clock.now += 0.01
        limit.on_answer(0.02 + 0.005 * rng.randint(20, 400), limit.allowed - 1)
    assert limit.allowed >= 256


@pytest.mark.timeout(120)
def test_stragglers_and_a_503_now_and_then_do_not_slow_auto_down(
    fake: FakeOpenAIServer,
) -> None:
    fake.configure(latency=0.1, capacity=16)
    users = [
        f"mixed {i}"
        + (" [[status=503 times=1]]" if i % 30 == 0 else "")
        + (" [[straggle=2]]" if i % 20 == 7 else "")
        for i in range(300)
    ]
    walls = {}
    for concurrency in (16, "auto"):
        with BatchPool(
            base_url=fake.base_url, api_key=TEST_API_KEY, max_concurrency=concurrency, workers=1
        ) as pool:
            fake.reset()
            stream = pool.stream([ask(f"{u} {concurrency}") for u in users])
            assert all(isinstance(value, str) for _, value in stream)
            walls[concurrency] = stream.summary.wall_s
            limit = pool.fleet.endpoints[0].limit
            if limit is not None:
                assert limit.allowed >= 8  # it never collapsed to 1
    assert walls["auto"] <= 1.6 * walls[16], walls
