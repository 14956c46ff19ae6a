"""mode="batch" beyond OpenAI: Anthropic's Message Batches and Gemini's batch mode behind
the same stream (through the official SDKs, on the bundled server), every index once, at
the batch price, beside OpenAI's jobs; what no batch route covers is refused before
anything is sent."""

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
    gemini_batches_of,
    jobs_of,
    message_batches_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

GPT = "gpt-4o-mini"
CLAUDE = "anthropic/claude-haiku-4-5"
GEMINI = "gemini/gemini-2.5-flash"
AZURE = "azure/gpt-4o-mini"  # through LiteLLM (tests/batchapi/test_litellm.py)
# Where each provider's online requests go (after a deadline, or jobs that keep expiring).
ONLINE_PATHS = {GPT: "/v1/chat/completions", CLAUDE: "/v1/messages",
                GEMINI: "/v1beta/models/gemini-2.5-flash:generateContent",
                AZURE: "/openai/deployments/gpt-4o-mini/chat/completions"}  # fmt: skip


def stream_results(pool: BatchPool, requests: Any, **options: Any) -> dict[int, Result]:
    return each_once(pool.stream(requests, return_results=True, **FAST, **options))


def answered_elsewhere(fake: FakeOpenAIServer) -> Counter[str]:
    """Lines Anthropic's and Gemini's batches answered (succeeded or errored)."""
    batches = message_batches_of(fake) + gemini_batches_of(fake)
    return Counter(cid for batch in batches for cid in batch["answered"])


def online_calls(fake: FakeOpenAIServer, model: str) -> int:
    return sum(record.path == ONLINE_PATHS[model] for record in fake.requests())


def test_a_mixed_batch_goes_to_each_providers_batch_api_at_half_price(
    providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"m{i}" for i in range(15)]
    models = [(GPT, CLAUDE, GEMINI)[i % 3] for i in range(15)]
    requests = [ask(user, model=model) for user, model in zip(users, models, strict=True)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, requests, batch_size=3)
    assert [results[i].text for i in range(15)] == answers(users)
    claude_batches, gemini_batches = message_batches_of(providers), gemini_batches_of(providers)
    assert sorted(len(b["custom_ids"]) for b in claude_batches) == [2, 3]
    assert sorted(len(b["keys"]) for b in gemini_batches) == [2, 3]
    assert sorted(len(job["custom_ids"]) for job in jobs_of(providers)) == [2, 3]
    assert all(b["deleted"] for b in claude_batches + gemini_batches)
    assert {b["model"] for b in gemini_batches} == {"models/gemini-2.5-flash"}
    prices = PriceTable()
    prefixes = {GPT: "batch_", CLAUDE: "msgbatch_", GEMINI: "batches/"}
    for index, result in results.items():
        model = models[index]
        assert str(result.batch_id).startswith(prefixes[model]), result.batch_id
        online_cost = prices.cost(model, result.usage)
        assert online_cost is not None and result.cost_usd == pytest.approx(online_cost / 2)
    assert not any(online_calls(providers, model) for model in (GPT, CLAUDE, GEMINI))
    assert max(answered_elsewhere(providers).values()) == 1


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_an_errored_line_yields_its_error_and_a_retryable_one_succeeds_in_a_later_batch(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["fine", "[[status=400]] refused", "[[status=503 times=1]] flaky"]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(user, model=model) for user in users])
    assert results[0].text == answers(["fine"])[0]
    error = results[1].error
    assert isinstance(error, APIError) and error.status_code == 400 and error.index == 1
    assert error.code in ("invalid_request_error", "INVALID_ARGUMENT") and not error.retryable
    assert results[2].text == answers([users[2]])[0] and results[2].attempts == 2
    batches = message_batches_of(providers) + gemini_batches_of(providers)
    sent = [batch.get("custom_ids") or batch.get("keys") for batch in batches]
    assert sent == [["0", "1", "2"], ["2"]]


@pytest.mark.parametrize("model", [GPT, CLAUDE, GEMINI, AZURE])
def test_lines_whose_jobs_keep_expiring_go_online_and_every_one_is_answered(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Every job expires half way: a line two jobs left unanswered goes online.
    providers.configure(batch_seconds=1.0, batch_expire=2)
    users = [f"x{i}" for i in range(10)]
    with BatchPool(max_concurrency=4, workers=1, max_retries=1, **pool_options) as pool:
        results = stream_results(pool, [ask(user, model=model) for user in users])
    assert [results[i].text for i in range(10)] == answers(users)
    by_jobs = answered_elsewhere(providers) + answered_by_jobs(providers)
    assert max(by_jobs.values(), default=1) == 1  # nothing paid for twice
    online = [i for i in range(10) if results[i].batch_id is None]
    assert online and sorted(online) == sorted(i for i in range(10) if str(i) not in by_jobs)
    assert online_calls(providers, model) == len(online)


def test_a_gemini_job_past_its_window_is_cancelled_and_its_lines_go_again(
    providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    providers.configure(batch_stuck=1)  # running for ever, created two days ago
    users = [f"w{i}" for i in range(4)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(user, model=GEMINI) for user in users])
    assert [results[i].text for i in range(4)] == answers(users)
    stuck, again = gemini_batches_of(providers)
    assert stuck["state"] == "BATCH_STATE_RUNNING" and again["keys"] == ["0", "1", "2", "3"]
    assert any(
        call.endswith(f"{stuck['id']}:cancel") for call in providers.batch_jobs()["gemini_calls"]
    )
    assert {results[i].batch_id for i in range(4)} == {again["id"]}


def test_a_gemini_job_over_the_inline_limit_goes_as_a_file_and_comes_back_as_one(
    providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # 5 prompts of 4.5 MB: 22.5 MB, over the 20 MB that may go inline.
    users = [f"big{i} {'x' * 4_500_000}" for i in range(5)]
    users[1] = f"[[status=400]] {users[1]}"
    results = run_batch([ask(u, model=GEMINI) for u in users], return_results=True,
                        **pool_options, **FAST)  # fmt: skip
    texts = [result.text for i, result in enumerate(results) if i != 1]
    assert texts == answers([u for i, u in enumerate(users) if i != 1])
    error = results[1].error
    assert isinstance(error, APIError) and error.status_code == 400 and error.index == 1
    [batch] = gemini_batches_of(providers)
    assert batch["from_file"] and batch["keys"] == ["0", "1", "2", "3", "4"] and batch["deleted"]
    record = providers.batch_jobs()
    assert record["gemini_files"] == [] and len(record["gemini_deleted_files"]) == 2
    assert "POST /upload/v1beta/files" in record["gemini_calls"]


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_deadline_cancels_the_batches_and_sends_the_rest_online(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    providers.configure(batch_seconds=30.0)  # batches that would take 30 s
    users = [f"d{i}" for i in range(8)]
    started = time.monotonic()
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        requests = [ask(user, model=model) for user in users]
        # The reserve leaves time for the worker's first import of LiteLLM (~5 s).
        results = stream_results(pool, requests, deadline=16.0, online_reserve=13.0)
    assert time.monotonic() - started < 16.0
    assert [results[i].text for i in range(8)] == answers(users)
    calls = providers.batch_jobs()
    assert any(call.endswith("cancel") for call in calls["message_calls"] + calls["gemini_calls"])
    by_batch = answered_elsewhere(providers)
    assert online_calls(providers, model) + len(by_batch) == 8  # every prompt answered once
    assert all(results[i].batch_id is None for i in range(8) if str(i) not in by_batch)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI, AZURE])
def test_max_cost_holds_at_each_providers_batch_price(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Each line reserves its worst case at the batch price (64 output tokens at most).
    requests = [ask(f"c{i}", model=model, max_output_tokens=64) for i in range(10)]
    prices = PriceTable().price(model, "batch")
    assert prices is not None
    per_line = prices.worst_case(40, 64)
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        stream = pool.stream(requests, **FAST, max_cost=4.5 * per_line)
        values = dict(stream)
    sent = [i for i in range(10) if isinstance(values[i], str)]
    # (At most 4 at ~40 prompt tokens; OpenAI's tokenizer counts fewer for Azure's.)
    assert 1 <= len(sent) <= (4 if model != AZURE else 6)
    assert stream.summary.cost_usd <= 4.5 * per_line
    batches = message_batches_of(providers) + gemini_batches_of(providers) + jobs_of(providers)
    sent_ids = sorted(cid for batch in batches for cid in batch.get("custom_ids") or batch["keys"])
    assert sent_ids == sorted(str(i) for i in sent)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_the_cache_answers_in_front_of_every_provider(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    requests = [ask(f"k{i}", model=model) for i in range(4)]
    first = run_batch(requests, cache=cache, return_results=True, **pool_options, **FAST)
    assert [r.text for r in first] == answers([f"k{i}" for i in range(4)])
    again = run_batch(requests, cache=cache, return_results=True, **pool_options)  # online
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    assert len(message_batches_of(providers) + gemini_batches_of(providers)) == 1
    assert online_calls(providers, model) == 0


def test_cache_control_and_system_blocks_pass_through_from_a_raw_request(
    providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    body = {
        "model": CLAUDE,
        "max_tokens": 32,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "rc"}],
    }
    request = RawRequest("/v1/chat/completions", body)
    [result] = run_batch([request], return_results=True, **pool_options, **FAST)
    assert result.text == answers(["rc"])[0]
    [batch] = message_batches_of(providers)
    assert batch["first_params"]["system"] == system and batch["first_params"]["max_tokens"] == 32


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_line_the_provider_cannot_take_yields_its_error_and_the_others_go_on(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask("ok", model=model), ask("effort", model=model, reasoning_effort="high")]
    if model == CLAUDE:
        requests[1] = ask("seeded", model=model, seed=7)
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        results = stream_results(pool, requests)
    assert results[0].text == answers(["ok"])[0]
    error = results[1].error
    assert error is not None and error.index == 1
    assert ("'seed'" if model == CLAUDE else "'reasoning_effort'") in str(error)
    batches = message_batches_of(providers) + gemini_batches_of(providers)
    assert [batch.get("custom_ids") or batch["keys"] for batch in batches] == [["0"]]


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_a_malformed_raw_request_fails_alone_and_every_other_index_is_answered(
    model: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Before: its conversion raised in the job route's thread, which failed the route and
    # left the rest of the input unread: run_batch returned 1 result for 4 requests.
    bad = RawRequest("/v1/chat/completions", {"model": model, "messages": [{"content": 5}]})
    requests = [ask("r0", model=model), bad, ask("r2", model=model), ask("r3", model=model)]
    results = run_batch(requests, return_results=True, **pool_options, **FAST)
    assert [r.text for i, r in enumerate(results) if i != 1] == answers(["r0", "r2", "r3"])
    error = results[1].error
    assert error is not None and error.index == 1 and "cannot take this request" in str(error)


@pytest.mark.parametrize(("model", "named"), [("mistral/mistral-large", "(mistral)"),
                                              ("command-r", "(LiteLLM)"),
                                              ("vertex_ai/gemini-2.5-flash",
                                               "'gemini/...' models have Gemini's batch mode"),
                                              ("bedrock/anthropic.claude-3",
                                               "could pay for it twice")])  # fmt: skip
def test_a_model_without_a_batch_route_is_refused_before_anything_is_sent(
    model: str, named: str, providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask("a"), ask("b", model=model)]
    with pytest.raises(ValueError, match=r"requests\[1\]: model .* has no batch route") as raised:
        run_batch(requests, **pool_options, **FAST)
    assert named in str(raised.value) and "mode='online'" in str(raised.value)
    assert "'azure/...'" in str(raised.value)  # the routes there are, from their table
    assert creates(providers) == 0 and providers.batch_jobs()["calls"] == []


@pytest.mark.parametrize(
    ("model", "key"),
    [(CLAUDE, "ANTHROPIC_API_KEY"), (GEMINI, "GEMINI_API_KEY"), (AZURE, "AZURE_API_BASE"),
     ("hosted_vllm/llama", "HOSTED_VLLM_API_BASE")],
)  # fmt: skip
def test_without_the_providers_key_the_batch_is_refused_before_anything_is_sent(
    model: str,
    key: str,
    providers: FakeOpenAIServer,
    pool_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(key)  # (LiteLLM's routes: the endpoint it must be given)
    with pytest.raises(ValueError, match=rf"requests\[0\] .* set {key}") as raised:
        run_batch([ask("a", model=model)], **pool_options, **FAST)
    litellm_route = model not in (CLAUDE, GEMINI)
    assert ("(through LiteLLM)" in str(raised.value)) == litellm_route
    assert providers.batch_jobs()["calls"] == []
    assert message_batches_of(providers) == [] and gemini_batches_of(providers) == []


KILLED_RUN = """
from batch_stream_openai import OpenAIRequest, stream_batch
if __name__ == "__main__":
    requests = [OpenAIRequest({system!r}, user, model=model, api="chat")
                for user, model in {asked!r}]
    stream = stream_batch(requests, max_concurrency=4, workers=1, base_url={base_url!r},
                          api_key={api_key!r}, mode="batch", batch_size=5,
                          poll_interval=0.05, journal={journal!r})
    for index, value in stream:
        print(index, flush=True)
"""


def test_a_rerun_after_a_kill_creates_no_job_twice_at_any_provider(
    providers: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    # Jobs of 10 s: the child's first Azure job imports LiteLLM (~5 s) before any ends.
    providers.configure(batch_seconds=10.0)
    journal = tmp_path / "jobs.journal"
    users = [f"k{i}" for i in range(40)]
    asked = [(user, (GPT, CLAUDE, GEMINI, AZURE)[i % 4]) for i, user in enumerate(users)]
    script = KILLED_RUN.format(
        system=SYSTEM, asked=asked, base_url=providers.base_url, api_key=TEST_API_KEY,
        journal=str(journal),
    )  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )

    def created() -> tuple[int, int, int]:
        fake = providers
        return len(jobs_of(fake)), len(message_batches_of(fake)), len(gemini_batches_of(fake))

    try:  # 10 lines of each: two jobs at each provider (OpenAI's and Azure's counted together)
        wait_until(lambda: created() == (4, 2, 2), timeout=45, what="2 jobs at each provider")
        child.send_signal(signal.SIGKILL)
        printed, _ = child.communicate(timeout=10)
    finally:
        child.kill()
    assert printed == ""  # killed before any job finished
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        requests = [ask(user, model=model) for user, model in asked]
        values = each_once(pool.stream(requests, **FAST, journal=journal))
    assert [values[i] for i in range(40)] == answers(users)
    assert created() == (4, 2, 2) and creates(providers) == 2
    assert providers.batch_jobs()["calls"].count("POST /openai/batches") == 2
    paid = Counter(cid for b in message_batches_of(providers) + gemini_batches_of(providers)
                   for cid in b["paid"])  # fmt: skip
    assert max((paid + answered_by_jobs(providers)).values()) == 1
