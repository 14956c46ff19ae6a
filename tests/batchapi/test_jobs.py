"""mode="batch": requests as Batch API jobs on the bundled server, every index once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batch_stream_openai import (
    APIError,
    BatchPool,
    BudgetExceededError,
    DeadlineExceededError,
    EmbeddingRequest,
    RawRequest,
    Result,
    run_batch,
    stream_batch,
)
from batch_stream_openai._policy.limits import token_estimate
from batch_stream_openai._spending.prices import PriceTable
from batch_stream_openai.testing import FakeOpenAIServer
from batch_stream_openai.testing.answers import expected_embedding

from ..helpers import (
    FAST,
    TEST_API_KEY,
    answered_by_jobs,
    answers,
    ask,
    each_once,
    jobs_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


def stream_results(pool: BatchPool, requests: Any, **options: Any) -> dict[int, Result]:
    return each_once(pool.stream(requests, return_results=True, **FAST, **options))


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_every_index_comes_back_once_through_several_jobs(
    api: str, jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"b{i}" for i in range(23)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u, api) for u in users], batch_size=10)
    assert sorted(results) == list(range(23))
    assert [results[i].text for i in range(23)] == answers(users)
    jobs = jobs_of(jobs_fake)
    assert sorted(len(job["custom_ids"]) for job in jobs) == [3, 10, 10]
    assert all(job["status"] == "completed" for job in jobs)
    assert {results[i].batch_id for i in range(23)} == {job["id"] for job in jobs}
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in results.values())
    assert max(answered_by_jobs(jobs_fake).values()) == 1
    # Every file is deleted once read: the inputs and the outputs.
    deleted = set(jobs_fake.batch_jobs()["jobs"][-1]["deleted_files"])
    assert all(job["input_file_id"] in deleted and job["output_file_id"] in deleted for job in jobs)


def test_one_job_per_model_and_raw_and_embedding_requests_mixed(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    raw_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "raw one"}]}
    requests = [
        ask("m0"),
        RawRequest("/v1/chat/completions", raw_body),
        EmbeddingRequest("embed me"),
        ask("m1"),
    ]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        values = dict(pool.stream(requests, **FAST))
    assert values[0] == answers(["m0"])[0] and values[3] == answers(["m1"])[0]
    assert isinstance(values[1], str) and "raw one" in values[1]
    assert values[2] == expected_embedding("embed me")
    models = sorted(str(job["model"]) for job in jobs_of(jobs_fake))
    assert models == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]


def test_a_failed_line_yields_its_error_and_a_retryable_one_succeeds_in_a_later_job(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["fine", "[[status=400]] refused", "[[status=503 times=1]] flaky"]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users])
    assert results[0].text == answers(["fine"])[0]
    error = results[1].error
    assert isinstance(error, APIError) and error.status_code == 400 and error.index == 1
    assert results[2].text == answers([users[2]])[0] and results[2].attempts == 2
    jobs = jobs_of(jobs_fake)
    assert [job["custom_ids"] for job in jobs] == [["0", "1", "2"], ["2"]]


def test_an_expired_job_keeps_what_it_answered_and_the_rest_is_sent_again(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # The first job expires half way through its run: it answers about 40% of its lines.
    jobs_fake.configure(batch_seconds=1.0, batch_expire=1)
    users = [f"e{i}" for i in range(10)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users])
    assert [results[i].text for i in range(10)] == answers(users)
    jobs = jobs_of(jobs_fake)
    assert jobs[0]["status"] == "expired" and 0 < len(jobs[0]["answered"]) < 10
    assert len(jobs) >= 2
    assert set(jobs[1]["custom_ids"]) == {str(i) for i in range(10)} - set(jobs[0]["answered"])
    assert max(answered_by_jobs(jobs_fake).values()) == 1  # nothing paid for twice


def test_a_job_refused_for_the_token_limit_is_created_again(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    jobs_fake.configure(batch_refuse=1)
    users = [f"r{i}" for i in range(4)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users])
    assert [results[i].text for i in range(4)] == answers(users)
    assert [job["status"] for job in jobs_of(jobs_fake)] == ["failed", "completed"]
    assert all(results[i].attempts == 1 for i in range(4))


def test_a_job_that_fails_validation_fails_each_of_its_lines(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    jobs_fake.configure(batch_fail_validation=1)
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask("v0"), ask("v1")])
    for index in (0, 1):
        error = results[index].error
        assert isinstance(error, APIError) and "failed validation" in error.message


def test_postprocess_runs_on_batch_answers(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    with BatchPool(max_concurrency=4, workers=1, postprocess=str.upper, **pool_options) as pool:
        stream = pool.stream([ask("p0"), ask("p1")], **FAST)
        values = dict(stream)
    assert values == {0: answers(["p0"])[0].upper(), 1: answers(["p1"])[0].upper()}
    assert stream.summary.jobs == {"done": 1} and "1 batch jobs" in str(stream.summary)


def test_a_deadline_cancels_the_jobs_and_sends_the_rest_online(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Jobs that would take 20 s; the deadline leaves 2 s of batch time.
    jobs_fake.configure(batch_seconds=20.0)
    users = [f"d{i}" for i in range(12)]
    started = time.monotonic()
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users], deadline=6.0, online_reserve=4.0)
    assert time.monotonic() - started < 6.0
    assert [results[i].text for i in range(12)] == answers(users)
    calls = jobs_fake.batch_jobs()["calls"]
    assert any(call.endswith("/cancel") for call in calls)
    online = [r for r in jobs_fake.requests() if r.path == "/v1/chat/completions"]
    by_batch = set(answered_by_jobs(jobs_fake))
    assert len(online) + len(by_batch) == 12  # every prompt answered exactly once
    assert all(results[i].batch_id is None for i in range(12) if str(i) not in by_batch)


def test_what_runs_online_after_the_switch_and_is_not_done_by_the_deadline_yields_its_error(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Before: the deadline bound only online batches; past the switch to online, a request
    # that never answered held the stream until its own timeout (here: the test's).
    jobs_fake.configure(batch_seconds=20.0)
    users = ["h0", "[[hang]] h1", "h2", "[[hang]] h3"]
    started = time.monotonic()
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users], deadline=6.0, online_reserve=4.0)
    assert time.monotonic() - started < 7.5
    assert [results[i].text for i in (0, 2)] == answers(["h0", "h2"])
    assert all(isinstance(results[i].error, DeadlineExceededError) for i in (1, 3))
    assert any(call.endswith("/cancel") for call in jobs_fake.batch_jobs()["calls"])


def test_a_line_is_written_as_the_batch_api_wants_it(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    journal = tmp_path / "j"
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        assert len(pool.run([ask("w0"), ask("w1")], **FAST, journal=journal)) == 2
    line = jobs_of(jobs_fake)[0]["first_line"]
    assert line["custom_id"] == "0" and line["method"] == "POST"
    assert line["url"] == "/v1/chat/completions" and line["body"]["model"] == "gpt-4o-mini"
    assert not any((tmp_path / "j.d").iterdir())  # the job's files go once its answers are kept


def test_max_cost_holds_in_batch_mode(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Each line reserves its worst case at the batch price (~$0.0003 uncapped) when it is
    # spooled.
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        stream = pool.stream([ask(f"c{i}") for i in range(10)], **FAST, max_cost=0.002)
        values = dict(stream)
    sent = [i for i in range(10) if isinstance(values[i], str)]
    refused = [i for i in range(10) if isinstance(values[i], BudgetExceededError)]
    assert sorted(sent + refused) == list(range(10))
    assert 1 <= len(sent) <= 6 and refused
    assert stream.summary.cost_usd <= 0.002
    assert sorted(cid for job in jobs_of(jobs_fake) for cid in job["custom_ids"]) == sorted(
        str(i) for i in sent
    )


def test_a_batch_api_that_refuses_us_fails_each_index_once_without_the_key(
    fake: FakeOpenAIServer,
) -> None:
    # No Batch API under this path: every call is a 404, which no retry will fix.
    broken = {"base_url": fake.base_url + "/nowhere", "api_key": TEST_API_KEY}
    with BatchPool(max_concurrency=2, workers=1, **broken) as pool:
        values = dict(pool.stream([ask(f"n{i}") for i in range(3)], **FAST))
    assert sorted(values) == [0, 1, 2]
    for index, value in values.items():
        assert isinstance(value, APIError) and value.index == index
        assert value.status_code == 404 and "the OpenAI Batch API refused the job" in str(value)
        assert TEST_API_KEY not in str(value)


def test_a_job_cancelled_by_someone_else_keeps_what_it_answered_and_the_rest_is_sent_again(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    import openai

    jobs_fake.configure(batch_seconds=4.0)
    sdk = openai.OpenAI(base_url=jobs_fake.base_url, api_key=TEST_API_KEY, max_retries=0)

    def cancel_once_half_answered() -> None:
        def half_answered() -> bool:
            jobs = jobs_of(jobs_fake)
            return bool(jobs) and len(jobs[0]["answered"]) >= 4

        wait_until(half_answered, timeout=30, what="the first job half answered")
        sdk.batches.cancel(jobs_of(jobs_fake)[0]["id"])  # as from the dashboard

    canceller = threading.Thread(target=cancel_once_half_answered)
    users = [f"x{i}" for i in range(10)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        canceller.start()
        try:
            results = stream_results(pool, [ask(u) for u in users])
        finally:
            canceller.join()
    assert [results[i].text for i in range(10)] == answers(users)
    first, second = jobs_of(jobs_fake)
    assert first["status"] == "cancelled" and 4 <= len(first["answered"]) < 10
    assert set(second["custom_ids"]) == {str(i) for i in range(10)} - set(first["answered"])
    assert max(answered_by_jobs(jobs_fake).values()) == 1  # nothing paid for twice


def test_the_cache_answers_batch_mode_and_keeps_its_answers(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "answers.sqlite"
    online = [ask(f"co{i}") for i in range(4)]
    by_jobs = [ask(f"cb{i}") for i in range(4)]
    run_batch(online, cache=cache, **pool_options)
    stream = stream_batch(
        online + by_jobs, cache=cache, return_results=True, **pool_options, **FAST
    )
    results = dict(stream)
    assert [results[i].cached for i in range(8)] == [True] * 4 + [False] * 4
    assert jobs_of(jobs_fake)[0]["custom_ids"] == ["4", "5", "6", "7"]  # the hits not sent
    assert stream.summary.cached == 4 and stream.summary.saved_usd > 0
    fake_online = len(jobs_fake.requests())
    again = run_batch(by_jobs, cache=cache, return_results=True, **pool_options)
    assert [r.text for r in again] == [results[i].text for i in range(4, 8)]
    assert all(r.cached for r in again) and len(jobs_fake.requests()) == fake_online


def test_a_job_refused_at_upload_fails_only_its_own_lines(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    jobs_fake.configure(batch_refuse_upload=1)  # the first job's upload: 413 from a proxy
    users = [f"u{i}" for i in range(1200)]
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        results = stream_results(pool, [ask(u) for u in users], batch_size=400)
    assert sorted(results) == list(range(1200))
    for index in range(400):
        error = results[index].error
        assert isinstance(error, APIError) and error.status_code == 413, index
    assert [results[i].text for i in range(400, 1200)] == answers(users[400:])
    assert len(jobs_of(jobs_fake)) == 2


def test_the_stream_ends_as_soon_as_the_last_job_is_read(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    jobs_fake.configure(batch_seconds=1.0)
    started = time.monotonic()
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        stream = pool.stream([ask("p0"), ask("p1")], mode="batch", poll_interval=5)
        for _ in stream:
            last = time.monotonic()
        ended = time.monotonic()
    # Looks at 0, 1, 3 s (doubling up to poll_interval); nothing waited after the last job.
    assert last - started < 4.5 and ended - last < 1.0


def test_zero_is_not_taken_for_the_default(pool_options: dict[str, Any]) -> None:
    with BatchPool(max_concurrency=2, workers=1, **pool_options) as pool:
        with pytest.raises(ValueError, match="poll_interval must be a positive number"):
            pool.run([ask("x")], mode="batch", poll_interval=0)
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            pool.run([ask("x")], mode="batch", batch_size=0)


def test_lines_a_cancelled_job_left_give_back_their_reservation_before_going_online(
    jobs_fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # The cap holds the 8 lines at the batch price, and then 4 at a time online (twice the
    # price), not both: lines held their batch reservation for ever, and the online ones,
    # finding no room and nothing in flight online, waited for ever.
    jobs_fake.configure(batch_seconds=30.0)
    requests = [ask(f"cr{i}", max_output_tokens=64) for i in range(8)]
    prompt_tokens, _ = token_estimate(requests[0])
    batch_price = PriceTable().price("gpt-4o-mini", "batch")
    assert batch_price is not None
    per_line = batch_price.worst_case(prompt_tokens, 64)
    with BatchPool(max_concurrency=4, workers=1, **pool_options) as pool:
        stream = pool.stream(
            requests, return_results=True, **FAST, deadline=8.0, online_reserve=7.0,
            max_cost=9 * per_line,
        )  # fmt: skip
        results = each_once(stream)
    assert [results[i].text for i in range(8)] == answers([f"cr{i}" for i in range(8)])
    assert any(results[i].batch_id is None for i in range(8))  # some went online
    assert stream.summary.cost_usd <= 9 * per_line
