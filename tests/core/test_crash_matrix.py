"""The crash matrix: every way a worker can die or hang, under load, case by case.

Each case asserts that every index comes back exactly once, that only what the dead
worker held is re-run, and that the pool recovers within seconds. Postprocess callables
are module-level functions so that workers import them by reference.
"""

from __future__ import annotations

import ctypes
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
from typing import Any

import openai
import psutil
import pytest

from batch_stream_openai import (
    BatchPool,
    OpenAIRequest,
    PostprocessError,
    ResultTransferError,
    WorkerCrashedError,
    WorkerStartupError,
    run_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import sdk_error, signal_worker

SYSTEM = "You are terse."
START_METHODS = ["spawn", "forkserver"]


def ask(user: str, **options: Any) -> OpenAIRequest:
    return OpenAIRequest(SYSTEM, user, model="gpt-4o-mini", api="chat", **options)


def answered(fake: FakeOpenAIServer, marker: str) -> int:
    """How many answers (of any status) the server gave to prompts containing `marker`."""
    return sum(1 for r in fake.requests() if marker in str(r.body))


# -- postprocess callables that misbehave on purpose ----------------------------------------


def on_poison(action: Callable[[], object]) -> Callable[[str], str]:
    """A postprocess that runs `action` on answers to the "poison" prompt (by value)."""

    def postprocess(text: str) -> str:
        if "poison" in text:
            action()
        return text

    return postprocess


def _raise(exc: BaseException) -> None:
    raise exc


segfault_on_poison = on_poison(lambda: ctypes.string_at(0))  # reads address 0: SIGSEGV
exit_zero_on_poison = on_poison(lambda: os._exit(0))
sys_exit_on_poison = on_poison(lambda: sys.exit(3))
memory_error_on_poison = on_poison(lambda: _raise(MemoryError("pretend we ran out")))
hang_on_poison = on_poison(lambda: time.sleep(3600))


def with_worker_pid(text: str) -> tuple[str, int]:
    return text, os.getpid()


def _failed_sdk_call() -> None:
    """Raise the SDK's own APIConnectionError, built by the SDK: a call to a closed port."""
    client = openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0)
    client.models.list()


openai_error_on_poison = on_poison(_failed_sdk_call)


def die_soon_on_killer(text: str) -> str:
    """The killer waits until the large result ahead of it is stuck mid-write, then dies."""
    if "killer" in text:
        time.sleep(0.5)
        os._exit(1)
    return text


def kill_a_sibling_sometimes(text: str) -> str:
    """Now and then SIGKILL another worker (forkserver pools: the parent is the forkserver,
    whose children are all workers)."""
    if random.random() < 0.02:
        forkserver = psutil.Process(os.getppid())
        siblings = [p for p in forkserver.children() if p.pid != os.getpid()]
        if siblings:
            random.choice(siblings).send_signal(signal.SIGKILL)
    return text


def fail_to_start() -> None:
    import a_module_that_does_not_exist  # type: ignore[import-not-found]  # noqa: F401


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _BombOnLoad(str):
    """Text in JSON, and it pickles fine; unpickling it raises (in the worker)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


class _Unpicklable(str):
    """Text in JSON, but no pickler can take it (nor cloudpickle)."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("this text will not be pickled")


def _explode() -> None:
    raise RuntimeError("this object cannot be rebuilt here")


# -- 1. a worker dies in each way ---------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("postprocess", "expected"),
    [
        (segfault_on_poison, "signal 11 (SIGSEGV"),
        (exit_zero_on_poison, "exited with code 0 while it still owed results"),
    ],
    ids=["sigsegv", "os-exit-0"],
)
def test_a_poison_that_kills_its_worker_fails_alone_and_names_the_cause(
    postprocess: Any, expected: str, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.05)
    users = [f"fine {i}" for i in range(60)]
    users[10] = "poison"
    started = time.monotonic()
    results = run_batch(
        [ask(u) for u in users],
        max_concurrency=8,
        workers=2,
        postprocess=postprocess,
        **pool_options,
    )
    error = results[10]
    assert isinstance(error, WorkerCrashedError), error
    assert expected in str(error)
    for index, result in enumerate(results):
        if index != 10:
            assert result == expected_answer(SYSTEM, users[index])
    assert answered(fake, "poison") == 4  # bounded: the first try and three re-sends
    # Only what dead workers held was re-run: a few innocents, not the batch.
    assert fake.stats().requests < 60 + 4 * 8
    assert time.monotonic() - started < 30


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("postprocess", "exception_type"),
    [
        (sys_exit_on_poison, "SystemExit"),
        (memory_error_on_poison, "MemoryError"),
        (openai_error_on_poison, "APIConnectionError"),
    ],
    ids=["sys-exit", "memory-error", "openai-error"],
)
def test_exits_and_errors_raised_by_user_code_do_not_end_the_worker(
    postprocess: Any, exception_type: str, pool_options: dict[str, Any]
) -> None:
    with BatchPool(workers=2, max_concurrency=4, postprocess=postprocess, **pool_options) as pool:
        results = pool.run([ask("poison"), ask("fine")])
        pids = set(pool.pids)
        assert pool.run([ask("fine again")]) == [expected_answer(SYSTEM, "fine again")]
        assert set(pool.pids) == pids  # no worker died
    error = results[0]
    assert isinstance(error, PostprocessError)
    assert error.exception_type == exception_type
    assert results[1] == expected_answer(SYSTEM, "fine")


# -- 2. deaths around the result pipe -------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_result_sent_just_before_the_worker_died_is_yielded_once(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    requests = [ask("early"), ask("[[latency=0.3]] killer")]
    seen: Counter[int] = Counter()
    results: dict[int, Any] = {}
    with BatchPool(
        workers=1, max_concurrency=2, postprocess=die_soon_on_killer, **pool_options
    ) as pool:
        for index, result in pool.stream(requests):
            seen[index] += 1
            results[index] = result
            if len(seen) == 1:
                # While the caller is busy, the worker finishes "early", sends it, and dies.
                time.sleep(1.5)
    assert seen == Counter({0: 1, 1: 1})
    assert results[0] == expected_answer(SYSTEM, "early")
    assert answered(fake, "early") == 1  # recorded once, never re-run
    assert isinstance(results[1], WorkerCrashedError)


@pytest.mark.timeout(120)
def test_a_worker_killed_while_writing_a_large_result_tears_only_its_own_frame(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    big = "[[big=1000000]] large"
    requests = [ask("first"), ask(big), ask("[[latency=0.2]] killer")]
    seen: Counter[int] = Counter()
    results: dict[int, Any] = {}
    with BatchPool(
        workers=2, max_concurrency=3, postprocess=die_soon_on_killer, **pool_options
    ) as pool:
        for index, result in pool.stream(requests):
            seen[index] += 1
            results[index] = result
            if len(seen) == 1:
                time.sleep(1.5)  # the 1 MB result blocks mid-write; its worker then dies
    assert seen == Counter({0: 1, 1: 1, 2: 1})
    assert results[1] == expected_answer(SYSTEM, big)
    assert len(results[1]) == 1_000_000
    assert isinstance(results[2], WorkerCrashedError)


# -- 3. hung workers -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_stuck_postprocess_is_ended_by_the_watchdog(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = ["poison"] + [f"fine {i}" for i in range(20)]
    started = time.monotonic()
    results = run_batch(
        [ask(u) for u in users],
        workers=2,
        max_concurrency=6,
        hang_timeout=1.0,
        postprocess=hang_on_poison,
        **pool_options,
    )
    assert isinstance(results[0], WorkerCrashedError)
    assert "stopped responding (one postprocess call ran for" in str(results[0])
    assert results[1:] == [expected_answer(SYSTEM, u) for u in users[1:]]
    assert time.monotonic() - started < 60


@pytest.mark.timeout(60)
def test_a_worker_idle_for_longer_than_the_hang_timeout_is_not_taken_for_hung(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    # Idle workers send no heartbeats: the silence that counts starts when work arrives,
    # not with the worker's last message (here: before the caller's input paused).
    fake.configure(latency=0.8)
    users = [f"late {i}" for i in range(6)]

    def slow_input() -> Iterator[OpenAIRequest]:
        for i, user in enumerate(users):
            if i % 2 == 0:
                time.sleep(1.5)  # the caller's input is slow; the workers sit idle
            yield ask(user)

    results = run_batch(
        slow_input(),
        workers=2,
        max_concurrency=2,
        hang_timeout=1.0,
        postprocess=with_worker_pid,
        **pool_options,
    )
    assert [text for text, _ in results] == [expected_answer(SYSTEM, u) for u in users]
    assert len({pid for _, pid in results}) <= 2  # no worker was ended and replaced


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_frozen_worker_that_ignores_sigterm_is_killed_and_its_requests_rerun(
    start_method: str, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.3)
    seen: Counter[int] = Counter()
    with BatchPool(
        workers=2,
        max_concurrency=8,
        hang_timeout=1.0,
        initializer=ignore_sigterm,
        start_method=start_method,
        postprocess=with_worker_pid,
        **pool_options,
    ) as pool:
        for index, (result, pid) in pool.stream([ask(f"f{i}") for i in range(40)]):
            seen[index] += 1
            assert result == expected_answer(SYSTEM, f"f{index}")
            if sum(seen.values()) == 1:
                # The worker that answered first: it is ready and runs requests (the
                # other one may still be starting, and a starting worker has a minute).
                frozen = pid
                # Silent: no heartbeat, and a SIGTERM stays pending.
                assert signal_worker(frozen, signal.SIGSTOP)
                frozen_at = time.monotonic()
        assert frozen not in pool.pids
    assert seen == Counter(range(40))
    assert not psutil.pid_exists(frozen) or psutil.Process(frozen).status() == "zombie"
    assert time.monotonic() - frozen_at < 30


# -- 4. crash storms -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_killing_most_workers_at_once_loses_nothing(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(latency=0.05)
    seen: Counter[int] = Counter()
    with BatchPool(workers=4, max_concurrency=32, **pool_options) as pool:
        for index, result in pool.stream(ask(f"s{i}") for i in range(600)):
            seen[index] += 1
            assert isinstance(result, (str, WorkerCrashedError))
            if sum(seen.values()) == 100:
                for pid in pool.pids[:3]:
                    assert signal_worker(pid)
    assert seen == Counter(range(600))


@pytest.mark.timeout(180)
def test_workers_killing_each_other_lose_nothing(pool_options: dict[str, Any]) -> None:
    seen: Counter[int] = Counter()
    with BatchPool(
        workers=3,
        max_concurrency=24,
        postprocess=kill_a_sibling_sometimes,
        start_method="forkserver",
        **pool_options,
    ) as pool:
        first_workers = set(pool.pids)
        for index, _result in pool.stream(ask(f"k{i}") for i in range(1500)):
            seen[index] += 1
            first_workers = first_workers or set(pool.pids)
        replaced = first_workers - set(pool.pids)
    assert seen == Counter(range(1500))
    assert replaced  # the workers did kill each other


@pytest.mark.timeout(120)
def test_several_poison_requests_end_with_errors_at_a_bounded_respawn_pace(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"poison {i}" if i % 10 == 0 else f"fine {i}" for i in range(50)]
    results = run_batch(
        [ask(u) for u in users],
        workers=2,
        max_concurrency=10,
        postprocess=exit_zero_on_poison,
        start_method="forkserver",
        **pool_options,
    )
    for user, result in zip(users, results, strict=True):
        if user.startswith("poison"):
            assert isinstance(result, WorkerCrashedError)
        else:
            assert result == expected_answer(SYSTEM, user)
    # At most four workers die per poison; a poison killed by another's crash before its
    # own answer came back never reached the server that time.
    assert answered(fake, "poison") <= 5 * 4


# -- 5. broken start-up ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_initializer_that_raises_fails_the_batch_fast_with_its_cause(
    pool_options: dict[str, Any],
) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerStartupError) as caught:
        run_batch([ask("never sent")], initializer=fail_to_start, **pool_options)
    assert "a_module_that_does_not_exist" in str(caught.value)
    assert "3 worker processes in a row exited before they were ready" in str(caught.value)
    assert time.monotonic() - started < 20


@pytest.mark.timeout(60)
def test_a_postprocess_that_cannot_be_loaded_fails_each_index_not_the_pool(
    tmp_path: Any, pool_options: dict[str, Any]
) -> None:
    module = tmp_path / "only_in_the_parent.py"
    module.write_text("def shout(text):\n    return text.upper()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_in_the_parent  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))  # workers will not find it; cloudpickle refers to it
    try:
        with BatchPool(workers=1, **pool_options) as pool:
            results = pool.run([ask("a"), ask("b")], postprocess=only_in_the_parent.shout)
            assert pool.run([ask("c")]) == [expected_answer(SYSTEM, "c")]  # not broken
    finally:
        sys.modules.pop("only_in_the_parent", None)
    assert all(isinstance(r, PostprocessError) for r in results), results
    assert "could not be loaded in the worker" in str(results[0])


@pytest.mark.parametrize("key", ["sk-has space", "sk-line\nbreak", ""])
def test_a_malformed_api_key_is_refused_without_being_echoed(key: str) -> None:
    with pytest.raises(ValueError, match="api_key must be a non-empty string") as caught:
        BatchPool(api_key=key)
    assert key == "" or key not in str(caught.value)


# -- 6. chaos --------------------------------------------------------------------------------


def _kill_randomly(pool: BatchPool, stop: threading.Event, kills: list[int]) -> None:
    rng = random.Random(7)
    while not stop.wait(0.2):
        pids = pool.pids
        if pids:
            victim = rng.choice(pids)
            if signal_worker(victim):
                kills.append(victim)


@pytest.mark.timeout(240)
def test_chaos_a_kill_every_200_ms_loses_nothing_and_costs_under_3x(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    total = 10_000
    options = {"workers": 2, "max_concurrency": 64, "start_method": "forkserver", **pool_options}
    with BatchPool(**options) as pool:  # type: ignore[arg-type]
        pool.run([ask("warm up")])

        def fault_free_run(tag: str) -> float:
            started = time.monotonic()
            assert len(pool.run(ask(f"{tag} {i}") for i in range(total))) == total
            return time.monotonic() - started

        calm_before = fault_free_run("calm")

        seen: Counter[int] = Counter()
        ok = failed = 0
        stop, kills = threading.Event(), []  # type: ignore[var-annotated]
        killer = threading.Thread(target=_kill_randomly, args=(pool, stop, kills))
        started = time.monotonic()
        killer.start()
        try:
            for index, result in pool.stream(ask(f"chaos {i}") for i in range(total)):
                seen[index] += 1
                if isinstance(result, str):
                    ok += 1
                else:
                    failed += 1
        finally:
            stop.set()
            killer.join()
        chaotic = time.monotonic() - started
        # The fault-free time on either side of the chaos, the slower of the two: on a
        # shared machine a slow spell during the chaos is not the kills' cost.
        fault_free = max(calm_before, fault_free_run("calm after"))
    assert seen == Counter(range(total))
    assert ok + failed == total
    assert len(kills) >= chaotic / 0.2 * 0.5
    assert chaotic < 3 * fault_free + 5, (chaotic, fault_free, len(kills))


# -- 7. force shutdown with full channels -----------------------------------------------------


@pytest.mark.timeout(60)
def test_breaking_out_with_full_channels_returns_fast_and_leaks_nothing(
    fake: FakeOpenAIServer,
) -> None:
    code = f"""
        import time
        from batch_stream_openai import OpenAIRequest, stream_batch
        if __name__ == "__main__":
            requests = [OpenAIRequest("s", f"[[big=200000]] {{i}}", model="gpt-4o-mini",
                                      api="chat") for i in range(2000)]
            stream = stream_batch(requests, max_concurrency=100, workers=2,
                                  base_url={fake.base_url!r}, api_key="sk-test")
            next(stream)
            time.sleep(2)  # results pile up in every pipe; writers block mid-frame
            started = time.monotonic()
            stream.close()
            print(f"closed in {{time.monotonic() - started:.2f}}", flush=True)
    """
    out = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert out.returncode == 0, out.stderr
    closed_in = float(out.stdout.split()[-1])
    assert closed_in < 2.0
    assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr, out.stderr


# -- 9. unpicklable everything ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_real_openai_exceptions_do_not_unpickle_which_is_why_we_convert_them(
    fake: FakeOpenAIServer,
) -> None:
    import pickle

    error = sdk_error(fake, "[[status=400]] bad")
    assert isinstance(error, openai.BadRequestError)
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(error))


@pytest.mark.timeout(60)
def test_requests_that_cannot_travel_fail_their_own_index(pool_options: dict[str, Any]) -> None:
    requests = [
        ask("fine"),
        ask("unpicklable", extra_body={"user": _Unpicklable("u")}),
        ask("bomb", extra_body={"user": _BombOnLoad("b")}),
        ask("fine too"),
    ]
    results = run_batch(requests, **pool_options)
    assert results[0] == expected_answer(SYSTEM, "fine")
    assert isinstance(results[1], ResultTransferError)
    assert "cannot be pickled" in str(results[1]) and results[1].index == 1
    assert isinstance(results[2], ResultTransferError)
    assert "cannot be unpickled in the worker" in str(results[2]) and results[2].index == 2
    assert results[3] == expected_answer(SYSTEM, "fine too")
