"""The response cache: keys, storage, and batches that never pay twice (bundled server)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batch_stream_openai import (
    BatchPool,
    BudgetExceededError,
    CacheError,
    EmbeddingRequest,
    OpenAIRequest,
    RawRequest,
    Result,
    run_batch,
    stream_batch,
)
from batch_stream_openai._spending.cache import ResponseCache, cache_key
from batch_stream_openai._wire.answers import StoredAnswer
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import answers, ask, wait_until

pytestmark = pytest.mark.timeout(60)

BASE = "http://127.0.0.1:9/v1"


@pytest.mark.fast
def test_any_change_to_what_is_sent_changes_the_key() -> None:
    request = ask("q", temperature=0.2, extra_body={"user": "a"})
    same = ask("q", temperature=0.2, extra_body={"user": "a"})
    variants = [
        ask("q", temperature=0.3, extra_body={"user": "a"}),
        ask("q", temperature=0.2, extra_body={"user": "b"}),
        ask("q", temperature=0.2, extra_body={"user": "a", "top_p": 0.5}),
        OpenAIRequest(
            "You are terse.",
            "q",
            model="gpt-4o",
            api="chat",
            temperature=0.2,
            extra_body={"user": "a"},
        ),
        ask("q", api="responses", temperature=0.2, extra_body={"user": "a"}),
    ]
    key = cache_key(request, BASE)
    assert cache_key(same, BASE) == key
    assert all(cache_key(v, BASE) != key for v in variants)
    assert cache_key(request, "http://127.0.0.1:10/v1") != key
    # The model as it is sent: "openai/x" is sent as "x", so it is the same request.
    prefixed = RawRequest("/v1/responses", {"model": "openai/gpt-4o-mini", "input": "q"})
    plain = RawRequest("/v1/responses", {"model": "gpt-4o-mini", "input": "q"})
    assert cache_key(prefixed, BASE) == cache_key(plain, BASE)


@pytest.mark.fast
def test_answers_are_stored_and_visible_before_they_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    body = {"id": "x", "model": "m", "choices": [{"message": {"content": "hi"}}]}
    cache.put(b"k", StoredAnswer(body, "req_1", 0.5))
    assert cache.get(b"k") == StoredAnswer(body, "req_1", 0.5)
    cache.close()
    again = ResponseCache(path)
    reread = again.get(b"k")
    assert reread is not None
    result = reread.result(7, ask("q"), cost_usd=0.0)
    assert (result.index, result.text, result.request_id, result.cost_usd) == (7, "hi", "req_1", 0)
    assert again.get(b"other") is None
    again.close()


@pytest.mark.fast
@pytest.mark.parametrize("content", [b"not a database at all", b""])
def test_a_file_that_is_not_a_cache_is_refused_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content * 100)
    if content:
        with pytest.raises(CacheError, match=r"notes\.txt is not a batch-stream-openai"):
            ResponseCache(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(CacheError, match=r"other\.sqlite is a SQLite file but not"):
        ResponseCache(other)
    with pytest.raises(CacheError, match="is a directory"):
        ResponseCache(tmp_path)


def test_a_second_run_sends_nothing_and_yields_the_same(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    users = [f"cached {i}" for i in range(20)]
    requests = [ask(u) for u in users] + [ask("responses", api="responses")]
    first = run_batch(requests, cache=cache, **pool_options)
    sent = fake.stats().requests
    assert sent == 21 and first[:20] == answers(users)
    stream = stream_batch(requests, cache=cache, return_results=True, **pool_options)
    second = dict(stream)
    assert fake.stats().requests == sent  # nothing sent
    assert [second[i].text for i in range(21)] == first
    assert all(r.cached and r.cost_usd == 0 for r in second.values())
    assert stream.summary.cached == 21 and stream.summary.ok == 21


def test_any_changed_parameter_or_base_url_misses(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    run_batch([ask("base", temperature=0.1)], cache=cache, **pool_options)
    changed = [
        ask("base", temperature=0.2),
        ask("base", temperature=0.1, extra_body={"user": "u2"}),
        OpenAIRequest("You are terse.", "base", model="gpt-4o", api="chat", temperature=0.1),
    ]
    fake.reset()
    run_batch(changed, cache=cache, **pool_options)
    assert fake.stats().requests == 3
    with FakeOpenAIServer() as elsewhere:
        run_batch(
            [ask("base", temperature=0.1)],
            cache=cache,
            base_url=elsewhere.base_url,
            api_key=pool_options["api_key"],
        )
        assert elsewhere.stats().requests == 1


def test_errors_are_not_stored(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    user = "[[status=400 times=1]] fails once"
    (first,) = run_batch([ask(user)], cache=cache, **pool_options)
    assert isinstance(first, Exception)
    (second,) = run_batch([ask(user)], cache=cache, **pool_options)
    assert second == answers([user])[0]
    assert fake.stats().requests == 2


def test_identical_requests_in_flight_are_sent_once(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.3)
    users = [f"same {i % 3}" for i in range(12)]
    stream = stream_batch(
        [ask(u) for u in users], cache=tmp_path / "c.sqlite", max_concurrency=12, **pool_options
    )
    seen = Counter[int]()
    for index, result in stream:
        seen[index] += 1
        assert result == answers([users[index]])[0]
    assert seen == Counter(range(12))
    assert fake.stats().requests == 3
    assert (stream.summary.cached, stream.summary.deduplicated) == (9, 9)


def test_a_duplicate_of_a_failed_request_is_sent_on_its_own(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.3)
    user = "[[status=400 times=1]] twins"
    results = run_batch(
        [ask(user), ask(user)], cache=tmp_path / "c.sqlite", max_concurrency=4, **pool_options
    )
    assert isinstance(results[0], Exception) and results[1] == answers([user])[0]
    assert fake.stats().requests == 2


def test_a_changed_postprocess_applies_to_hits(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    users = [f"post {i}" for i in range(6)]
    with BatchPool(cache=cache, **pool_options) as pool:
        assert pool.run([ask(u) for u in users], postprocess=len) == [
            len(a) for a in answers(users)
        ]
        sent = fake.stats().requests
        upper = pool.run([ask(u) for u in users], postprocess=str.upper)
        assert upper == [a.upper() for a in answers(users)]
        assert fake.stats().requests == sent


KILLED_RUN = """
    from batch_stream_openai import OpenAIRequest, stream_batch
    if __name__ == "__main__":
        requests = [OpenAIRequest("s", f"[[latency={{0.05 if i < 40 else 30}}]] k{{i}}",
                                  model="gpt-4o-mini", api="chat") for i in range(80)]
        for n, _ in enumerate(stream_batch(requests, max_concurrency=80, cache={cache!r},
                                           base_url={base_url!r}, api_key="sk-test")):
            if n == 39:
                print("40 done", flush=True)
"""


@pytest.mark.timeout(90)
def test_a_parent_killed_mid_run_leaves_a_cache_the_next_run_uses(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    code = textwrap.dedent(KILLED_RUN.format(cache=str(cache), base_url=fake.base_url))
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None and run.stdout.readline().strip() == "40 done"
    # Answers are committed within about a second; give the writer a second and a half.
    wait_until(lambda: _stored(cache) >= 40, timeout=10)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    fake.reset()
    users = [f"[[latency={0.05 if i < 40 else 0}]] k{i}" for i in range(80)]
    requests = [OpenAIRequest("s", u, model="gpt-4o-mini", api="chat") for u in users]
    seen = Counter(i for i, _ in stream_batch(requests, cache=cache, **pool_options))
    assert seen == Counter(range(80))
    assert fake.stats().requests == 40  # the 40 answered before the kill came from the cache


def _stored(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM responses").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.timeout(90)
def test_two_runs_can_share_one_cache_file(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "shared.sqlite"
    fake.configure(latency=0.02)
    outcomes: dict[str, list[Any]] = {}

    def run(name: str) -> None:
        users = [f"{name} {i}" for i in range(150)] + [f"common {i}" for i in range(50)]
        outcomes[name] = [
            users,
            run_batch(
                [ask(u) for u in users], cache=cache, max_concurrency=20, workers=1, **pool_options
            ),
        ]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(80)
    for users, results in outcomes.values():
        assert results == answers(users)
    assert _stored(cache) == 350  # 150 + 150 + the 50 they both asked


def test_the_default_cache_lives_in_the_user_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pool = BatchPool(cache=True, base_url=BASE, api_key="sk-test-0123456789")
    pool.close()
    assert pool.settings.cache == tmp_path / "batch-stream-openai" / "responses.sqlite"
    assert pool.settings.cache.is_file()


class Label(BaseModel):
    answer: str


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "reply",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    },
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]
# Every kind of request and answer, on both APIs: what a hit must give back as the miss did.
EVERY_KIND = [
    ask("plain chat"),
    ask("plain responses", api="responses"),
    ask("pydantic chat", response_format=Label),
    ask("pydantic responses", api="responses", response_format=Label),
    ask("schema chat", response_format=SCHEMA),
    ask("schema responses", api="responses", response_format=SCHEMA),
    ask("[[tool_call]] tools chat", tools=TOOLS),
    ask("[[tool_call]] tools responses", api="responses", tools=RESPONSES_TOOLS),
    ask("[[refuse]] refused"),
    ask("[[bad_json]] unparsable", response_format=Label),
    EmbeddingRequest("one text"),
    EmbeddingRequest(["two", "texts"]),
    RawRequest(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "raw"}]},
    ),
]
# What a hit may differ in: it was not paid for now, nor timed, nor sent.
_NOT_COMPARED = {"cached", "cost_usd", "latency_s", "attempts", "base_url", "error", "index"}


def comparable(result: Result) -> dict[str, Any]:
    fields = {f: getattr(result, f) for f in Result.__slots__ if f not in _NOT_COMPARED}
    error = result.error
    fields["error"] = None if error is None else (type(error), str(error).split("(attempts")[0])
    return fields


@pytest.mark.parametrize("postprocess", [None, repr], ids=["plain", "postprocess"])
def test_a_hit_yields_exactly_what_the_miss_yielded_for_every_kind(
    postprocess: Any, tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    options = {**pool_options, "cache": cache, "postprocess": postprocess}
    miss = stream_batch(EVERY_KIND, return_results=True, **options)
    misses = dict(miss)
    sent = fake.stats().requests
    assert sent == len(EVERY_KIND)
    # The same endpoint with a trailing slash is the same endpoint.
    options["base_url"] = fake.base_url + "/"
    hit = stream_batch(EVERY_KIND, return_results=True, **options)
    hits = dict(hit)
    assert fake.stats().requests == sent  # nothing sent again
    for index, result in misses.items():
        assert comparable(hits[index]) == comparable(result), EVERY_KIND[index]
        assert hits[index].cached and hits[index].cost_usd == 0
    assert isinstance(hits[2].parsed, Label) and hits[3].parsed.answer  # type: ignore[union-attr]
    assert hits[6].tool_calls and hits[7].tool_calls
    assert hits[10].embedding and len(hits[11].embedding or []) == 2
    assert hit.summary.cached == len(EVERY_KIND)
    assert miss.summary.cost_usd > 0
    assert hit.summary.saved_usd == pytest.approx(miss.summary.cost_usd)
    plain = run_batch(EVERY_KIND[:1] + EVERY_KIND[10:11], **options)
    assert plain == [misses[0].value, misses[10].value]


def test_cached_answers_are_yielded_after_the_budget_ran_out(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cache = tmp_path / "answers.sqlite"
    known = [ask(f"known {i}") for i in range(10)]
    run_batch(known, cache=cache, **pool_options)
    # New requests first use up a tiny cap; the known ones read after it are still hits.
    new = [ask(f"new {i} [[big=4000]]") for i in range(20)]
    results = run_batch(
        new + known, cache=cache, max_cost=0.0005, return_results=True, **pool_options
    )
    assert any(isinstance(r.error, BudgetExceededError) for r in results[:20])
    assert all(r.cached and r.error is None for r in results[20:])


@pytest.mark.timeout(60)
def test_runs_opening_one_new_cache_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Switching a new file to WAL answers "database is locked" at once to the others
    # (it failed about one round in twelve before the retry).
    failed: list[BaseException] = []
    for round_number in range(30):
        path = tmp_path / f"new-{round_number}.sqlite"
        barrier = threading.Barrier(3)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                ResponseCache(path).close()
            except CacheError as error:
                failed.append(error)

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not failed, failed[0]
