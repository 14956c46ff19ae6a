"""Every index exactly once, whatever happens to a worker or to the parent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from batch_stream_openai import (
    BatchPool,
    OpenAIRequest,
    WorkerCrashedError,
    WorkerStartupError,
    run_batch,
    stream_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import SYSTEM, answers, ask, die_on_poison, signal_worker, wait_until


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
        me = psutil.Process()
        helpers = ("resource_tracker", "multiprocessing.forkserver")  # not workers, if ours
        workers = [p for p in me.children(recursive=True)
                   if p.ppid() != me.pid or not any(h in " ".join(p.cmdline()) for h in helpers)]
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


# -- hardening: workers that do not read, inputs that fail, start-up interrupted -------------

BIG_PROMPT = "x" * 100_000  # larger than a pipe's buffer: a send to a reader that is gone blocks


def hang_in_one_initializer(marker: str) -> Callable[[], None]:
    """An initializer that never returns in the first worker to run it."""

    def initialize() -> None:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        threading.Event().wait()

    return initialize


@pytest.mark.timeout(60)
def test_a_worker_stuck_in_its_initializer_gets_no_tasks(
    tmp_path: Path, pool_options: dict[str, Any]
) -> None:
    users = [f"{BIG_PROMPT} {i}" for i in range(24)]
    started = time.monotonic()
    results = run_batch(
        [ask(u) for u in users],
        workers=2,
        max_concurrency=8,
        initializer=hang_in_one_initializer(str(tmp_path / "first")),
        **pool_options,
    )
    assert results == answers(users)
    assert time.monotonic() - started < 30


@pytest.mark.timeout(60)
def test_a_frozen_idle_worker_does_not_block_the_dispatcher(pool_options: dict[str, Any]) -> None:
    users = [f"{BIG_PROMPT} {i}" for i in range(30)]
    with BatchPool(workers=2, max_concurrency=8, hang_timeout=2, **pool_options) as pool:
        served_by: set[int] = set()
        while len(served_by) < 2:  # both workers ready, so the frozen one will get tasks
            served_by.update(pool.run([ask(f"warm {i}") for i in range(8)], postprocess=pid_of))
        frozen = pool.pids[0]
        assert signal_worker(frozen, signal.SIGSTOP)
        started = time.monotonic()
        assert pool.run([ask(u) for u in users]) == answers(users)
        assert time.monotonic() - started < 30
        assert frozen not in pool.pids
    assert not psutil.pid_exists(frozen) or psutil.Process(frozen).status() == "zombie"


def pid_of(_text: str) -> int:
    return os.getpid()


STUCK_PARENT = """
    import threading
    from batch_stream_openai import BatchPool, OpenAIRequest
    def hang():
        threading.Event().wait()
    if __name__ == "__main__":
        pool = BatchPool(workers=2, initializer=hang, base_url={base_url!r}, api_key="sk-test")
        stream = pool.stream([OpenAIRequest("s", "u", model="gpt-4o-mini")])
        threading.Thread(target=next, args=(stream,), daemon=True).start()
        while len(pool.pids) < 2:
            pass
        print(" ".join(map(str, pool.pids)), flush=True)
        threading.Event().wait()
"""


@pytest.mark.timeout(60)
def test_a_worker_stuck_in_its_initializer_exits_when_the_parent_is_killed(
    fake: FakeOpenAIServer,
) -> None:
    parent = spawn_parent(STUCK_PARENT.format(base_url=fake.base_url))
    workers = wait_for_pids(parent)
    parent.kill()
    parent.wait(5)
    # Exited: gone, or a zombie that this machine's init has not reaped yet.
    wait_until(lambda: all(_exited(worker) for worker in workers), timeout=3)


def _exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_what_was_read_is_yielded_before_the_inputs_own_error(
    pool_options: dict[str, Any],
) -> None:
    def requests() -> Iterator[OpenAIRequest]:
        for i in range(4):
            yield ask(f"[[latency=0.3]] read {i}")
        raise KeyError("the input broke")

    seen: list[int] = []
    with pytest.raises(KeyError, match="the input broke"):
        for index, result in stream_batch(requests(), max_concurrency=2, **pool_options):
            assert result == answers([f"[[latency=0.3]] read {index}"])[0]
            seen.append(index)
    assert sorted(seen) == [0, 1, 2, 3]


@pytest.mark.timeout(60)
def test_a_bad_item_is_raised_after_the_good_ones_before_it(pool_options: dict[str, Any]) -> None:
    items: list[Any] = [ask(f"[[latency=0.2]] good {i}") for i in range(3)] + [{"not": "a request"}]
    seen: list[int] = []
    with pytest.raises(TypeError, match=r"requests\[3\] must be an OpenAIRequest"):
        for index, _ in stream_batch(iter(items), max_concurrency=2, **pool_options):
            seen.append(index)
    assert sorted(seen) == [0, 1, 2]


def fail_once_marked(marker: str) -> Callable[[], None]:
    """An initializer that fails in every worker started after `marker` exists."""

    def initialize() -> None:
        if os.path.exists(marker):
            raise RuntimeError("the environment broke after start-up")

    return initialize


@pytest.mark.timeout(90)
def test_results_in_flight_are_yielded_before_workers_that_cannot_restart_end_the_batch(
    tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    marker = tmp_path / "broken"
    # The slow ones are still running when the respawns have failed three times (~5 s).
    users = [f"[[latency={0.5 if i % 2 else 10}]] w{i}" for i in range(8)]
    seen: dict[int, Any] = {}
    with (
        BatchPool(
            workers=2, max_concurrency=8, initializer=fail_once_marked(str(marker)), **pool_options
        ) as pool,
        pytest.raises(WorkerStartupError, match="the environment broke"),
    ):
        for index, result in pool.stream(ask(u) for u in users):
            seen[index] = result
            if len(seen) == 1:
                marker.touch()
                assert signal_worker(pool.pids[0])  # its replacements cannot start
    assert sorted(seen) == list(range(8))  # every index read, answered or failed
    answered = {i for i, r in seen.items() if isinstance(r, str)}
    assert all(seen[i] == answers([users[i]])[0] for i in answered)
    assert all(isinstance(seen[i], WorkerCrashedError) for i in set(seen) - answered)


@pytest.mark.timeout(60)
def test_ctrl_c_while_workers_import_prints_no_worker_tracebacks(fake: FakeOpenAIServer) -> None:
    parent = spawn_parent(
        f"""
        import signal, sys
        from batch_stream_openai import BatchPool, OpenAIRequest
        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # spawn: its workers import their modules when they start (a fork server's do not)
            pool = BatchPool(workers=2, base_url={fake.base_url!r}, api_key="sk-test",
                             start_method="spawn")
            print("starting", flush=True)
            try:
                pool.run([OpenAIRequest("s", "u", model="gpt-4o-mini")])
            except KeyboardInterrupt:
                sys.exit(130)
        """
    )
    assert parent.stdout is not None and parent.stdout.readline().strip() == "starting"
    time.sleep(0.15)  # the scenario: the workers are importing their modules now
    os.killpg(parent.pid, signal.SIGINT)
    _stdout, stderr = parent.communicate(timeout=20)
    assert parent.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
