"""BatchPool: reuse across batches, postprocess in workers, async API, in-process mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from batch_stream_openai import (
    BatchPool,
    OpenAIRequest,
    PoolClosedError,
    PostprocessError,
    ResultTransferError,
    arun_batch,
    astream_batch,
    run_batch,
)
from batch_stream_openai.errors import RemoteTraceback
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

pytestmark = pytest.mark.timeout(60)

SYSTEM = "You are terse."


def ask(user: str) -> OpenAIRequest:
    return OpenAIRequest(SYSTEM, user, model="gpt-4o-mini", api="chat")


def answers(users: list[str]) -> list[str]:
    return [expected_answer(SYSTEM, u) for u in users]


def test_two_batches_reuse_the_same_worker_processes(pool_options: dict[str, Any]) -> None:
    users = [f"reuse {i}" for i in range(20)]
    with BatchPool(workers=2, max_concurrency=8, **pool_options) as pool:
        assert pool.run([ask(u) for u in users]) == answers(users)
        first_pids = pool.pids
        assert sorted(index for index, _ in pool.stream([ask(u) for u in users])) == list(range(20))
        assert pool.pids == first_pids
        assert len(first_pids) == 2


def test_postprocess_lambda_and_closure_run_in_the_workers(pool_options: dict[str, Any]) -> None:
    suffix = "!"
    users = [f"post {i}" for i in range(10)]
    with BatchPool(
        workers=2, max_concurrency=4, postprocess=lambda t: t.upper(), **pool_options
    ) as pool:
        assert pool.run([ask(u) for u in users]) == [a.upper() for a in answers(users)]
        closure = pool.run([ask(u) for u in users], postprocess=lambda t: (t + suffix, len(t)))
        assert closure == [(a + suffix, len(a)) for a in answers(users)]


def test_postprocess_runs_in_worker_processes_not_the_caller(
    pool_options: dict[str, Any],
) -> None:
    import os

    pids = run_batch(
        [ask(f"pid {i}") for i in range(8)],
        workers=2,
        postprocess=lambda _t: os.getpid(),
        **pool_options,
    )
    assert os.getpid() not in pids


def test_a_failing_postprocess_fails_only_its_index(pool_options: dict[str, Any]) -> None:
    def parse(text: str) -> int:
        if "bad" in text:
            raise ValueError("cannot parse this one")
        return len(text)

    users = ["good 0", "bad 1", "good 2"]
    results = run_batch([ask(u) for u in users], postprocess=parse, **pool_options)
    assert results[0] == len(answers(users)[0]) and results[2] == len(answers(users)[2])
    error = results[1]
    assert isinstance(error, PostprocessError)
    assert (error.index, error.exception_type) == (1, "ValueError")
    assert "cannot parse this one" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "in parse" in str(error.__cause__)


def test_unpicklable_postprocess_results_become_that_index_error(
    pool_options: dict[str, Any],
) -> None:
    results = run_batch(
        [ask("lock"), ask("fine")],
        postprocess=lambda t: threading.Lock() if "lock" in t else t,
        **pool_options,
    )
    assert isinstance(results[0], ResultTransferError)
    assert results[0].index == 0
    assert results[1] == expected_answer(SYSTEM, "fine")


def test_in_process_mode_gives_the_same_results_as_worker_processes(
    pool_options: dict[str, Any],
) -> None:
    users = [f"same {i}" for i in range(30)] + ["[[status=400]] refused"]
    requests = [ask(u) for u in users]
    in_process = run_batch(requests, workers=0, max_concurrency=8, **pool_options)
    in_workers = run_batch(requests, workers=2, max_concurrency=8, **pool_options)
    assert in_process[:-1] == in_workers[:-1] == answers(users[:-1])
    assert type(in_process[-1]) is type(in_workers[-1])
    assert str(in_process[-1]) == str(in_workers[-1])


def test_async_api_never_blocks_the_running_loop(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.05)
    users = [f"async {i}" for i in range(40)]

    async def main() -> tuple[list[Any], list[int], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        streamed = [
            i
            async for i, _ in astream_batch(
                [ask(u) for u in users], max_concurrency=8, **pool_options
            )
        ]
        ordered = await arun_batch([ask(u) for u in users], max_concurrency=8, **pool_options)
        ticking.cancel()
        return ordered, streamed, ticks

    ordered, streamed, ticks = asyncio.run(main())
    assert ordered == answers(users)
    assert sorted(streamed) == list(range(40))
    assert ticks >= 50  # two batches with worker start-up take > 1 s; the loop kept ticking


def test_closing_is_idempotent_and_a_closed_pool_says_so(pool_options: dict[str, Any]) -> None:
    pool = BatchPool(**pool_options)
    assert pool.run([ask("once")]) == answers(["once"])
    pool.close()
    pool.close()
    with pytest.raises(PoolClosedError, match=r"Cannot call stream\(\) on a closed BatchPool"):
        pool.stream([ask("again")])
    with pytest.raises(PoolClosedError):
        pool.run([ask("again")])
    with pytest.raises(PoolClosedError), pool:
        pass
    assert pool.pids == []


def test_one_batch_at_a_time_per_pool(pool_options: dict[str, Any]) -> None:
    with BatchPool(**pool_options) as pool:
        first = pool.stream([ask(f"one {i}") for i in range(5)])
        next(first)
        with pytest.raises(RuntimeError, match="already streaming a batch"):
            next(pool.stream([ask("two")]))
        first.close()
        assert pool.run([ask("three")]) == answers(["three"])


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_script_without_a_main_guard_gets_a_clear_error(fake: FakeOpenAIServer) -> None:
    # `python -c` has no main module to re-import, so the script must be a file.
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "unguarded.py"
        script.write_text(
            "from batch_stream_openai import OpenAIRequest, run_batch\n"
            f"print(run_batch([OpenAIRequest('s', 'u', model='gpt-4o-mini')], "
            f"base_url={fake.base_url!r}, api_key='sk-test'))\n"
        )
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )
    assert out.returncode != 0
    assert "WorkerStartupError" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr.splitlines()[-1]


def test_a_pool_left_open_does_not_hang_interpreter_exit(fake: FakeOpenAIServer) -> None:
    out = run_script(
        f"""
        from batch_stream_openai import BatchPool, OpenAIRequest
        pool = BatchPool(workers=2, base_url={fake.base_url!r}, api_key="sk-test")
        print(pool.run([OpenAIRequest("s", "u", model="gpt-4o-mini")]))
        print(" ".join(map(str, pool.pids)))
        """
    )
    assert out.returncode == 0, out.stderr
    pids = [int(pid) for pid in out.stdout.split("\n")[1].split()]
    import psutil

    assert len(pids) == 2
    _gone, alive = psutil.wait_procs([p for p in map(_process, pids) if p], timeout=3)
    assert not alive


def _process(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
