"""End-to-end tests of the fake OpenAI server with the real ``openai`` SDK over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import psutil
import pytest

from batch_stream_openai.testing import (
    FakeOpenAIServer,
    RecordedRequest,
    ServerStats,
    expected_answer,
)
from batch_stream_openai.testing.capacity import CapacityGate

from ..helpers import REPO_ROOT

SYSTEM = "You are a test."
pytestmark = pytest.mark.timeout(30)


# `server` is the session-scoped FakeOpenAIServer from tests/conftest.py. Its per-test
# leak check treats any other live child process as leaked, so this module must not
# start a second long-lived server of its own.


@pytest.fixture(autouse=True)
def _clean(server: FakeOpenAIServer) -> None:
    server.configure(latency=0.0, capacity=0, queue_limit=0, prefix_cache=0, prefill_rate=0)
    server.reset()


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def _chat(client: openai.OpenAI, user: str, system: str = SYSTEM, **kwargs: Any) -> str:
    completion = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        **kwargs,
    )
    content: str | None = completion.choices[0].message.content
    assert content is not None
    return content


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- answers -------------------------------------------------------------------


def test_expected_answer_is_exactly_specified() -> None:
    digest = hashlib.sha256(b"sys\x00hello").hexdigest()[:12]
    assert expected_answer("sys", "hello") == f"echo: hello [{digest}]"
    long_prompt = "y" * 100
    assert expected_answer("s", long_prompt).startswith("echo: " + "y" * 60 + " [")
    structured = expected_answer("sys", "hello", structured=True)
    assert json.loads(structured) == {"answer": f"echo: hello [{digest}]"}
    assert expected_answer("s", "u [[big=10]]") == expected_answer("s", "u [[big=10]]")[:10]
    assert len(expected_answer("s", "u [[big=10]]")) == 10
    assert expected_answer("s", "u [[big=200]]").endswith("x" * 100)


def test_chat_completion_text_usage_and_request_id(
    client: openai.OpenAI, server: FakeOpenAIServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}],
    )
    assert raw.headers["x-request-id"]
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "fake-model"
    choice = completion.choices[0]
    assert choice.message.content == expected_answer(SYSTEM, "hello")
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == -(-(len(SYSTEM) + len("hello")) // 4)
    assert usage.completion_tokens == -(-len(expected_answer(SYSTEM, "hello")) // 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_responses_output_text(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake-model", instructions=SYSTEM, input="hi there")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == expected_answer(SYSTEM, "hi there")
    assert response.usage is not None
    assert response.usage.output_tokens == -(-len(response.output_text) // 4)


def test_structured_output_chat_and_responses(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    text = _chat(
        client,
        "q",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": True},
        },
    )
    assert text == expected_answer(SYSTEM, "q", structured=True)
    assert json.loads(text) == {"answer": expected_answer(SYSTEM, "q")}
    assert _chat(client, "q", response_format={"type": "json_object"}) == text
    response = client.responses.create(
        model="fake-model",
        instructions=SYSTEM,
        input="q",
        text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}},
    )
    assert response.output_text == text


# -- directives ----------------------------------------------------------------


def test_status_with_times_then_success(client: openai.OpenAI, server: FakeOpenAIServer) -> None:
    prompt = "flaky [[status=503 times=2]]"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            _chat(client, prompt)
        assert info.value.status_code == 503
    assert _chat(client, prompt) == expected_answer(SYSTEM, prompt)
    assert server.stats().by_status == {503: 2, 200: 1}
    server.reset()  # resets the per-prompt counter too
    with pytest.raises(openai.InternalServerError):
        _chat(client, prompt)


def test_status_error_body_and_retry_after_headers(client: openai.OpenAI) -> None:
    prompt = "[[status=429 retry_after=0.2 retry_after_ms=150 code=insufficient_quota]]"
    with pytest.raises(openai.RateLimitError) as info:
        _chat(client, prompt)
    err = info.value
    assert err.response.headers["retry-after"] == "0.2"
    assert err.response.headers["retry-after-ms"] == "150"
    assert err.code == "insufficient_quota"
    assert err.type == "insufficient_quota"
    with pytest.raises(openai.RateLimitError) as info:
        _chat(client, "[[status=429]]")
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.AuthenticationError) as auth:
        client.responses.create(model="m", input="[[status=401]]")
    assert auth.value.code == "invalid_api_key"


def test_drop_gives_connection_error(client: openai.OpenAI, server: FakeOpenAIServer) -> None:
    prompt = "[[drop times=1]] x"
    with pytest.raises(openai.APIConnectionError) as info:
        _chat(client, prompt)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert _chat(client, prompt) == expected_answer(SYSTEM, prompt)
    assert server.stats().by_status == {0: 1, 200: 1}
    assert [r.status for r in server.requests()] == [0, 200]


def test_hang_times_out_and_is_cleaned_up(client: openai.OpenAI, server: FakeOpenAIServer) -> None:
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _chat(client.with_options(timeout=0.3), "[[hang]]")
    assert time.monotonic() - start < 5
    # The server cancels the handler once the client disconnects.
    _wait_for(lambda: server.stats().in_flight == 0)
    assert server.stats().by_status == {0: 1}


def test_slow_body_sends_headers_first(client: openai.OpenAI) -> None:
    prompt = "slow [[slow_body=1.0]]"
    start = time.monotonic()
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": prompt}]
    ) as response:
        headers_after = time.monotonic() - start
        completion = response.parse()
    total = time.monotonic() - start
    assert headers_after < 0.5
    assert total >= 0.9
    assert completion.choices[0].message.content == expected_answer("", prompt)


def test_latency_directive_adds_delay(client: openai.OpenAI) -> None:
    start = time.monotonic()
    assert _chat(client, "[[latency=0.3]]") == expected_answer(SYSTEM, "[[latency=0.3]]")
    assert time.monotonic() - start >= 0.3


def test_straggle_slows_only_the_first_request_with_a_prompt(client: openai.OpenAI) -> None:
    timings = []
    for _ in range(2):
        start = time.monotonic()
        _chat(client, "late [[straggle=0.5]]")
        timings.append(time.monotonic() - start)
    assert timings[0] >= 0.5 > 0.3 > timings[1]


def _concurrently(server: FakeOpenAIServer, count: int) -> list[int]:
    """`count` requests at once; the status each got."""

    def one(i: int) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": f"c{i}"}]}
        request = urllib.request.Request(
            server.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    with ThreadPoolExecutor(count) as threads:
        return list(threads.map(one, range(count)))


def test_capacity_serves_k_at_once_and_queues_the_rest(server: FakeOpenAIServer) -> None:
    server.configure(latency=0.2, capacity=2)
    start = time.monotonic()
    assert _concurrently(server, 6) == [200] * 6
    assert time.monotonic() - start >= 0.6  # three rounds of two
    stats = server.stats()
    assert (stats.max_in_flight, stats.max_queued, stats.queued) == (6, 4, 0)


def test_a_request_that_leaves_the_queue_as_its_slot_frees_up_leaves_no_trace() -> None:
    async def main() -> None:
        gate = CapacityGate()
        assert await gate.acquire(capacity=1, queue_limit=0)
        waiter = asyncio.create_task(gate.acquire(capacity=1, queue_limit=0))
        await asyncio.sleep(0)  # it waits in the queue
        waiter.cancel()  # its client went away...
        gate.release()  # ...and the slot frees up before the waiter runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.serving, gate.queued) == (0, 0)
        assert await gate.acquire(capacity=1, queue_limit=0)

    asyncio.run(main())


def test_a_full_queue_answers_503(server: FakeOpenAIServer) -> None:
    server.configure(latency=0.3, capacity=1, queue_limit=1)
    assert sorted(_concurrently(server, 4)) == [200, 200, 503, 503]


def _cached_tokens(client: openai.OpenAI, system: str, question: str) -> tuple[int, int]:
    """(cached, prompt) tokens the server reported for one chat request."""
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage.prompt_tokens_details.cached_tokens or 0, usage.prompt_tokens


def test_the_prefix_cache_reports_the_blocks_it_held_and_evicts_the_least_recent(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(prefix_cache=1024)  # 64 blocks of 16 tokens: two 400-token prefixes
    first, second, third = (f"Task {n}. " + "few-shot example " * 94 for n in range(3))
    assert _cached_tokens(client, first, "question 1") == (0, 404)  # a new prefix
    cached, _ = _cached_tokens(client, first, "question 2")
    assert 384 <= cached <= 400  # its whole blocks, the question is not among them
    _cached_tokens(client, second, "question 1")
    assert _cached_tokens(client, first, "question 3")[0] >= 384  # two prefixes fit
    _cached_tokens(client, third, "question 1")  # evicts `second`, the least recent
    assert _cached_tokens(client, second, "question 2")[0] == 0
    server.reset()  # a reset empties the cache
    assert _cached_tokens(client, first, "question 4")[0] == 0


def test_prefill_of_uncached_tokens_takes_time_and_a_hit_skips_it(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.configure(prefix_cache=100_000, prefill_rate=4_000)  # 4,000 tokens a second
    prefix = "A long document. " * 470  # ~2,000 tokens: ~0.5 s to prefill
    start = time.monotonic()
    _cached_tokens(client, prefix, "first question")
    miss = time.monotonic() - start
    start = time.monotonic()
    cached, prompt = _cached_tokens(client, prefix, "second question")
    hit = time.monotonic() - start
    assert miss >= 0.45 and hit < 0.25 and prompt - 32 < cached < prompt  # whole blocks


def test_the_anthropic_and_gemini_shapes_report_cache_reads(
    server: FakeOpenAIServer,
) -> None:
    import anthropic

    server.configure(prefix_cache=10_000)
    system = "Shared instructions. " * 40
    with anthropic.Anthropic(
        base_url=server.base_url.removesuffix("/v1"), api_key="sk-test", max_retries=0
    ) as claude:
        usages = [
            claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=50,
                system=system,
                messages=[{"role": "user", "content": f"question {n}"}],
            ).usage
            for n in range(2)
        ]
    assert usages[0].cache_read_input_tokens == 0
    read = usages[1].cache_read_input_tokens
    assert read is not None and read >= 192
    # Anthropic counts the input it did not read from the cache apart.
    assert usages[1].input_tokens == usages[0].input_tokens - read


def test_big_answer_has_exact_length(client: openai.OpenAI) -> None:
    prompt = "large [[big=1000000]]"
    text = _chat(client, prompt)
    assert len(text) == 1_000_000
    assert text == expected_answer(SYSTEM, prompt)
    small = "[[big=5]] [[latency=0.01]]"
    assert _chat(client, small) == expected_answer(SYSTEM, small)
    assert len(expected_answer(SYSTEM, small)) == 5
    structured = _chat(client, prompt, response_format={"type": "json_object"})
    assert len(json.loads(structured)["answer"]) == 1_000_000


def test_combined_fault_tokens_apply_in_order(client: openai.OpenAI) -> None:
    prompt = "[[status=429 times=1]] [[status=500 times=2]]"
    with pytest.raises(openai.RateLimitError):
        _chat(client, prompt)
    with pytest.raises(openai.InternalServerError):
        _chat(client, prompt)
    assert _chat(client, prompt) == expected_answer(SYSTEM, prompt)


def test_invalid_directive_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown directive"):
        _chat(client, "[[explode]]")
    with pytest.raises(ValueError, match="unknown directive"):
        expected_answer(SYSTEM, "[[explode]]")


def test_package_exports_exactly_the_public_api() -> None:
    import batch_stream_openai.testing as testing

    assert sorted(testing.__all__) == [
        "FakeOpenAIServer",
        "RecordedRequest",
        "ServerStats",
        "expected_answer",
    ]


# -- HTTP errors -------------------------------------------------------------------


def _raw_post(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unknown_path_and_bad_json(server: FakeOpenAIServer) -> None:
    status, body = _raw_post(f"{server.base_url}/nope", b"{}")
    assert status == 404
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, body = _raw_post(f"{server.base_url}/chat/completions", b"{not json")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert server.stats().by_status == {404: 1, 400: 1}


# -- control plane -----------------------------------------------------------------


def test_recorded_requests_and_reset(client: openai.OpenAI, server: FakeOpenAIServer) -> None:
    before = time.time()
    _chat(client, "record me")
    client.responses.create(model="m", instructions="i", input="also me")
    records = server.requests()
    assert [r.path for r in records] == ["/v1/chat/completions", "/v1/responses"]
    first = records[0]
    assert isinstance(first, RecordedRequest)
    assert first.body["messages"][1]["content"] == "record me"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.status == 200
    assert before <= first.received_at <= time.time()
    assert records[1].body["input"] == "also me"
    assert server.stats() == ServerStats(
        requests=2, in_flight=0, max_in_flight=1, by_status={200: 2}
    )
    server.reset()
    assert server.stats() == ServerStats(requests=0, in_flight=0, max_in_flight=0, by_status={})
    assert server.requests() == []


def test_max_in_flight_with_concurrent_requests(server: FakeOpenAIServer) -> None:
    server.configure(latency=0.3)

    async def burst() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-test", max_retries=0
        ) as aclient:
            results = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"c{i}"}]
                    )
                    for i in range(20)
                )
            )
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(burst())
    assert answers == [expected_answer("", f"c{i}") for i in range(20)]
    stats = server.stats()
    assert stats.requests == 20
    assert stats.max_in_flight == 20
    assert stats.in_flight == 0
    assert stats.by_status == {200: 20}


def test_configure_latency_takes_effect(client: openai.OpenAI, server: FakeOpenAIServer) -> None:
    server.configure(latency=0.5)
    start = time.monotonic()
    _chat(client, "slow")
    assert time.monotonic() - start >= 0.5
    server.configure(latency=0.0)
    start = time.monotonic()
    _chat(client, "fast")
    assert time.monotonic() - start < 0.45
    with pytest.raises(ValueError):
        server.configure(no_such_setting=1.0)
    with pytest.raises(ValueError):
        server.configure(latency=-1.0)


# -- process lifecycle -------------------------------------------------------------


def test_process_is_gone_after_context_exit() -> None:
    with FakeOpenAIServer(latency=0.05) as srv:
        pid = srv.pid
        assert psutil.pid_exists(pid)
        with openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as c:
            assert _chat(c, "x") == expected_answer(SYSTEM, "x")
    assert _pid_gone(pid)
    srv.stop()  # idempotent


def test_child_dies_when_parent_is_killed() -> None:
    script = (
        "import sys, time\n"
        "from batch_stream_openai.testing import FakeOpenAIServer\n"
        "s = FakeOpenAIServer().start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        _wait_for(lambda: _pid_gone(child_pid), timeout=5)
    finally:
        parent.kill()
        parent.wait()


def test_cli_prints_serving_line_and_answers() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_stream_openai.testing", "--port", "0", "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("serving on http://127.0.0.1:")
        base_url = line.removeprefix("serving on ")
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="k", max_retries=0) as c:
            assert _chat(c, "cli") == expected_answer(SYSTEM, "cli")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        proc.wait()
