"""`batch-stream-openai run`: Batch API JSONL files end to end, through the command itself.

Each test runs ``python -m batch_stream_openai.cli run`` against the session's fake server
and checks the output file line by line, and the server's own record of what it answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

from batch_stream_openai.files.run import run_batch_file
from batch_stream_openai.testing import FakeOpenAIServer

from .helpers import TEST_API_KEY

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
OUTPUT_KEYS = {"id", "custom_id", "response", "error", "x_request_sha256", "x_stats"}
ERROR_KEYS = {"type", "code", "message", "attempts"}


def _command(fake: FakeOpenAIServer, source: Path, output: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batch_stream_openai.cli",
        "run",
        str(source),
        "-o",
        str(output),
        "--base-url",
        fake.base_url,
        "--workers",
        "1",
        *args,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, OPENAI_API_KEY=TEST_API_KEY)
    env.pop("OPENAI_BASE_URL", None)
    return env


def _run(
    fake: FakeOpenAIServer, source: Path, output: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    command = _command(fake, source, output, *args)
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=60)


def _start(fake: FakeOpenAIServer, source: Path, output: Path, *args: str) -> subprocess.Popen[str]:
    command = _command(fake, source, output, *args)
    return subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _prompt_line(user: str, custom_id: str | None = None, api: str = "chat") -> dict[str, Any]:
    line: dict[str, Any] = {"system_prompt": "Be brief.", "user_prompt": user, "api": api}
    if custom_id is not None:
        line["custom_id"] = custom_id
    return line


def _batch_line(custom_id: str, user: str, url: str, model: str | None) -> dict[str, Any]:
    if url == CHAT:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": user}]}
    else:
        body = {"input": user}
    if model is not None:
        body["model"] = model
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _write(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    with path.open("w") as out:
        for line in lines:
            out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def _prompt_file(path: Path, count: int, directive: str = "") -> Path:
    return _write(path, (_prompt_line(f"q{i} {directive}", f"id-{i}") for i in range(count)))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _latest(path: Path) -> dict[str, dict[str, Any]]:
    """The latest output line of each custom_id."""
    return {record["custom_id"]: record for record in _records(path)}


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _user_prompt(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"] if "messages" in body else body["input"])


def _answered_ok(fake: FakeOpenAIServer) -> Counter[str]:
    """How many 200 answers the server sent, per user prompt."""
    return Counter(_user_prompt(r.body) for r in fake.requests() if r.status == 200)


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _descendants(process: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def _assert_gone(processes: list[psutil.Process]) -> None:
    """The run's worker processes exit on their own, even when the run was killed."""
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        process.kill()
    assert not alive, f"left behind: {alive}"


@pytest.mark.timeout(60)
def test_mixed_file_yields_each_custom_id_once_as_batch_api_output(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    lines: list[dict[str, Any]] = []
    expected: dict[str, tuple[int, str, str]] = {}  # custom_id -> (status, object, model)
    for i in range(2000):
        failing = i % 50 == 7
        user = f"question {i}" + (" [[status=400]]" if failing else "")
        url = CHAT if i % 2 == 0 else RESPONSES
        if i % 4 < 2:  # Batch API lines, a quarter of them without a model: --model's
            custom_id, model = f"batch-{i}", "gpt-4.1-mini" if i % 8 < 2 else "gpt-4o-mini"
            lines.append(_batch_line(custom_id, user, url, None if i % 8 < 2 else model))
        else:  # prompt lines, without a model; half of them without a custom_id
            custom_id, model = f"line-{i + 1}" if i % 8 < 4 else f"prompt-{i}", "gpt-4.1-mini"
            api = "chat" if url == CHAT else "responses"
            lines.append(_prompt_line(user, None if i % 8 < 4 else custom_id, api))
        obj = "chat.completion" if url == CHAT else "response"
        expected[custom_id] = (400 if failing else 200, obj, model)
    source = _write(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"

    done = _run(fake, source, output, "--model", "gpt-4.1-mini")

    assert done.returncode == 0, done.stderr
    records = _records(output)
    assert sorted(r["custom_id"] for r in records) == sorted(expected)
    for record in records:
        status, obj, model = expected[record["custom_id"]]
        assert set(record) == OUTPUT_KEYS
        assert record["id"].startswith("batch_req_")
        assert len(record["x_request_sha256"]) == 16
        response = record["response"]
        assert response["status_code"] == status
        if status == 200:
            assert record["error"] is None
            assert isinstance(response["request_id"], str)
            assert response["body"]["object"] == obj
            assert response["body"]["model"] == model
        else:
            assert set(record["error"]) == ERROR_KEYS
            assert record["error"]["type"] == "APIError"
            assert record["error"]["attempts"] == 1
            assert isinstance(record["error"]["message"], str)
    assert "40 of them errors" in done.stderr
    assert fake.stats().requests == 2000


@pytest.mark.timeout(60)
def test_kill_9_then_resume_completes_without_sending_a_done_request_twice(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 300, "[[latency=0.1]]")
    output = tmp_path / "out.jsonl"
    process = _start(fake, source, output, "--max-concurrency", "10")
    _wait_for(lambda: _complete_lines(output) >= 30)
    children = _descendants(process)
    process.kill()
    process.communicate(timeout=10)
    _assert_gone(children)
    if output.read_bytes().endswith(b"\n"):  # no write was cut short: cut one ourselves
        with output.open("ab") as out:
            out.write(b'{"id":"batch_req_torn","custom_id":"id-')
    written = {json.loads(line)["custom_id"] for line in output.read_bytes().splitlines()[:-1]}
    assert 30 <= len(written) < 300

    resumed = _run(fake, source, output, "--max-concurrency", "10")

    assert resumed.returncode == 0, resumed.stderr
    assert "cut a torn last line away" in resumed.stderr
    custom_ids = [record["custom_id"] for record in _records(output)]
    assert sorted(custom_ids) == sorted(f"id-{i}" for i in range(300))
    answered = _answered_ok(fake)
    assert all(answered[f"q{custom_id[3:]} [[latency=0.1]]"] == 1 for custom_id in written)
    assert sum(answered.values()) <= 300 + 10  # at most the requests in flight were lost


@pytest.mark.timeout(60)
def test_sigterm_drains_in_flight_requests_exits_75_and_a_rerun_finishes(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 200, "[[latency=0.1]]")
    output = tmp_path / "out.jsonl"
    process = _start(fake, source, output, "--max-concurrency", "10")
    _wait_for(lambda: _complete_lines(output) >= 20)
    second = _run(fake, source, output)
    assert second.returncode == 2
    assert "is being written by another run" in second.stderr
    process.send_signal(signal.SIGTERM)
    _stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert "re-run the same command to resume" in stderr
    partial = _records(output)
    assert 20 <= len(partial) < 200
    # Drained: every request the server answered is in the file.
    assert Counter(f"q{r['custom_id'][3:]} [[latency=0.1]]" for r in partial) == _answered_ok(fake)

    resumed = _run(fake, source, output, "--max-concurrency", "10")

    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["custom_id"] for r in _records(output)) == sorted(f"id-{i}" for i in range(200))
    assert set(_answered_ok(fake).values()) == {1}


@pytest.mark.timeout(60)
def test_sigterm_cancels_what_is_still_in_flight_after_the_grace_period(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    lines = [_prompt_line("stuck [[hang]]", "stuck")]
    lines += [_prompt_line(f"q{i}", f"id-{i}") for i in range(11)]
    source = _write(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    process = _start(fake, source, output, "--grace", "0.5")
    _wait_for(lambda: _complete_lines(output) == 11)
    children = _descendants(process)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert time.monotonic() - signalled < 10
    assert "stuck" not in {r["custom_id"] for r in _records(output)}
    _assert_gone(children)


@pytest.mark.timeout(60)
def test_shards_split_the_file_into_disjoint_parts_that_make_the_whole(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 300)
    outputs = [tmp_path / f"out.{i}.jsonl" for i in range(3)]
    processes = [
        _start(fake, source, output, "--shard", f"{i}/3") for i, output in enumerate(outputs)
    ]
    for process in processes:
        _stdout, stderr = process.communicate(timeout=50)
        assert process.returncode == 0, stderr

    shards = [{r["custom_id"] for r in _records(output)} for output in outputs]
    assert sum(map(len, shards)) == 300
    assert set().union(*shards) == {f"id-{i}" for i in range(300)}
    for i, shard in enumerate(shards):
        assert all(int(hashlib.sha256(c.encode()).hexdigest(), 16) % 3 == i for c in shard)


@pytest.mark.timeout(60)
def test_each_invalid_line_is_named_and_skip_invalid_sends_the_others(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    good = _batch_line("a", "hi", CHAT, "gpt-4o-mini")
    source = _write(
        tmp_path / "in.jsonl",
        [
            good,  # 1
            '{"custom_id": "b", "method": ',  # 2: malformed JSON
            {"custom_id": "c", "method": "POST", "url": CHAT},  # 3: no body
            "",  # 4: blank lines are skipped
            {**good, "url": "/v1/completions"},  # 5
            {**good, "custom_id": "f", "method": "GET"},  # 6
            _batch_line("a", "again", RESPONSES, "gpt-4o-mini"),  # 7
            {"system_prompt": "s", "user_prompt": "u", "temprature": 0.5},  # 8: a typo
            {"system_prompt": "s", "user_prompt": "u", "temperature": "hot"},  # 9
            _batch_line("j", "no model", RESPONSES, None),  # 10: and no --model
            _prompt_line("fine", "k"),  # 11
        ],
    )
    output = tmp_path / "out.jsonl"

    rejected = _run(fake, source, output)

    assert rejected.returncode == 2
    for number, words in [
        (2, "invalid JSON"),
        (3, "missing 'body'"),
        (5, "unsupported url '/v1/completions'"),
        (6, "method must be 'POST'"),
        (7, "duplicate custom_id 'a'"),
        (8, "unknown key 'temprature'"),
        (9, "OpenAIRequest.temperature must be"),
        (10, "body has no 'model'"),
    ]:
        assert f"in.jsonl:{number}: {words}" in rejected.stderr
    assert "8 invalid line(s)" in rejected.stderr
    assert fake.stats().requests == 0
    assert _complete_lines(output) == 0

    skipped = _run(fake, source, output, "--skip-invalid")

    assert skipped.returncode == 0, skipped.stderr
    assert "skipped" in skipped.stderr and "in.jsonl:10:" in skipped.stderr
    assert sorted(_latest(output)) == ["a", "k"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shard", ["3/3", "1", "2/1", "a/b"])
def test_a_bad_shard_is_a_usage_error(fake: FakeOpenAIServer, tmp_path: Path, shard: str) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 1)
    result = _run(fake, source, tmp_path / "out.jsonl", "--shard", shard)
    assert result.returncode == 2
    assert "I/N" in result.stderr


@pytest.mark.timeout(60)
def test_retry_failed_resends_only_failures_and_a_changed_request_is_reported(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    users = [f"q{i}" + (" [[status=400 times=1]]" if i in (2, 5) else "") for i in range(10)]
    source = _write(
        tmp_path / "in.jsonl", [_prompt_line(u, f"id-{i}") for i, u in enumerate(users)]
    )
    output = tmp_path / "out.jsonl"
    first = _run(fake, source, output)
    assert first.returncode == 0, first.stderr
    assert {c for c, r in _latest(output).items() if r["error"]} == {"id-2", "id-5"}

    def sent_by(*args: str) -> list[str]:
        before = len(fake.requests())
        result = _run(fake, source, output, *args)
        assert result.returncode == 0, result.stderr
        return sorted(_user_prompt(r.body) for r in fake.requests()[before:])

    assert sent_by("--retry-failed") == [users[2], users[5]]
    assert all(record["error"] is None for record in _latest(output).values())
    assert len(_records(output)) == 10  # one line per custom_id: the new ones replaced the old
    assert sent_by() == []
    assert sent_by("--retry-failed") == []

    users[0] = "q0 reworded"
    _write(source, [_prompt_line(u, f"id-{i}") for i, u in enumerate(users)])
    before = len(fake.requests())
    changed = _run(fake, source, output)
    assert changed.returncode == 2
    assert "'id-0'" in changed.stderr and "different request" in changed.stderr
    assert len(fake.requests()) == before

    assert sent_by("--resend-changed") == ["q0 reworded"]


@pytest.mark.timeout(60)
def test_the_demo_runs_against_the_bundled_server_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    out = subprocess.run(
        [sys.executable, "-m", "batch_stream_openai.cli", "demo", "-n", "20", "--latency", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert "No OPENAI_API_KEY set: using the bundled local server" in out.stdout
    assert "20 requests: 19 ok, 1 failed (APIError: 1)" in out.stdout.splitlines()[-1]


@pytest.mark.timeout(60)
def test_each_custom_id_has_one_line_after_any_run_that_resent_it(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    users = [f"q{i} [[status=400 times=1]]" for i in range(4)] + [f"ok {i}" for i in range(4)]
    source = _write(
        tmp_path / "in.jsonl", [_prompt_line(u, f"id-{i}") for i, u in enumerate(users)]
    )
    output = tmp_path / "out.jsonl"
    assert _run(fake, source, output).returncode == 0
    # A re-run that is cut short by SIGTERM still leaves one line per custom_id.
    slow = [f"[[latency=30]] {u}" if i == 3 else u for i, u in enumerate(users)]
    _write(source, [_prompt_line(u, f"id-{i}") for i, u in enumerate(slow)])
    run = _start(fake, source, output, "--retry-failed", "--resend-changed", "--grace", "0.5")
    _wait_for(lambda: _complete_lines(output) >= 11)  # the 3 retried lines are in, appended
    run.send_signal(signal.SIGTERM)
    assert run.wait(30) == 75
    records = _records(output)
    assert sorted(r["custom_id"] for r in records) == [f"id-{i}" for i in range(8)]
    assert not any(output.parent.glob(".out.jsonl.*"))  # no temporary file left


@pytest.mark.timeout(60)
def test_without_a_key_the_cli_sends_nothing_and_exits_2(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 3)
    command = _command(fake, source, tmp_path / "out.jsonl")
    env = {k: v for k, v in _env().items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=50)
    assert result.returncode == 2, result.stderr
    assert "set OPENAI_API_KEY" in result.stderr and "api_key=" not in result.stderr
    assert fake.stats().requests == 0


@pytest.mark.timeout(60)
def test_a_resumed_run_still_counts_the_errors_already_written(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [_prompt_line(f"q{i}" + (" [[status=400]]" if i < 2 else ""), f"id-{i}") for i in range(5)],
    )
    output = tmp_path / "out.jsonl"
    assert _run(fake, source, output).returncode == 0
    again = _run(fake, source, output)
    assert again.returncode == 0
    assert "5 already done (2 of them errors)" in again.stderr
    assert "2 failed request(s) are in the output" in again.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (
            ['{"custom_id": "\\ud800", "system_prompt": "s", "user_prompt": "u"}'],
            "in.jsonl:1: custom_id '\\ud800' has a lone surrogate",
        ),
        ([], "no lines (the file is empty); nothing to send"),
    ],
)
def test_odd_inputs_get_a_complete_message(
    fake: FakeOpenAIServer, tmp_path: Path, lines: list[str], says: str
) -> None:
    source = _write(tmp_path / "in.jsonl", lines)
    result = _run(fake, source, tmp_path / "out.jsonl")
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_usage_errors_name_the_flags_and_print_no_traceback(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    as_input = _run(fake, folder, tmp_path / "out.jsonl")
    assert as_input.returncode == 2 and "is a directory" in as_input.stderr
    source = _prompt_file(tmp_path / "in.jsonl", 2)
    too_many = _run(fake, source, tmp_path / "out.jsonl", "--workers", "100000")
    assert too_many.returncode == 2
    assert "--workers 100000 is far more" in too_many.stderr and "workers=" not in too_many.stderr
    for result in (as_input, too_many):
        assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_demo_and_serve_refuse_bad_arguments_with_a_message(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        command = [sys.executable, "-m", "batch_stream_openai.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=50)

    zero = cli("demo", "--max-concurrency", "0")
    assert zero.returncode == 2 and "must be >= 1" in zero.stderr
    nothing = cli("demo", "-n", "0")
    assert nothing.returncode == 0 and "nothing to send" in nothing.stdout
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = cli("serve", "--port", str(busy.getsockname()[1]))
    assert taken.returncode == 1 and "cannot serve on 127.0.0.1" in taken.stderr
    for result in (zero, nothing, taken):
        assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_max_cost_writes_budget_lines_that_a_rerun_with_a_higher_cap_sends(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [_prompt_line(f"budget {i} " + "x" * 400, f"id-{i}") for i in range(30)],
    )
    output = tmp_path / "out.jsonl"
    prices = '{"gpt-5-mini": {"input": 2.0, "output": 8.0}}'
    capped = _run(fake, source, output, "--max-cost", "0.01", "--prices", prices)
    assert capped.returncode == 0, capped.stderr
    records = _latest(output)
    refused = {
        c for c, r in records.items() if r["error"] and r["error"]["type"] == "BudgetExceededError"
    }
    assert refused and len(records) == 30
    assert "$" in capped.stderr  # the spend is in the summary
    sent_before = len(fake.requests())
    rerun = _run(fake, source, output, "--retry-failed", "--max-cost", "10", "--prices", prices)
    assert rerun.returncode == 0, rerun.stderr
    assert len(fake.requests()) - sent_before == len(refused)
    assert all(r["error"] is None for r in _latest(output).values())
    assert len(_records(output)) == 30


@pytest.mark.timeout(60)
def test_a_cache_makes_a_rerun_of_a_new_output_file_free(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source = _prompt_file(tmp_path / "in.jsonl", 12)
    cache = str(tmp_path / "answers.sqlite")
    assert _run(fake, source, tmp_path / "one.jsonl", "--cache", cache).returncode == 0
    sent = len(fake.requests())
    assert _run(fake, source, tmp_path / "two.jsonl", "--cache", cache).returncode == 0
    assert len(fake.requests()) == sent
    bodies = {
        r["custom_id"]: r["response"]["body"]["choices"] for r in _records(tmp_path / "two.jsonl")
    }
    first = {
        r["custom_id"]: r["response"]["body"]["choices"] for r in _records(tmp_path / "one.jsonl")
    }
    assert bodies == first


@pytest.mark.timeout(60)
def test_embeddings_lines_are_sent_and_written_like_the_batch_api(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    from batch_stream_openai.testing.answers import expected_embedding

    line = {
        "custom_id": "emb-1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": ["alpha", "beta"]},
    }
    chat = _batch_line("chat-1", "hello", CHAT, "gpt-4o-mini")
    source = _write(tmp_path / "in.jsonl", [line, chat])
    output = tmp_path / "out.jsonl"
    result = _run(fake, source, output)
    assert result.returncode == 0, result.stderr
    records = _latest(output)
    data = records["emb-1"]["response"]["body"]["data"]
    assert [item["embedding"] for item in data] == [
        expected_embedding("alpha"),
        expected_embedding("beta"),
    ]
    assert records["chat-1"]["error"] is None


@pytest.mark.timeout(90)
def test_batch_mode_sigterm_then_a_rerun_reattaches_to_the_jobs(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake.configure(batch_seconds=3.0)
    try:
        source = _prompt_file(tmp_path / "in.jsonl", 30)
        output = tmp_path / "out.jsonl"
        flags = ("--mode", "batch", "--batch-size", "10", "--poll-interval", "0.05")
        process = _start(fake, source, output, *flags, "--grace", "0.2")
        jobs = lambda: [job for job in fake.batch_jobs()["jobs"] if "id" in job]  # noqa: E731
        _wait_for(lambda: len(jobs()) == 3)
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 75, stderr
        assert (tmp_path / "out.jsonl.jobs").exists()
        assert "30 lines in Batch API jobs that go on at the provider" in stderr
        assert "still to send" not in stderr

        resumed = _run(fake, source, output, *flags)
        assert resumed.returncode == 0, resumed.stderr
        records = _records(output)
        assert sorted(r["custom_id"] for r in records) == sorted(f"id-{i}" for i in range(30))
        assert all(r["error"] is None for r in records)
        assert len(jobs()) == 3  # re-attached: no job submitted twice
        assert not any((tmp_path / "out.jsonl.jobs.d").iterdir())  # local job files pruned
        again = _run(fake, source, output, *flags)
        assert again.returncode == 0 and len(jobs()) == 3 and len(_records(output)) == 30
    finally:
        fake.configure(batch_seconds=1.0)


@pytest.mark.timeout(60)
def test_several_base_urls_auto_concurrency_and_hedging_from_the_command_line(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    source, output = _prompt_file(tmp_path / "in.jsonl", 40), tmp_path / "out.jsonl"
    with FakeOpenAIServer() as other:
        done = _run(
            fake,
            source,
            output,
            "--base-url",
            other.base_url,
            "--max-concurrency",
            "auto",
            "--endpoint-concurrency",
            "4",
            "--hedge",
        )
        assert done.returncode == 0, done.stderr
        assert fake.stats().requests > 0 and other.stats().requests > 0
        assert fake.stats().max_in_flight <= 4 and other.stats().max_in_flight <= 4
    assert sorted(_latest(output)) == sorted(f"id-{i}" for i in range(40))
    assert all(line["error"] is None for line in _latest(output).values())


def test_a_bad_max_concurrency_names_the_flag(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    source, output = _prompt_file(tmp_path / "in.jsonl", 1), tmp_path / "out.jsonl"
    done = _run(fake, source, output, "--max-concurrency", "lots")
    assert done.returncode == 2 and "--max-concurrency" in done.stderr and "lots" in done.stderr


@pytest.mark.timeout(60)
def test_nothing_sent_leaves_no_output_file_behind(fake: FakeOpenAIServer, tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", [{"custom_id": "x", "system_prompt": 3}])
    output = tmp_path / "out.jsonl"
    out = _run(fake, source, output)
    assert out.returncode == 2 and "invalid line" in out.stderr
    assert not output.exists()


@pytest.mark.timeout(60)
def test_a_port_out_of_range_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "batch_stream_openai.cli", "serve", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "a port is at most 65535" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(60)
def test_the_progress_bar_knows_its_total(
    fake: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = _prompt_file(tmp_path / "in.jsonl", 7), tmp_path / "out.jsonl"
    report = run_batch_file(
        source, output, base_url=fake.base_url, api_key=TEST_API_KEY, progress=True
    )
    assert report.complete
    assert "7/7" in capsys.readouterr().err


DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=600k tmpfs "$DISK"
step() {{
    name=$1
    shift
    "$@" > "$REPORT/$name.out" 2> "$REPORT/$name.err"
    echo $? > "$REPORT/$name.rc"
    cp "$DISK/out.jsonl" "$REPORT/$name.jsonl" 2>/dev/null
    ls -a "$DISK" > "$REPORT/$name.ls"
    "$PYTHON" -c "$FETCH" "$STATS" > "$REPORT/$name.stats"
}}
step full {command}
step still_full {command}
mount -o remount,size=8m "$DISK"
step freed {command}
head -c $(( 8 * 1024 * 1024 - $(du -sb "$DISK" | cut -f1) - 300 * 1024 )) /dev/zero > "$DISK/filler"
step retry_nearly_full {command} --retry-failed
(ulimit -f 100; {limited} 2> "$REPORT/limited.err"; echo $? > "$REPORT/limited.rc")
"""


@pytest.mark.timeout(180)
def test_a_full_disk_stops_sending_loses_nothing_paid_and_keeps_one_line_per_id(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here (unshare -rm) to mount a small disk in")
    source = _prompt_file(tmp_path / "in.jsonl", 2000, "[[status=400 times=1]]")
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    command = " ".join(_command(fake, source, disk / "out.jsonl", "--max-concurrency", "8"))
    limited = " ".join(_command(fake, source, report / "limited.jsonl", "--max-concurrency", "8"))
    script = DISK_SCRIPT.format(command=command, limited=limited)
    stats = fake.base_url.removesuffix("/v1") + "/_control/stats"
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
    env = {**_env(), "DISK": str(disk), "REPORT": str(report), "STATS": stats}
    env |= {"PYTHON": sys.executable, "FETCH": fetch}
    subprocess.run(["unshare", "-rm", "bash", "-c", script], env=env, timeout=170, check=True)

    def outcome(step: str) -> tuple[int, str, list[dict[str, Any]]]:
        path = report / f"{step}.jsonl"
        records = _records(path) if path.exists() else []
        code = int((report / f"{step}.rc").read_text())
        return code, (report / f"{step}.err").read_text(), records

    def sent_by(step: str) -> int:
        return int(json.loads((report / f"{step}.stats").read_text())["requests"])

    code, err, records = outcome("full")
    assert code == 1 and "out.jsonl" in err and "run the same command again" in err, err
    assert 0 < len(records) < 2000  # what it wrote is whole (every line parses)
    assert sent_by("full") - len(records) <= 8  # at most what was in flight when it stopped
    code, err, again = outcome("still_full")
    assert code == 1 and "nothing was sent" in err and again == records, err
    assert sent_by("still_full") == sent_by("full")  # a re-run on a full disk pays nothing
    code, err, records = outcome("freed")
    assert code == 0, err
    assert sorted(r["custom_id"] for r in records) == sorted(f"id-{i}" for i in range(2000))
    code, err, retried = outcome("retry_nearly_full")
    assert code == 1 and "nothing was sent" in err and "rewrite" in err, err
    assert retried == records and sent_by("retry_nearly_full") == sent_by("freed")
    assert not [
        name
        for name in (report / "retry_nearly_full.ls").read_text().split()
        if name.endswith(".compacting")
    ]
    # A write that fails (here a file size limit: EFBIG) leaves no half line behind.
    code, err, _ = outcome("limited")
    assert code == 1 and "cannot write" in err and "limited.jsonl" in err, err
    assert _records(report / "limited.jsonl")  # every line whole: each parses


@pytest.mark.timeout(90)
def test_batch_mode_sends_each_line_to_its_providers_batch_api_and_writes_openai_output(
    fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("anthropic", reason="the [anthropic] extra is not installed")
    pytest.importorskip("google.genai", reason="the [gemini] extra is not installed")
    from batch_stream_openai.testing import expected_answer


    for name, value in fake.sdk_environment(TEST_API_KEY).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    fake.configure(batch_seconds=0.3)
    models = ["anthropic/claude-haiku-4-5", "gpt-4o-mini", "gemini/gemini-2.5-flash"]
    lines = [_batch_line(f"c-{i}", f"cq{i}", CHAT, models[i % 3]) for i in range(6)]
    source = _write(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    result = _run(fake, source, output, "--mode", "batch", "--poll-interval", "0.05")
    assert result.returncode == 0, result.stderr
    records = _latest(output)
    assert sorted(records) == [f"c-{i}" for i in range(6)]
    for i in range(6):
        record = records[f"c-{i}"]
        assert set(record) == OUTPUT_KEYS and record["error"] is None
        answer = record["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == expected_answer("", f"cq{i}")
        job = record["x_stats"]["batch_id"]
        assert job.startswith(("msgbatch_", "batch_", "batches/")[i % 3]), job
    jobs = fake.batch_jobs()
    assert [batch["custom_ids"] for batch in jobs["message_batches"]] == [["0", "3"]]
    assert [batch["keys"] for batch in jobs["gemini_batches"]] == [["2", "5"]]
