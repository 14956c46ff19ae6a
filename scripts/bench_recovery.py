"""How long the pool takes to recover from each kind of failure (the crash matrix, timed).

Usage: ``python scripts/bench_recovery.py [--runs 3]``. Every case runs a batch against the
bundled server with the failure and the same batch without it, in the same run; the cost of
the failure is the difference of the median walls. Prints a markdown table and writes it
to its own section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from benchmarks_md import save_section

from batch_stream_openai import BatchPool, OpenAIRequest, WorkerStartupError
from batch_stream_openai.testing import FakeOpenAIServer

TITLE = "## H. Recovery from failures (the crash matrix, timed)"
COMMAND = "python scripts/bench_recovery.py"

REQUESTS = 2000
LATENCY_S = 0.05
CONCURRENCY = 64


def _requests(tag: str, total: int = REQUESTS) -> list[OpenAIRequest]:
    return [OpenAIRequest("s", f"{tag} {i}", model="gpt-4o-mini", api="chat") for i in range(total)]


def segfault_on_poison(text: str) -> str:
    if "poison" in text:
        ctypes.string_at(0)
    return text


def _failing_initializer() -> None:
    raise RuntimeError("this worker cannot start")


def _timed_batch(
    server: FakeOpenAIServer,
    fault: Callable[[BatchPool, int], None] | None,
    requests: list[OpenAIRequest],
    **options: Any,
) -> float:
    """Wall seconds of one batch on a warm pool; `fault(pool, results_so_far)` runs per result."""
    with BatchPool(
        workers=2, max_concurrency=CONCURRENCY, base_url=server.base_url, api_key="sk-b", **options
    ) as pool:
        pool.run(requests[:1])
        started = time.perf_counter()
        for done, _ in enumerate(pool.stream(requests), 1):
            if fault is not None:
                fault(pool, done)
        return time.perf_counter() - started


def _at(results: int, action: Callable[[BatchPool], None]) -> Callable[[BatchPool, int], None]:
    def fault(pool: BatchPool, done: int) -> None:
        if done == results:
            action(pool)

    return fault


def _signal_worker(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal one of our workers only: a dead worker's pid may already be someone else's."""
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        if os.getpid() in {parent.pid for parent in process.parents()}:
            process.send_signal(sig)


def _kill_one(pool: BatchPool) -> None:
    _signal_worker(pool.pids[0])


def _freeze_one(pool: BatchPool) -> None:
    _signal_worker(pool.pids[0], signal.SIGSTOP)


def _chaos(pool: BatchPool, stop: threading.Event) -> None:
    rng = random.Random(1)
    while not stop.wait(0.2):
        if pids := pool.pids:
            _signal_worker(rng.choice(pids))


def _chaos_batch(server: FakeOpenAIServer, requests: list[OpenAIRequest]) -> float:
    with BatchPool(
        workers=2,
        max_concurrency=CONCURRENCY,
        start_method="forkserver",
        base_url=server.base_url,
        api_key="sk-b",
    ) as pool:
        pool.run(requests[:1])
        stop = threading.Event()
        killer = threading.Thread(target=_chaos, args=(pool, stop))
        started = time.perf_counter()
        killer.start()
        try:
            assert len(pool.run(requests)) == len(requests)
        finally:
            stop.set()
            killer.join()
        return time.perf_counter() - started


def _time_to_poison_error(server: FakeOpenAIServer) -> float:
    with BatchPool(
        workers=2,
        max_concurrency=8,
        postprocess=segfault_on_poison,
        base_url=server.base_url,
        api_key="sk-b",
    ) as pool:
        pool.run(_requests("warm", 1))
        started = time.perf_counter()
        for index, _ in pool.stream(_requests("poison", 1)):
            assert index == 0
        return time.perf_counter() - started


def _time_to_startup_error(server: FakeOpenAIServer) -> float:
    started = time.perf_counter()
    try:
        BatchPool(
            workers=2, initializer=_failing_initializer, base_url=server.base_url, api_key="sk-b"
        ).run(_requests("never", 1))
    except WorkerStartupError:
        return time.perf_counter() - started
    raise AssertionError("the batch should have failed")


def measure(runs: int = 3) -> list[tuple[str, str, float]]:
    """(case, what is measured, median seconds) per failure case."""
    median = statistics.median
    rows = []
    with FakeOpenAIServer(latency=LATENCY_S) as server:
        calm = median(_timed_batch(server, None, _requests("calm")) for _ in range(runs))
        rows.append(("no failure", f"wall of {REQUESTS} requests (the baseline)", calm))
        killed = median(
            _timed_batch(server, _at(200, _kill_one), _requests("kill")) for _ in range(runs)
        )
        rows.append(("SIGKILL of 1 of 2 workers", "extra wall vs no failure", killed - calm))
        frozen = median(
            _timed_batch(server, _at(200, _freeze_one), _requests("freeze"), hang_timeout=2.0)
            for _ in range(runs)
        )
        rows.append(
            ("worker frozen (SIGSTOP), hang_timeout=2 s", "extra wall vs no failure", frozen - calm)
        )
        poison = median(_time_to_poison_error(server) for _ in range(runs))
        rows.append(("poison request (segfault x4)", "time to its WorkerCrashedError", poison))
        startup = median(_time_to_startup_error(server) for _ in range(runs))
        rows.append(("initializer raises", "time to WorkerStartupError", startup))
        chaos_requests = _requests("chaos", 10_000)
        calm_10k = median(_timed_batch(server, None, chaos_requests) for _ in range(runs))
        chaos = median(_chaos_batch(server, chaos_requests) for _ in range(runs))
        rows.append(
            (
                "chaos: SIGKILL every 200 ms, 10k requests",
                "wall / no-failure wall",
                chaos / calm_10k,
            )
        )
    return rows


def as_markdown(rows: list[tuple[str, str, float]]) -> str:
    lines = [
        f"2 workers, max_concurrency {CONCURRENCY}, {LATENCY_S * 1000:.0f} ms server latency, "
        f"{REQUESTS} requests per batch unless said; medians.",
        "",
        "| failure | measured | value |",
        "|---|---|---|",
    ]
    for case, what, value in rows:
        unit = "x" if what.startswith("wall /") else " s"
        lines.append(f"| {case} | {what} | {value:.2f}{unit} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    table = as_markdown(measure(parser.parse_args().runs))
    print(table)
    save_section("recovery", f"{TITLE}\n\nCommand: `{COMMAND}`\n\n{table}")


if __name__ == "__main__":
    main()
