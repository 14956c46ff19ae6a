"""BatchPool: reuse across batches, postprocess in workers, async API, in-process mode."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batch_stream_openai import (
    BatchPool,
    PoolClosedError,
    PostprocessError,
    ResultTransferError,
    arun_batch,
    astream_batch,
    run_batch,
)
from batch_stream_openai.errors import RemoteTraceback
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from .helpers import SYSTEM, answers, ask, run_script, wait_for_no_workers

pytestmark = pytest.mark.timeout(60)


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


def test_a_script_without_a_main_guard_gets_a_clear_error(fake: FakeOpenAIServer) -> None:
    # `python -c` has no main module to re-import, so the script must be a file.
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "unguarded.py"
        script.write_text(
            "from batch_stream_openai import OpenAIRequest, run_batch\n"
            f"print(run_batch([OpenAIRequest('s', 'u', model='gpt-4o-mini')], "
            f"base_url={fake.base_url!r}, api_key='sk-test', start_method='spawn'))\n"
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


# -- hardening: exit, cancellation, scripts, misuse --------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("left_open", ["pool", "stream"])
def test_the_interpreter_exits_whatever_was_registered_at_exit_before_us(
    left_open: str, fake: FakeOpenAIServer
) -> None:
    # A weakref.finalize made before the library is imported (TemporaryDirectory does one)
    # puts multiprocessing's exit handler, which joins the workers, before the pool's.
    out = run_script(
        f"""
        import tempfile
        scratch = tempfile.TemporaryDirectory()
        from batch_stream_openai import BatchPool, OpenAIRequest, stream_batch
        requests = [OpenAIRequest("s", f"u{{i}}", model="gpt-4o-mini") for i in range(20)]
        options = dict(base_url={fake.base_url!r}, api_key="sk-test", workers=2)
        if {left_open!r} == "pool":
            pool = BatchPool(**options)
            print(len(pool.run(requests)))
        else:
            stream = stream_batch(requests, max_concurrency=2, **options)
            print(next(stream)[0] >= 0)
        """,
        timeout=45,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["wait_for", "cancel"])
def test_cancelling_an_async_stream_stops_the_batch_and_keeps_the_pool(
    how: str, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.3)

    async def consume(pool: BatchPool) -> None:
        async for _ in pool.astream([ask(f"slow {i}") for i in range(200)]):
            pass

    async def main() -> list[Any]:
        with BatchPool(workers=2, max_concurrency=4, **pool_options) as pool:
            if how == "wait_for":
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(consume(pool), timeout=1.5)
            else:
                task = asyncio.create_task(consume(pool))
                await asyncio.sleep(1.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            sent = fake.stats().requests
            assert sent < 200  # the batch stopped
            return await pool.arun([ask("after")])  # and the pool still works

    started = time.monotonic()
    assert asyncio.run(main()) == answers(["after"])
    assert time.monotonic() - started < 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("function", ["astream_batch", "arun_batch"])
def test_cancelling_a_batch_function_closes_its_pool_and_logs_nothing(
    function: str,
    fake: FakeOpenAIServer,
    pool_options: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.configure(latency=0.3)
    requests = [ask(f"s{i}") for i in range(100)]

    async def consume() -> None:
        if function == "arun_batch":
            await arun_batch(requests, **pool_options)
        else:
            async for _ in astream_batch(requests, **pool_options):
                pass

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), timeout=1.5)

    asyncio.run(main())
    gc.collect()  # a future whose exception nobody retrieved is logged when collected
    assert wait_for_no_workers({os.getpid(), fake.pid}, timeout=3.0) == []
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@pytest.mark.timeout(60)
def test_a_postprocess_may_return_an_instance_of_a_class_from_main(fake: FakeOpenAIServer) -> None:
    out = run_script(
        f"""
        from dataclasses import dataclass
        from batch_stream_openai import OpenAIRequest, run_batch

        @dataclass
        class Parsed:
            text: str
            length: int

        if __name__ == "__main__":
            results = run_batch(
                [OpenAIRequest("s", f"u{{i}}", model="gpt-4o-mini") for i in range(4)],
                postprocess=lambda text: Parsed(text, len(text)),
                base_url={fake.base_url!r}, api_key="sk-test", workers=2,
            )
            assert all(type(r) is Parsed for r in results), results
            print(sum(r.length for r in results))
        """,
        from_stdin=True,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_script_read_from_stdin_runs_like_python_c(
    start_method: str, fake: FakeOpenAIServer
) -> None:
    out = run_script(
        f"""
        from batch_stream_openai import OpenAIRequest, run_batch
        print(run_batch([OpenAIRequest("s", "u", model="gpt-4o-mini")],
                        base_url={fake.base_url!r}, api_key="sk-test",
                        start_method={start_method!r}))
        """,
        from_stdin=True,
    )
    assert out.returncode == 0, out.stderr
    assert "echo: u" in out.stdout


def test_a_closed_pool_names_the_call_that_was_made(pool_options: dict[str, Any]) -> None:
    pool = BatchPool(**pool_options)
    pool.close()
    with pytest.raises(PoolClosedError, match=r"Cannot call run\(\) on a closed BatchPool"):
        pool.run([ask("x")])

    async def main() -> None:
        with pytest.raises(PoolClosedError, match=r"Cannot call astream\(\)"):
            async for _ in pool.astream([ask("x")]):
                pass

    asyncio.run(main())


def test_a_postprocess_that_cannot_be_pickled_is_named(pool_options: dict[str, Any]) -> None:
    lock = threading.Lock()

    def locked_parse(text: str) -> str:
        with lock:
            return text

    with pytest.raises(TypeError, match=r"postprocess <function .*locked_parse.* cannot be sent"):
        run_batch([ask("x")], postprocess=locked_parse, **pool_options)


@pytest.mark.timeout(60)
def test_a_batch_started_inside_a_postprocess_says_what_to_do(
    pool_options: dict[str, Any],
) -> None:
    def nested(text: str) -> str:
        from batch_stream_openai import run_batch as inner

        return str(inner([ask("inner")], **pool_options))

    (result,) = run_batch([ask("outer")], postprocess=nested, **pool_options)
    assert isinstance(result, PostprocessError)
    assert "backend='thread'" in str(result) and "inside a postprocess" in str(result)


@pytest.mark.timeout(60)
def test_an_idle_pool_sends_nothing_between_batches(pool_options: dict[str, Any]) -> None:
    with BatchPool(workers=2, max_concurrency=8, **pool_options) as pool:
        served_by: set[int] = set()
        while len(served_by) < 2:  # both workers started: no Ready message is on its way
            served_by.update(pool.run([ask(f"w{i}") for i in range(8)], postprocess=pid_of))
        workers = pool._supervisor.workers
        for worker in workers:
            worker.drain()  # a last heartbeat may have left with the last result
        time.sleep(1.5)  # the scenario: idle for three heartbeat intervals
        assert not any(worker.result_channel.poll() for worker in workers)
        assert pool.run([ask("again")]) == answers(["again"])


def pid_of(_text: str) -> int:
    return os.getpid()


@pytest.mark.timeout(60)
def test_workers_see_the_environment_and_directory_of_when_the_pool_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_options: dict[str, Any]
) -> None:
    # The first pool starts the fork server; what changes after must reach later workers.
    run_batch([ask("start the server")], **pool_options)
    monkeypatch.setenv("BSO_TEST_MARK", "later")
    monkeypatch.chdir(tmp_path)
    seen = run_batch(
        [ask("where")],
        postprocess=lambda _t: (os.environ.get("BSO_TEST_MARK"), os.getcwd()),
        **pool_options,
    )
    assert seen == [("later", str(tmp_path))]
