"""Every index exactly once, whatever happens to a worker or to the parent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any

import psutil
import pytest

from batch_stream_openai import (
    BatchPool,
    OpenAIRequest,
    WorkerCrashedError,
    stream_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from .conftest import signal_worker

SYSTEM = "You are terse."


def ask(user: str) -> OpenAIRequest:
    return OpenAIRequest(SYSTEM, user, model="gpt-4o-mini", api="chat")


def die_on_poison(text: str) -> str:
    if "poison" in text:
        os._exit(7)
    return text


@pytest.mark.timeout(60)
def test_a_killed_worker_is_replaced_and_its_requests_resent(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.2)
    seen = Counter[int]()
    with BatchPool(workers=2, max_concurrency=16, **pool_options) as pool:
        original = set(pool.pids)
        for index, result in pool.stream([ask(f"k{i}") for i in range(200)]):
            seen[index] += 1
            assert result == expected_answer(SYSTEM, f"k{index}")
            if sum(seen.values()) == 20:
                victim = pool.pids[0]
                assert signal_worker(victim)
                killed_at = time.monotonic()
        assert seen == Counter(range(200))
        assert victim not in pool.pids
        assert len(pool.pids) == 2 and set(pool.pids) != original
    assert time.monotonic() - killed_at < 30


@pytest.mark.timeout(60)
def test_a_poison_request_fails_alone_after_bounded_crashes(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"ok {i}" for i in range(30)]
    users[5] = "poison pill"
    results = dict(
        stream_batch(
            [ask(u) for u in users],
            workers=2,
            max_concurrency=8,
            postprocess=die_on_poison,
            **pool_options,
        )
    )
    assert sorted(results) == list(range(30))
    error = results.pop(5)
    assert isinstance(error, WorkerCrashedError)
    assert error.exitcode == 7
    assert "exited with code 7" in str(error)
    assert error.attempts == 4  # the first try and three re-sends, each killing a worker
    for index, result in results.items():
        assert result == expected_answer(SYSTEM, users[index])
    poison_calls = [r for r in fake.requests() if "poison" in str(r.body)]
    assert len(poison_calls) == 4


@pytest.mark.timeout(180)
def test_random_kills_under_load_lose_and_duplicate_nothing(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    total, kills_wanted = 5000, 20
    rng = random.Random(1234)
    seen = Counter[int]()
    crashed = ok = kills = 0
    with BatchPool(workers=2, max_concurrency=64, **pool_options) as pool:
        for index, result in pool.stream(ask(f"load {i}") for i in range(total)):
            seen[index] += 1
            if isinstance(result, WorkerCrashedError):
                crashed += 1
            else:
                assert result == expected_answer(SYSTEM, f"load {index}")
                ok += 1
            if len(seen) % (total // (kills_wanted + 1)) == 0 and kills < kills_wanted:
                with_pid = [pid for pid in pool.pids]
                signal_worker(rng.choice(with_pid))
                kills += 1
    assert kills == kills_wanted
    assert seen == Counter(range(total))
    assert ok + crashed == total
    assert crashed <= total // 100  # an innocent request must be unlucky 4 times in a row


def spawn_parent(code: str, *args: str) -> subprocess.Popen[str]:
    """A parent process running `code`; it prints worker pids on its first line."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


PARENT_STREAMING = """
    import signal, sys
    from batch_stream_openai import BatchPool, OpenAIRequest
    if __name__ == "__main__":
        # A terminal's Ctrl-C: whoever started this test run (a background CI job) may have
        # left SIGINT ignored, which children inherit.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pool = BatchPool(workers=2, max_concurrency=8, base_url={base_url!r}, api_key="sk-test")
        requests = [OpenAIRequest("s", f"[[latency={{0.05 if i == 0 else 30}}]] {{i}}",
                                  model="gpt-4o-mini") for i in range(50)]
        try:
            for index, result in pool.stream(requests):
                print(" ".join(map(str, pool.pids)), flush=True)
        except KeyboardInterrupt:
            pool.close()
            print("interrupted", flush=True)
            sys.exit(130)
"""


def wait_for_pids(parent: subprocess.Popen[str]) -> list[psutil.Process]:
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.strip(), parent.stderr.read() if parent.stderr else ""
    processes = [psutil.Process(int(pid)) for pid in line.split()]
    assert len(processes) == 2
    return processes


@pytest.mark.timeout(60)
def test_workers_exit_on_their_own_when_the_parent_is_killed(fake: FakeOpenAIServer) -> None:
    parent = spawn_parent(PARENT_STREAMING.format(base_url=fake.base_url))
    workers = wait_for_pids(parent)
    parent.kill()
    parent.wait(5)
    killed_at = time.monotonic()
    _gone, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive, f"orphaned workers: {alive}"
    assert time.monotonic() - killed_at < 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigint-to-group", "sigterm"])
def test_interrupts_stop_the_parent_and_every_worker(fake: FakeOpenAIServer, how: str) -> None:
    parent = spawn_parent(PARENT_STREAMING.format(base_url=fake.base_url))
    workers = wait_for_pids(parent)
    sent_at = time.monotonic()
    if how == "sigint-to-group":
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        parent.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = parent.communicate(timeout=10)
    finally:
        parent.kill()
    _gone, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive
    assert time.monotonic() - sent_at < 5
    if how == "sigint-to-group":
        assert parent.returncode == 130, stderr
        assert "interrupted" in stdout
    else:
        assert parent.returncode == -signal.SIGTERM


ABANDONING_PARENT = """
    import gc, sys
    import psutil
    from batch_stream_openai import OpenAIRequest, stream_batch
    if __name__ == "__main__":
        requests = [OpenAIRequest("s", f"[[latency={{0.01 if i == 0 else 30}}]] {{i}}",
                                  model="gpt-4o-mini") for i in range(20)]
        stream = stream_batch(requests, workers=2, max_concurrency=8,
                              base_url={base_url!r}, api_key="sk-test")
        next(stream)
        workers = [p for p in psutil.Process().children()
                   if "resource_tracker" not in " ".join(p.cmdline())]
        print(" ".join(str(w.pid) for w in workers), flush=True)
        if sys.argv[1] == "garbage-collected":
            del stream
            gc.collect()
            gone, alive = psutil.wait_procs(workers, timeout=2)
            print("alive after gc:", len(alive), flush=True)
        # "never-closed": the interpreter exits with the generator still suspended.
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["garbage-collected", "never-closed"])
def test_an_abandoned_generator_stops_the_pool_and_the_interpreter_exits(
    fake: FakeOpenAIServer, ending: str
) -> None:
    parent = spawn_parent(ABANDONING_PARENT.format(base_url=fake.base_url), ending)
    workers = wait_for_pids(parent)
    stdout, stderr = parent.communicate(timeout=10)
    assert parent.returncode == 0, stderr
    if ending == "garbage-collected":
        assert "alive after gc: 0" in stdout
    _gone, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = __import__("threading").Lock()


def raise_unpicklable(text: str) -> str:
    if "raise" in text:
        raise _Unpicklable()
    return text


@pytest.mark.timeout(60)
def test_an_unpicklable_exception_still_reaches_the_caller(pool_options: dict[str, Any]) -> None:
    from batch_stream_openai import PostprocessError, run_batch

    results = run_batch(
        [ask("raise please"), ask("fine")], postprocess=raise_unpicklable, **pool_options
    )
    assert isinstance(results[0], PostprocessError)
    assert results[0].exception_type == "_Unpicklable"
    assert results[1] == expected_answer(SYSTEM, "fine")
