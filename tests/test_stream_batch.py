"""End to end: real worker processes, the real SDK, real HTTP to the bundled server."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from batch_stream_openai import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    EmptyResponseError,
    OpenAIRequest,
    RawRequest,
    RequestError,
    run_batch,
    stream_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from .helpers import TEST_API_KEY, wait_for_no_workers, worker_children

pytestmark = pytest.mark.timeout(60)

CHAT = "/v1/chat/completions"
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
        "strict": True,
    },
}


def ask(user: str, api: str = "chat", **kwargs: Any) -> OpenAIRequest:
    return OpenAIRequest("You are terse.", user, model="gpt-4o-mini", api=api, **kwargs)  # type: ignore[arg-type]


def attempts_for(fake: FakeOpenAIServer, user: str) -> int:
    return sum(1 for r in fake.requests() if user in json.dumps(r.body))


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_results_are_what_the_server_answered(api: str, pool_options: dict[str, Any]) -> None:
    requests = [ask(f"question {i}", api) for i in range(40)]
    seen = Counter[int]()
    for index, result in stream_batch(requests, max_concurrency=8, **pool_options):
        seen[index] += 1
        assert result == expected_answer("You are terse.", f"question {index}")
    assert seen == Counter(range(40))


def test_run_batch_returns_input_order(pool_options: dict[str, Any]) -> None:
    users = [f"[[latency={0.01 * (i % 5)}]] q{i}" for i in range(30)]
    results = run_batch([ask(u) for u in users], max_concurrency=10, **pool_options)
    assert results == [expected_answer("You are terse.", u) for u in users]


def test_completion_order_slow_first_request_arrives_last(pool_options: dict[str, Any]) -> None:
    requests = [ask("[[latency=1.5]] slow")] + [ask(f"fast {i}") for i in range(20)]
    order = [index for index, _ in stream_batch(requests, max_concurrency=21, **pool_options)]
    assert order[-1] == 0
    assert sorted(order) == list(range(21))


def test_structured_output_and_reasoning_effort_reach_the_server_in_each_shape(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [
        ask("chat json", "chat", response_format=SCHEMA, reasoning_effort="low"),
        ask("responses json", "responses", response_format=SCHEMA, reasoning_effort="high"),
    ]
    results = run_batch(requests, **pool_options)
    assert [json.loads(r) for r in results] == [  # type: ignore[arg-type]
        {"answer": expected_answer("You are terse.", "chat json")},
        {"answer": expected_answer("You are terse.", "responses json")},
    ]
    bodies = {r.path: r.body for r in fake.requests()}
    chat, responses = bodies["/v1/chat/completions"], bodies["/v1/responses"]
    assert chat["response_format"] == SCHEMA
    assert chat["reasoning_effort"] == "low"
    assert chat["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "chat json"},
    ]
    assert responses["text"] == {
        "format": {
            "type": "json_schema",
            "name": "answer",
            "schema": SCHEMA["json_schema"]["schema"],  # type: ignore[index]
            "strict": True,
        }
    }
    assert responses["reasoning"] == {"effort": "high"}
    assert responses["instructions"] == "You are terse."
    assert responses["input"] == "responses json"


def test_api_key_and_model_reach_the_server(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    run_batch([OpenAIRequest("s", "u", model="openai/custom-deployment")], **pool_options)
    (record,) = fake.requests()
    assert record.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert record.body["model"] == "custom-deployment"


def test_environment_variables_are_honoured(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789")
    assert run_batch([ask("env")]) == [expected_answer("You are terse.", "env")]
    assert fake.requests()[0].headers["authorization"] == "Bearer sk-from-env-0123456789"


def test_429_with_retry_after_then_success(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    user = "[[status=429 retry_after=0.2 times=1]] limited"
    started = time.monotonic()
    assert run_batch([ask(user)], **pool_options) == [expected_answer("You are terse.", user)]
    assert attempts_for(fake, user) == 2
    assert time.monotonic() - started >= 0.2


def test_503_twice_then_success(fake: FakeOpenAIServer, pool_options: dict[str, Any]) -> None:
    user = "[[status=503 times=2]] flaky"
    assert run_batch([ask(user)], **pool_options) == [expected_answer("You are terse.", user)]
    assert attempts_for(fake, user) == 3


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_fail_fast_with_one_attempt(
    status: int, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    user = f"[[status={status}]] refused"
    (result,) = run_batch([ask(user)], **pool_options)
    assert isinstance(result, APIError)
    assert (result.status_code, result.attempts, result.index) == (status, 1, 0)
    assert attempts_for(fake, user) == 1
    assert TEST_API_KEY not in str(result)


def test_permanent_429_ends_in_an_error_after_bounded_attempts(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    user = "[[status=429 retry_after_ms=20]] always limited"
    (result,) = run_batch([ask(user)], max_retries=3, **pool_options)
    assert isinstance(result, APIError)
    assert result.status_code == 429
    assert result.attempts == 4
    assert attempts_for(fake, user) == 4


def test_a_server_that_never_answers_times_out(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    user = "[[hang]] silence"
    started = time.monotonic()
    (result,) = run_batch([ask(user)], timeout=0.5, max_retries=1, **pool_options)
    assert isinstance(result, APITimeoutError)
    assert result.attempts == 2
    assert time.monotonic() - started < 10


def test_failures_do_not_stop_the_batch(pool_options: dict[str, Any]) -> None:
    users = [f"[[status=400]] bad {i}" if i % 3 == 0 else f"good {i}" for i in range(30)]
    results = run_batch([ask(u) for u in users], max_concurrency=6, **pool_options)
    for user, result in zip(users, results, strict=True):
        if user.startswith("[[status=400]]"):
            assert isinstance(result, APIError) and result.status_code == 400
        else:
            assert result == expected_answer("You are terse.", user)


@pytest.mark.parametrize("limit", [1, 7, 64])
def test_max_concurrency_is_global_across_workers(
    limit: int, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.1)
    requests = [ask(f"c{limit}-{i}") for i in range(limit * 3)]
    results = run_batch(requests, max_concurrency=limit, workers=2, **pool_options)
    assert all(isinstance(r, str) for r in results)
    stats = fake.stats()
    assert stats.requests == limit * 3
    assert stats.max_in_flight <= limit
    assert stats.max_in_flight >= (limit + 1) // 2  # the limit is also used, not just obeyed


@pytest.mark.parametrize("group", [False, True])
def test_a_lazy_generator_is_read_lazily(pool_options: dict[str, Any], group: bool) -> None:
    pulled = 0

    def generate() -> Iterator[OpenAIRequest]:
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield ask(f"lazy {i}")

    with stream_batch(
        generate(), max_concurrency=4, group_prefixes=group, **pool_options
    ) as stream:
        first_index, _ = next(stream)
        # The ledger's room plus the refill after the first results; grouping reads two
        # requests into its window for each one it gives out, until the window is full.
        assert pulled <= (2 if group else 1) * (4 + 4)
        assert first_index < 8
        rest = [index for index, _ in stream]
    assert sorted([first_index, *rest]) == list(range(200))


def test_an_empty_batch_yields_nothing(pool_options: dict[str, Any]) -> None:
    assert list(stream_batch([], **pool_options)) == []
    assert run_batch([], **pool_options) == []


def test_early_break_stops_every_worker(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask(f"[[latency=0.2]] b{i}") for i in range(100)]
    stream = stream_batch(requests, max_concurrency=20, workers=2, **pool_options)
    for _ in stream:
        break
    workers = worker_children({os.getpid(), fake.pid})
    started = time.monotonic()
    stream.close()
    assert len(workers) == 2
    assert wait_for_no_workers({os.getpid(), fake.pid}, timeout=2.0) == []
    assert time.monotonic() - started < 2


def test_an_exception_in_the_callers_loop_stops_every_worker(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask(f"e{i}") for i in range(50)]
    with pytest.raises(KeyError):
        for _index, _result in stream_batch(requests, max_concurrency=10, **pool_options):
            raise KeyError("caller bug")
    assert wait_for_no_workers({os.getpid(), fake.pid}, timeout=2.0) == []


# -- hardening: hostile servers, timeouts, budgets, keys ---------------------------------------


@pytest.mark.timeout(60)
def test_a_retry_after_the_pool_cannot_honour_pauses_nothing(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["[[status=429 retry_after=inf times=1]] first", "second", "third"]
    started = time.monotonic()
    results = run_batch([ask(u) for u in users], max_concurrency=1, max_retries=0, **pool_options)
    assert isinstance(results[0], APIError) and results[0].status_code == 429
    assert results[1:] == [expected_answer("You are terse.", u) for u in users[1:]]
    assert time.monotonic() - started < 20


@pytest.mark.timeout(60)
def test_timeout_bounds_a_whole_attempt_even_a_trickling_body(
    pool_options: dict[str, Any],
) -> None:
    started = time.monotonic()
    (result,) = run_batch(
        [ask("[[slow_body=30]] trickle")], timeout=1, max_retries=0, **pool_options
    )
    assert isinstance(result, APITimeoutError)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", ["refuse", "incomplete", "no_text"])
@pytest.mark.parametrize("api", ["responses", "chat"])
def test_an_answer_without_text_is_an_error_not_an_empty_string(
    api: str, shape: str, pool_options: dict[str, Any]
) -> None:
    (plain,) = run_batch([ask(f"[[{shape}]] q", api=api)], **pool_options)
    assert isinstance(plain, EmptyResponseError)
    if shape == "refuse":
        assert "I'm sorry, I cannot help with that." in str(plain)
    (rich,) = run_batch([ask(f"[[{shape}]] q", api=api)], return_results=True, **pool_options)
    assert isinstance(rich.error, EmptyResponseError) and rich.body is not None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cap", ["abc", [5], -1])
def test_a_strange_output_cap_with_tpm_fails_nothing_but_its_own_index(
    cap: object, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    odd = RawRequest(
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "odd"}],
            "max_tokens": cap,
        },
    )
    results = run_batch([ask("before"), odd, ask("after")], tpm=1_000_000, **pool_options)
    assert results[0] == expected_answer("You are terse.", "before")
    assert results[2] == expected_answer("You are terse.", "after")
    assert len(results) == 3


@pytest.mark.timeout(60)
def test_rpm_paces_every_attempt_retries_included(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"[[status=503]] always {i}" for i in range(4)]
    results = run_batch(
        [ask(u) for u in users], max_concurrency=4, max_retries=3, rpm=600, **pool_options
    )
    assert all(isinstance(r, APIError) and r.attempts == 4 for r in results)
    times = sorted(r.received_at for r in fake.requests())
    assert len(times) == 16
    # 600 per minute: at most ~10 in any second, 0.1 s apart, however the retries line up.
    assert all(later - earlier > 0.08 for earlier, later in itertools.pairwise(times))
    assert times[-1] - times[0] >= 1.4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", [200, 400])
def test_the_api_key_never_comes_back_even_when_a_server_echoes_it(
    status: int, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    directive = "[[echo_auth]]" + (f" [[status={status}]]" if status != 200 else "")
    (result,) = run_batch([ask(f"{directive} echo")], return_results=True, **pool_options)
    assert TEST_API_KEY in fake.requests()[0].headers["authorization"]
    shown = [repr(result), str(result.body), str(result.error), repr(result.error)]
    if isinstance(result.error, APIError):
        shown.append(str(result.error.body))
    assert all(TEST_API_KEY not in text for text in shown)
    assert "sk-...cdef" in str(result.body)  # masked, so one can still tell keys apart


@pytest.mark.timeout(60)
def test_without_a_key_nothing_is_sent_and_the_error_says_how_to_give_one(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"requests\[0\].*pass api_key= or set OPENAI_API_KEY"):
        run_batch([ask("no key")], base_url=fake.base_url)
    with pytest.raises(ValueError, match=r"requests\[0\]"):  # a generator: when reached
        list(stream_batch(iter([ask("no key either")]), base_url=fake.base_url))
    assert fake.stats().requests == 0


@pytest.mark.timeout(60)
def test_a_refused_connection_says_where_and_why(pool_options: dict[str, Any]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    options = {**pool_options, "base_url": f"http://127.0.0.1:{port}/v1"}
    (result,) = run_batch([ask("anyone?")], max_retries=1, **options)
    assert isinstance(result, APIConnectionError) and not isinstance(result, APITimeoutError)
    assert f"127.0.0.1:{port}" in str(result)
    assert "refused" in str(result).lower() or "connect call failed" in str(result).lower()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", ["html", "empty", "list", "invalid_utf8"])
def test_a_200_that_is_not_a_json_object_says_what_came_back(
    body: str, pool_options: dict[str, Any]
) -> None:
    (result,) = run_batch([ask(f"[[body={body}]] odd")], **pool_options)
    assert type(result) is RequestError
    assert "HTTP 200" in str(result)
    if body == "html":
        assert "text/html" in str(result) and "Bad Gateway" in str(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("placeholder", ["EMPTY", "none", "k", "echo"])
def test_a_placeholder_key_never_rewrites_answers(placeholder: str, fake: FakeOpenAIServer) -> None:
    users = ["Name or service not known", "EMPTY none echo k", "[[status=400]] none known"]
    results = run_batch(
        [ask(user) for user in users],
        base_url=fake.base_url,
        api_key=placeholder,
        return_results=True,
    )
    expected = [expected_answer("You are terse.", user) for user in users[:2]]
    assert [r.text for r in results[:2]] == expected
    assert "***" not in str(results[1].body)
    error = results[2].error
    assert isinstance(error, APIError) and "***" not in str(error) + str(error.body)
