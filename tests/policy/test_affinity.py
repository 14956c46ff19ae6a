"""Cache-aware routing: a prompt prefix goes to the endpoint it went to lately, while the
loads are close; in-process first, then real pools against two bundled servers."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection

import pytest

from batch_stream_openai import OpenAIRequest, run_batch, stream_batch
from batch_stream_openai._policy.fleet import (
    FAILURES_TO_SET_ASIDE,
    PREFIXES_PER_ENDPOINT,
    Fleet,
    margin,
)
from batch_stream_openai.errors import APIConnectionError

from ..helpers import TEST_API_KEY, closed_port, servers

pytestmark = pytest.mark.timeout(30)

URLS = ["http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"]


def send(fleet: Fleet, prefix: int, avoid: Collection[int] = ()) -> int:
    target = fleet.pick(avoid, prefix)
    assert target is not None
    fleet.sent(target, prefix)
    return target


@pytest.mark.fast
def test_a_prefix_stays_on_its_endpoint_while_loads_are_close_then_spills() -> None:
    fleet = Fleet(URLS)
    assert [send(fleet, prefix) for prefix in (1, 2, 3)] == [0, 1, 2]  # new: least busy
    for _ in range(10):  # answered as fast as sent: the loads stay even
        assert send(fleet, 2) == 1
        fleet.ended(1, 0.1, None)
    # Endpoint 1 answers nothing more: it takes prefix 2 while it has at most the margin
    # (4, the mean being under 4) more in flight than the least busy (1 each).
    assert margin(8 / 3) == 4
    assert [send(fleet, 2) for _ in range(5)] == [1] * 5  # 1 + 4 in flight, then 6
    spilled = send(fleet, 2)
    assert spilled in (0, 2)  # balance wins, and that endpoint is warm for prefix 2 now
    fleet.ended(1, 0.1, None)
    assert send(fleet, 2) == spilled


@pytest.mark.fast
@pytest.mark.parametrize("caps", [{"endpoint_concurrency": 3}, {"auto_cap": 64}])
def test_an_endpoint_without_room_is_never_chosen_for_its_prefix(caps: dict[str, int]) -> None:
    fleet = Fleet(URLS[:2], **caps)
    allowed = int(fleet.endpoints[0].allowed())  # 3, or where "auto" starts
    fleet.sent(0, 1)  # endpoint 0 holds prefix 1
    fleet.withdrawn(0)
    for _ in range(allowed - 1):
        fleet.sent(1)  # endpoint 1 is busy with others: the loads stay close
    taken = [send(fleet, 1) for _ in range(allowed + 1)]
    assert taken == [0] * allowed + [1]  # up to its limit, then elsewhere
    assert fleet.pick(prefix=1) is None  # both full: an answer will make room


@pytest.mark.fast
def test_least_loaded_routing_ignores_prefixes() -> None:
    fleet = Fleet(URLS, routing="least_loaded")
    assert [send(fleet, 7) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert not fleet.cache_aware and not Fleet(URLS[:1]).cache_aware


@pytest.mark.fast
def test_a_hedge_or_a_failover_prefers_another_warm_endpoint() -> None:
    fleet = Fleet(URLS)
    send(fleet, 5), send(fleet, 6)  # 5 on endpoint 0, 6 on endpoint 1
    fleet.sent(2, 5)  # prefix 5 went to endpoint 2 too (it spilled there once)
    fleet.sent(2, 6)  # endpoint 2 is the busiest now: 2 in flight
    # Avoiding endpoint 0 (a hedge of the copy there, or a failover from it): the other
    # warm one, not the least busy (endpoint 1 holds 1).
    assert send(fleet, 5, avoid={0}) == 2
    assert send(fleet, 8, avoid={0}) == 1  # no other is warm: the least busy
    # Only the avoided endpoint is warm: the least busy of the others.
    assert send(fleet, 6, avoid={1, 2}) == 0


@pytest.mark.fast
def test_an_endpoint_set_aside_forgets_its_prefixes() -> None:
    fleet = Fleet(URLS[:2])
    assert send(fleet, 9) == 0
    fleet.ended(0, 0.1, None)
    refused = APIConnectionError("Connection refused", retryable=True)
    for _ in range(FAILURES_TO_SET_ASIDE):
        fleet.sent(0)
        fleet.ended(0, 0.001, refused)
    assert not fleet.endpoints[0].prefixes  # it may come back with an empty cache
    assert send(fleet, 9) == 1


@pytest.mark.fast
@pytest.mark.timeout(60)
def test_memory_of_prefixes_stays_bounded_over_a_million_of_them() -> None:
    fleet = Fleet(URLS)
    for prefix in range(1_000_000):
        fleet.sent(prefix % 3, prefix)
        fleet.withdrawn(prefix % 3)
    sizes = [len(endpoint.prefixes) for endpoint in fleet.endpoints]
    assert sizes == [PREFIXES_PER_ENDPOINT] * 3
    assert send(fleet, 999_999) == (999_999 % 3)  # the latest are remembered


def shared_prefix_requests(prefixes: int, questions: int) -> list[OpenAIRequest]:
    """`questions` questions after each of `prefixes` long system prompts, shuffled."""
    requests = [
        OpenAIRequest(
            f"Task {p}. " + "An example and its answer. " * 60,
            f"question {q}",
            model="gpt-4o-mini",
            api="chat",
        )
        for p in range(prefixes)
        for q in range(questions)
    ]
    random.Random(4).shuffle(requests)
    return requests


def endpoints_per_prefix(*served: list[str]) -> list[int]:
    """How many endpoints served each system prompt, given each one's system prompts."""
    where: dict[str, set[int]] = {}
    for number, prompts in enumerate(served):
        for prompt in prompts:
            where.setdefault(prompt, set()).add(number)
    return [len(numbers) for numbers in where.values()]


def system_prompts(server: object) -> list[str]:
    return [r.body["messages"][0]["content"] for r in server.requests()]  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("routing", ["cache_aware", "least_loaded"])
def test_with_two_replicas_each_prefix_is_served_by_one_of_them(routing: str) -> None:
    requests = shared_prefix_requests(prefixes=16, questions=6)
    with servers(2, latency=0.01, prefix_cache=100_000) as (a, b):
        stream = stream_batch(
            requests,
            base_url=[a.base_url, b.base_url],
            api_key=TEST_API_KEY,
            max_concurrency=8,
            workers=1,
            routing=routing,
            return_results=True,
        )
        results = dict(stream)
        spread = endpoints_per_prefix(system_prompts(a), system_prompts(b))
    assert sorted(results) == list(range(96)) and all(r.ok for r in results.values())
    summary = stream.summary
    cached = [r.usage.cached_tokens for r in results.values() if r.usage is not None]
    assert len(cached) == 96 and summary.cached_input_tokens == sum(cached)
    if routing == "cache_aware":
        # A spill now and then, while loads even out: 12 to 16 of the 16 prefixes stayed
        # on one endpoint in 10 runs (least_loaded spreads 13 or more of them).
        assert Counter(spread)[1] >= 10
        # Each prefix is prefilled about once: 5 of its 6 requests read it cached.
        assert summary.prompt_cache_rate > 0.7
        assert "of input from the prompt cache" in str(summary)
    else:
        assert Counter(spread)[2] >= 13


@pytest.mark.timeout(60)
def test_affinity_yields_to_balance_when_its_endpoint_is_slow_or_down() -> None:
    requests = shared_prefix_requests(prefixes=1, questions=60)  # one prefix for all
    with servers(2, latency=0.01) as (fast, slow):
        slow.configure(latency=0.5)
        stream = stream_batch(
            requests,
            base_url=[slow.base_url, fast.base_url],  # the first new prefix goes to `slow`
            api_key=TEST_API_KEY,
            max_concurrency=8,
            workers=1,
            return_results=True,
        )
        assert all(result.ok for _, result in stream)
        assert fast.stats().requests >= 45 and slow.stats().requests <= 15
        down = f"http://127.0.0.1:{closed_port()}/v1"
        results = run_batch(
            requests, base_url=[down, fast.base_url], api_key=TEST_API_KEY, max_concurrency=8
        )
    assert not [r for r in results if isinstance(r, Exception)]
