"""The read-ahead window's order: the first of each prefix first, then the rest of the
warm groups in bursts, fitting their endpoint; the window and its memory stay bounded."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from batch_stream_openai import OpenAIRequest, run_batch, stream_batch
from batch_stream_openai._core.grouping import WARM_MEMORY, WINDOW, Item, PrefixGroups
from batch_stream_openai._core.intake import Intake
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY

pytestmark = pytest.mark.timeout(30)


def order(groups: PrefixGroups, count: int) -> list[int]:
    return [item.index for item in (groups.take() for _ in range(count)) if item is not None]


def grouped(prefixes: list[int | None]) -> PrefixGroups:
    groups = PrefixGroups()
    for index, prefix in enumerate(prefixes):
        groups.add(Item(index, None, prefix))
    return groups


@pytest.mark.fast
def test_firsts_go_first_then_warm_groups_then_cold_ones_rather_than_nothing() -> None:
    groups = grouped([1, 2, None, 1, 2, 1, 3])
    assert order(groups, 4) == [0, 1, 2, 6]  # the first of each prefix, and the unkeyed
    groups.answered(2)
    assert order(groups, 1) == [4]  # prefix 2 is warm: its others go
    assert order(groups, 3) == [3, 5]  # prefix 1's first still runs: sent rather than idle
    assert len(groups) == 0 and groups.take() is None


@pytest.mark.fast
def test_warm_groups_go_a_group_at_a_time_in_the_order_read() -> None:
    groups = grouped([1, 2] + [2, 1] * 4)
    assert order(groups, 2) == [0, 1]
    groups.answered(2), groups.answered(1)
    assert order(groups, 8) == [2, 4, 6, 8, 3, 5, 7, 9]  # prefix 2's, then prefix 1's


@pytest.mark.fast
def test_with_several_endpoints_a_warm_prefix_keeps_its_place_in_the_input() -> None:
    # The routing keeps each prefix on its endpoint: draining a group would pile it there.
    for drain, expected in ((True, [3, 5, 4]), (False, [3, 4, 5])):
        groups = PrefixGroups(drain)
        for index, prefix in enumerate([1, 2, 3]):
            groups.add(Item(index, None, prefix))
        order(groups, 3)
        groups.answered(1), groups.answered(2)
        for index, prefix in ((3, 1), (4, 2), (5, 1)):
            groups.add(Item(index, None, prefix))
        assert order(groups, 3) == expected


@pytest.mark.fast
def test_the_memory_of_answered_prefixes_is_bounded() -> None:
    groups = PrefixGroups()
    for prefix in range(1_000_000):
        groups.answered(prefix)
    assert groups.remembered == WARM_MEMORY


def counted(read: list[int], delay: float = 0.0) -> Iterator[OpenAIRequest]:
    for index in itertools.count():
        read.append(index)
        if delay:
            time.sleep(delay)
        yield OpenAIRequest("s" * 2000, f"q{index}", model="gpt-4o-mini")


def grouping_intake(requests: Iterator[OpenAIRequest]) -> Intake:
    from batch_stream_openai._wire.prefixes import prefix_key

    return Intake(requests, prefix_of=prefix_key, group=True)


@pytest.mark.fast
def test_the_window_reads_ahead_a_bounded_number_of_requests() -> None:
    read: list[int] = []
    intake = grouping_intake(counted(read))
    taken = [intake.next() for _ in range(1000)]
    assert all(item is not None for item in taken)
    assert len(read) <= 1000 + WINDOW + 1
    unsent = intake.take_unsent()  # what is read and not given out is owed, not lost
    assert len(unsent) == len(read) - 1000


@pytest.mark.fast
def test_an_input_slow_to_give_its_requests_is_not_read_ahead() -> None:
    read: list[int] = []
    intake = grouping_intake(counted(read, delay=0.003))
    for taken in range(1, 6):
        assert intake.next() is not None
        assert len(read) <= taken + 1


def interleaved(prefixes: int, questions: int) -> list[OpenAIRequest]:
    """Question q of every prefix, then question q + 1 of every prefix, and so on."""
    return [
        OpenAIRequest(f"Task {p}. " + "Examples. " * 120, f"q{q}", model="gpt-4o-mini", api="chat")
        for q in range(questions)
        for p in range(prefixes)
    ]


@pytest.mark.timeout(60)
def test_grouping_lets_a_small_prefix_cache_hit_and_results_keep_input_order(
    fake: FakeOpenAIServer,
) -> None:
    fake.configure(prefix_cache=400)  # one prefix (~300 tokens) at a time
    requests = interleaved(prefixes=3, questions=8)
    options = {"base_url": fake.base_url, "api_key": TEST_API_KEY, "max_concurrency": 1}
    cached = {}
    for group in (False, True):
        fake.reset()  # an empty cache
        stream = stream_batch(requests, group_prefixes=group, return_results=True, **options)
        results = dict(stream)
        assert sorted(results) == list(range(24)) and all(r.ok for r in results.values())
        cached[group] = stream.summary.prompt_cache_rate
        sent = [
            (r.body["messages"][0]["content"][:7], r.body["messages"][1]["content"])
            for r in fake.requests()
        ]
    assert cached[False] == 0  # each prefix is evicted before it comes again
    assert cached[True] > 0.5  # the rest of a warm group goes while it is cached
    firsts = {task: question for task, question in reversed(sent)}
    assert firsts == {"Task 0.": "q0", "Task 1.": "q0", "Task 2.": "q0"}  # the first first
    values = run_batch(requests, **options)  # grouped, in input order all the same
    assert values == [r.text for _, r in sorted(results.items())]
