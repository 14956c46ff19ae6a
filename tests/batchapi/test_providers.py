"""mode="batch" beyond OpenAI: Anthropic's Message Batches behind the same stream (through
the official SDK, on the bundled server), every index once, at the batch price, beside
OpenAI's jobs; what no batch route covers is refused before anything is sent."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batch_stream_openai import APIError, BatchPool, RawRequest, Result, run_batch
from batch_stream_openai._spending.prices import PriceTable
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import (
    FAST,
    SYSTEM,
    TEST_API_KEY,
    answered_by_jobs,
    answers,
    ask,
    creates,
    each_once,
    jobs_of,
    message_batches_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

CLAUDE = "anthropic/claude-haiku-4-5"


def stream_results(pool: BatchPool, requests: Any, **options: Any) -> dict[int, Result]:
    return each_once(pool.stream(requests, return_results=True, **FAST, **options))


def answered_by_claude(fake: FakeOpenAIServer) -> Counter[str]:
    return Counter(cid for batch in message_batches_of(fake) for cid in batch["answered"])


def online_messages(fake: FakeOpenAIServer) -> int:
    return sum(record.path == "/v1/messages" for record in fake.requests())


def test_a_mixed_batch_goes_to_each_providers_batch_api_at_half_price(
    claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"m{i}" for i in range(12)]
    models = [CLAUDE if i % 3 else "gpt-4o-mini" for i in range(12)]
    requests = [ask(user, model=model) for user, model in zip(users, models, strict=True)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, requests, batch_size=5)
    assert [results[i].text for i in range(12)] == answers(users)
    batches = message_batches_of(claude)
    assert sorted(len(batch["custom_ids"]) for batch in batches) == [3, 5]
    assert all(batch["models"] == ["claude-haiku-4-5"] and batch["deleted"] for batch in batches)
    assert [len(job["custom_ids"]) for job in jobs_of(claude)] == [4]
    prices = PriceTable()
    for index, result in results.items():
        model = models[index]
        assert str(result.batch_id).startswith("msgbatch_" if model == CLAUDE else "batch_")
        online_cost = prices.cost(model, result.usage)
        assert online_cost is not None and result.cost_usd == pytest.approx(online_cost / 2)
    assert online_messages(claude) == 0 and max(answered_by_claude(claude).values()) == 1


def test_an_errored_line_yields_its_error_and_a_retryable_one_succeeds_in_a_later_batch(
    claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["fine", "[[status=400]] refused", "[[status=503 times=1]] flaky"]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(user, model=CLAUDE) for user in users])
    assert results[0].text == answers(["fine"])[0]
    error = results[1].error
    assert isinstance(error, APIError) and error.status_code == 400 and error.index == 1
    assert error.code == "invalid_request_error" and not error.retryable
    assert results[2].text == answers([users[2]])[0] and results[2].attempts == 2
    assert [batch["custom_ids"] for batch in message_batches_of(claude)] == [["0", "1", "2"], ["2"]]


@pytest.mark.parametrize("model", ["gpt-4o-mini", CLAUDE])
def test_lines_whose_jobs_keep_expiring_go_online_and_every_one_is_answered(
    model: str, claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Every job expires half way: a line two jobs left unanswered goes online.
    claude.configure(batch_seconds=1.0, batch_expire=2)
    users = [f"x{i}" for i in range(10)]
    with BatchPool(max_concurrency=4, workers=1, max_retries=1, **pool_options) as pool:
        results = stream_results(pool, [ask(user, model=model) for user in users])
    assert [results[i].text for i in range(10)] == answers(users)
    by_jobs = answered_by_claude(claude) + answered_by_jobs(claude)
    assert max(by_jobs.values()) == 1  # nothing paid for twice
    online = [i for i in range(10) if results[i].batch_id is None]
    assert online and sorted(online) == sorted(i for i in range(10) if str(i) not in by_jobs)
    online_path = "/v1/messages" if model == CLAUDE else "/v1/chat/completions"
    assert sum(r.path == online_path for r in claude.requests()) == len(online)


def test_a_deadline_cancels_the_message_batches_and_sends_the_rest_online(
    claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    claude.configure(batch_seconds=30.0)  # batches that would take 30 s
    users = [f"d{i}" for i in range(8)]
    started = time.monotonic()
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        requests = [ask(user, model=CLAUDE) for user in users]
        # The reserve leaves time for the worker's first import of LiteLLM (~5 s).
        results = stream_results(pool, requests, deadline=16.0, online_reserve=13.0)
    assert time.monotonic() - started < 16.0
    assert [results[i].text for i in range(8)] == answers(users)
    assert any(call.endswith("/cancel") for call in claude.batch_jobs()["message_calls"])
    by_batch = answered_by_claude(claude)
    assert online_messages(claude) + len(by_batch) == 8  # every prompt answered once
    assert all(results[i].batch_id is None for i in range(8) if str(i) not in by_batch)


def test_max_cost_holds_at_anthropics_batch_price(
    claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Each line reserves its worst case at Haiku's batch price (64 output tokens at most).
    requests = [ask(f"c{i}", model=CLAUDE, max_output_tokens=64) for i in range(10)]
    prices = PriceTable().price(CLAUDE, "batch")
    assert prices is not None
    per_line = prices.worst_case(40, 64)
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        stream = pool.stream(requests, **FAST, max_cost=4.5 * per_line)
        values = dict(stream)
    sent = [i for i in range(10) if isinstance(values[i], str)]
    assert 1 <= len(sent) <= 4 and stream.summary.cost_usd <= 4.5 * per_line
    sent_ids = sorted(cid for batch in message_batches_of(claude) for cid in batch["custom_ids"])
    assert sent_ids == sorted(str(i) for i in sent)


def test_the_cache_answers_in_front_of_anthropic_too(
    claude: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    requests = [ask(f"k{i}", model=CLAUDE) for i in range(4)]
    first = run_batch(requests, cache=cache, return_results=True, **pool_options, **FAST)
    assert [r.text for r in first] == answers([f"k{i}" for i in range(4)])
    again = run_batch(requests, cache=cache, return_results=True, **pool_options)  # online
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    assert len(message_batches_of(claude)) == 1 and online_messages(claude) == 0


def test_cache_control_and_system_blocks_pass_through_from_a_raw_request(
    claude: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    body = {
        "model": CLAUDE,
        "max_tokens": 32,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "rc"}],
    }
    journal = tmp_path / "journal"
    [result] = run_batch([RawRequest("/v1/chat/completions", body)], journal=journal,
                         return_results=True, **pool_options, **FAST)  # fmt: skip
    assert result.text == answers(["rc"])[0]
    [batch] = message_batches_of(claude)
    assert batch["first_params"]["system"] == system and batch["first_params"]["max_tokens"] == 32


def test_a_line_anthropic_cannot_take_yields_its_error_and_the_others_go_on(
    claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask("ok", model=CLAUDE), ask("seeded", model=CLAUDE, seed=7)]
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        results = stream_results(pool, requests)
    assert results[0].text == answers(["ok"])[0]
    error = results[1].error
    assert error is not None and error.index == 1 and "'seed'" in str(error)
    assert [batch["custom_ids"] for batch in message_batches_of(claude)] == [["0"]]


@pytest.mark.parametrize(
    ("model", "named"), [("gemini/gemini-2.5-flash", "(gemini)"), ("mistral-large", "(LiteLLM)")]
)
def test_a_model_without_a_batch_route_is_refused_before_anything_is_sent(
    model: str, named: str, claude: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask("a"), ask("b", model=model)]
    with pytest.raises(ValueError, match=r"requests\[1\]: model .* has no batch route") as raised:
        run_batch(requests, **pool_options, **FAST)
    assert named in str(raised.value) and "mode='online'" in str(raised.value)
    assert creates(claude) == 0 and claude.batch_jobs()["calls"] == []


def test_without_an_anthropic_key_the_batch_is_refused_before_anything_is_sent(
    claude: FakeOpenAIServer, pool_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ValueError, match=r"requests\[0\] .* set ANTHROPIC_API_KEY"):
        run_batch([ask("a", model=CLAUDE)], **pool_options, **FAST)
    assert message_batches_of(claude) == []


KILLED_RUN = """
from batch_stream_openai import OpenAIRequest, stream_batch
if __name__ == "__main__":
    requests = [OpenAIRequest({system!r}, user, model=model, api="chat")
                for user, model in {asked!r}]
    stream = stream_batch(requests, max_concurrency=4, workers=1, base_url={base_url!r},
                          api_key={api_key!r}, mode="batch", batch_size=10,
                          poll_interval=0.05, journal={journal!r})
    for index, value in stream:
        print(index, flush=True)
"""


def test_a_rerun_after_a_kill_creates_no_job_twice_at_either_provider(
    claude: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    claude.configure(batch_seconds=4.0)
    journal = tmp_path / "jobs.journal"
    users = [f"k{i}" for i in range(30)]
    models = ["gpt-4o-mini" if i % 2 else CLAUDE for i in range(30)]
    asked = list(zip(users, models, strict=True))
    script = KILLED_RUN.format(
        system=SYSTEM, asked=asked, base_url=claude.base_url, api_key=TEST_API_KEY,
        journal=str(journal),
    )  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    try:  # 15 lines of each: two jobs at each provider
        created = lambda: (len(jobs_of(claude)), len(message_batches_of(claude)))  # noqa: E731
        wait_until(lambda: created() == (2, 2), timeout=30, what="2 jobs at each provider")
        child.send_signal(signal.SIGKILL)
        printed, _ = child.communicate(timeout=10)
    finally:
        child.kill()
    assert printed == ""  # killed before any job finished
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        requests = [ask(user, model=model) for user, model in asked]
        values = each_once(pool.stream(requests, **FAST, journal=journal))
    assert [values[i] for i in range(30)] == answers(users)
    assert created() == (2, 2) and creates(claude) == 2
    assert max((answered_by_claude(claude) + answered_by_jobs(claude)).values()) == 1
