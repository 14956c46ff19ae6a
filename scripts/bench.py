"""Benchmarks of batch-stream-openai against hand-written asyncio and thread baselines.

Usage: ``python scripts/bench.py [--quick] [--runs N] [--memory]``

One bundled `FakeOpenAIServer` process serves the whole run (``configure(latency=...)``
between scenarios). Every scenario runs the same chat requests (model "gpt-4o-mini",
prompts ``f"question {i}"``) through:

- "asyncio (httpx)": one `AsyncOpenAI` (SDK default transport), a semaphore and
  `asyncio.as_completed`, as users write it by hand; "asyncio + aiohttp": the same with
  ``http_client=openai.DefaultAioHttpClient()``. Both get connection limits of C.
- "threads": a ``ThreadPoolExecutor(min(C, 64))`` around the sync `openai.OpenAI` client.
- "batch-stream-openai, N workers": `stream_batch`, pool start-up and close included.

Baselines run in this process (``openai`` already imported). Runs are interleaved (run 1
of every tool, then run 2, ...); each figure is the median of ``--runs`` runs and ratios
are against the asyncio (httpx) median of the same invocation. Writes BENCHMARKS.md and
scripts/benchmarks.png; ``--quick`` is a smoke run with small sizes that writes to a
temporary directory instead. Section E (memory) comes from ``scripts/memory.py``: the
results it stored in BENCHMARKS.md are reused unless ``--memory`` re-measures them here.

This file measures (workloads, tools, timed and checked runs, medians); the Markdown and
the chart are written by ``scripts/bench_report.py``. The sections of BENCHMARKS.md and
the names they go by here:

- A. latency-bound (`Plan.latency_bound_requests`, `Report.latency_bound`);
- B. CPU-heavy consumer, 10 ms of CPU per result in the caller (`consumer_*`);
- C. zero latency, throughput (`zero_latency_*`);
- D. start-up: cold start and pool start-up (`measure_startup`, `Report.startup`);
- E. memory, from ``scripts/memory.py`` (`Report.memory`);
- F. postprocess in the workers vs in the caller (`postprocess_*`).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import memory
import openai
import psutil
from bench_plan import (
    AIOHTTP,
    ASYNCIO,
    FULL,
    MAX_THREADS,
    QUICK,
    QUIET_CORES,
    QUIET_WAIT_S,
    THREADS,
    WATCHDOG_S,
    WORK_IN_CALLER,
    WORK_IN_WORKERS,
    WORKER_CANDIDATES,
    Burn,
    Plan,
    Report,
    Scenario,
    StartupReport,
    Summary,
    Workload,
    library_label,
)
from memory import API_KEY, MODEL, SYSTEM, chat_request
from openai.types.chat import ChatCompletionMessageParam

from batch_stream_openai import BatchPool, stream_batch
from batch_stream_openai.pool import default_workers
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

ROOT = Path(__file__).resolve().parents[1]
# --------------------------------------------------------------------------- workloads


def spin(rounds: int, text: str) -> str:
    """Pure CPU work: `rounds` chained SHA-256 digests of `text`; returns the last, in hex."""
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def _cpu_seconds(work: Callable[[], object]) -> float:
    """CPU time of this thread spent in `work` (not inflated by other processes)."""
    start = time.thread_time()
    work()
    return time.thread_time() - start


def calibrate(seconds: float) -> Burn:
    """Rounds of `spin` that take `seconds` of CPU here, and what those rounds measured."""
    probe = 20_000
    per_round = min(_cpu_seconds(partial(spin, probe, "calibrate")) for _ in range(5)) / probe
    rounds = max(1, round(seconds / per_round))
    return Burn(rounds, min(_cpu_seconds(partial(spin, rounds, "check")) for _ in range(5)))


# --------------------------------------------------------------------------- the tools

Results = dict[int, Any]
Runner = Callable[[Workload, str], Results]


def _messages(index: int) -> list[ChatCompletionMessageParam]:
    """The messages of `chat_request(index)`, for the SDK."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"question {index}"},
    ]


def _limits(concurrency: int) -> httpx2.Limits:
    return httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


def _deliver(
    results: Results, index: int, value: Any, consume: Callable[[str], object] | None
) -> None:
    """Keep a result (checked after the clock stops) and do the caller's work on it."""
    results[index] = value
    if consume is not None:
        consume(value)


def run_asyncio(workload: Workload, base_url: str, *, aiohttp: bool) -> Results:
    """The hand-written baseline: one AsyncOpenAI, a semaphore, `asyncio.as_completed`."""
    return asyncio.run(_asyncio_batch(workload, base_url, aiohttp))


async def _asyncio_batch(workload: Workload, base_url: str, aiohttp: bool) -> Results:
    transport = openai.DefaultAioHttpClient if aiohttp else openai.DefaultAsyncHttpxClient
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=transport(limits=_limits(workload.concurrency)),
    )
    semaphore = asyncio.Semaphore(workload.concurrency)

    async def one(index: int) -> tuple[int, str | None]:
        async with semaphore:
            completion = await client.chat.completions.create(
                model=MODEL, messages=_messages(index)
            )
        return index, completion.choices[0].message.content

    results: Results = {}
    async with client:
        for next_done in asyncio.as_completed([one(i) for i in range(workload.requests)]):
            index, text = await next_done
            _deliver(results, index, text, workload.consume)
    return results


def run_threads(workload: Workload, base_url: str) -> Results:
    """The thread baseline: a ThreadPoolExecutor around the sync client (LiteLLM-style)."""
    client = openai.OpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(limits=_limits(workload.concurrency)),
    )

    def one(index: int) -> str | None:
        completion = client.chat.completions.create(model=MODEL, messages=_messages(index))
        return completion.choices[0].message.content

    results: Results = {}
    threads = min(workload.concurrency, MAX_THREADS)
    with client, ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(one, i): i for i in range(workload.requests)}
        for future in as_completed(futures):
            _deliver(results, futures[future], future.result(), workload.consume)
    return results


def run_library(workload: Workload, base_url: str, *, workers: int) -> Results:
    """`stream_batch` on a fresh pool: start-up and close are part of the run."""
    requests = [chat_request(i) for i in range(workload.requests)]
    stream = stream_batch(
        requests,
        max_concurrency=workload.concurrency,
        workers=workers,
        base_url=base_url,
        api_key=API_KEY,
        postprocess=workload.postprocess,
    )
    results: Results = {}
    for index, value in stream:
        _deliver(results, index, value, workload.consume)
    return results


@dataclass(frozen=True)
class Entry:
    """A tool and the workload it runs, under a label."""

    label: str
    run: Runner
    workload: Workload


def baselines(workload: Workload) -> list[Entry]:
    """The three baselines on `workload`, the reference (asyncio, httpx) first."""
    return [
        Entry(ASYNCIO, partial(run_asyncio, aiohttp=False), workload),
        Entry(AIOHTTP, partial(run_asyncio, aiohttp=True), workload),
        Entry(THREADS, run_threads, workload),
    ]


def libraries(workload: Workload, workers: Sequence[int]) -> list[Entry]:
    """The library with each worker count in `workers` (duplicates dropped)."""
    return [
        Entry(library_label(w), partial(run_library, workers=w), workload)
        for w in dict.fromkeys(workers)
    ]


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Sample:
    """One timed run: wall seconds, and CPU seconds of each group of processes."""

    wall: float
    parent: float  # this process: the caller (and the whole baseline)
    workers: float  # its child processes that exited during the run: the library's workers
    server: float
    others: float  # everything else the machine ran meanwhile (noise)


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent so far (all cores, all processes)."""
    times = psutil.cpu_times()
    names = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(times, name, 0.0) for name in names)


def settle() -> None:
    """Wait (at most QUIET_WAIT_S) until other processes leave the machine nearly idle.

    Called between runs, when nothing of ours is running, so whatever CPU is busy is
    someone else's.
    """
    deadline = time.monotonic() + QUIET_WAIT_S
    while time.monotonic() < deadline:
        before = _machine_busy()
        time.sleep(1.0)
        busy = _machine_busy() - before
        if busy < QUIET_CORES:
            return
    log(f"machine still busy ({busy:.0%} of a core) after {QUIET_WAIT_S:.0f} s: running anyway")


def _cpu_now(server_pid: int) -> tuple[float, float, float, float]:
    """(parent, exited children, server, whole machine) CPU seconds so far."""
    me = psutil.Process().cpu_times()
    server = psutil.Process(server_pid).cpu_times()
    return (
        me.user + me.system,
        me.children_user + me.children_system,
        server.user + server.system,
        _machine_busy(),
    )


def timed(work: Callable[[], object], server: FakeOpenAIServer) -> tuple[Sample, Any]:
    """Run `work` under a watchdog; its Sample and its return value."""
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    before = _cpu_now(server.pid)
    start = time.perf_counter()
    value = work()
    wall = time.perf_counter() - start
    after = _cpu_now(server.pid)
    faulthandler.cancel_dump_traceback_later()
    parent, workers, served, busy = (a - b for a, b in zip(after, before, strict=True))
    others = max(0.0, busy - parent - workers - served)
    return Sample(wall, parent, workers, served, others), value


def verify(entry: Entry, results: Results, server: FakeOpenAIServer) -> None:
    """Every request answered once, correctly (spot-checked), with no retries: else raise."""
    workload = entry.workload
    errors = [value for value in results.values() if isinstance(value, Exception)]
    stats = server.stats()
    if len(results) != workload.requests or errors or stats.requests != workload.requests:
        raise RuntimeError(
            f"{entry.label}: {len(results)} results of {workload.requests}, {len(errors)} "
            f"errors (first: {errors[:1]!r}), server stats {stats}"
        )
    for index in range(0, workload.requests, max(1, workload.requests // 20)):
        expected: Any = expected_answer(SYSTEM, f"question {index}")
        if workload.postprocess is not None:
            expected = workload.postprocess(expected)
        if results[index] != expected:
            raise RuntimeError(f"{entry.label}: wrong result {index}: {results[index]!r}")


def measure(entry: Entry, server: FakeOpenAIServer) -> Sample:
    """One checked run of one entry."""
    server.reset()
    settle()
    sample, results = timed(lambda: entry.run(entry.workload, server.base_url), server)
    verify(entry, results, server)
    return sample


Series = dict[str, list[Sample]]


def compare(server: FakeOpenAIServer, entries: list[Entry], runs: int, section: str) -> Series:
    """Interleaved runs of every entry (all share the first entry's server latency).

    `section` (a BENCHMARKS.md letter, or "warm-up") only names the runs in the progress log.
    """
    server.configure(latency=entries[0].workload.latency)
    series: Series = {entry.label: [] for entry in entries}
    for run in range(1, runs + 1):
        for entry in entries:
            sample = measure(entry, server)
            series[entry.label].append(sample)
            log(f"{section} run {run}/{runs}: {entry.label}: {sample.wall:.2f} s")
    return series


def warm_up(server: FakeOpenAIServer, concurrency: int) -> None:
    """One small untimed run per tool: lazy imports, first-use caches, the file cache."""
    workload = Workload(requests=concurrency, concurrency=concurrency, latency=0.0)
    compare(server, [*baselines(workload), *libraries(workload, [1])], 1, "warm-up")


def summarize(samples: list[Sample], requests: int) -> Summary:
    """The medians of one entry's samples."""

    def med(value: Callable[[Sample], float]) -> float:
        return statistics.median(value(s) for s in samples)

    walls = [s.wall for s in samples]
    return Summary(
        wall=statistics.median(walls),
        low=min(walls),
        high=max(walls),
        parent=med(lambda s: s.parent / s.wall),
        workers=med(lambda s: s.workers / s.wall),
        server=med(lambda s: s.server / s.wall),
        others=med(lambda s: s.others / s.wall),
        cpu_per_request_ms=(
            med(lambda s: s.parent) * 1000 / requests,
            med(lambda s: s.workers) * 1000 / requests,
            med(lambda s: s.server) * 1000 / requests,
        ),
    )


def measure_scenario(
    server: FakeOpenAIServer, entries: list[Entry], runs: int, section: str
) -> Scenario:
    """Measure `entries` (same workload size) and summarize them."""
    series = compare(server, entries, runs, section)
    requests = entries[0].workload.requests
    summaries = {label: summarize(samples, requests) for label, samples in series.items()}
    return Scenario(entries[0].workload, summaries)


# --------------------------------------------------------------------------- start-up (D)

_COLD_LIBRARY = """
import time
from batch_stream_openai import OpenAIRequest, stream_batch
requests = [
    OpenAIRequest({system!r}, f"question {{i}}", model={model!r}, api="chat")
    for i in range({n})
]
for _ in stream_batch(requests, max_concurrency={c}, base_url={url!r}, api_key={key!r}):
    print(time.monotonic(), flush=True)
    break
"""

_COLD_ASYNCIO = """
import asyncio
import time
import httpx2
import openai

async def main():
    limits = httpx2.Limits(max_connections={c}, max_keepalive_connections={c})
    client = openai.AsyncOpenAI(
        base_url={url!r}, api_key={key!r}, max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )
    semaphore = asyncio.Semaphore({c})

    async def one(i):
        messages = [
            {{"role": "system", "content": {system!r}}},
            {{"role": "user", "content": f"question {{i}}"}},
        ]
        async with semaphore:
            return await client.chat.completions.create(model={model!r}, messages=messages)

    for first in asyncio.as_completed([one(i) for i in range({n})]):
        await first
        print(time.monotonic(), flush=True)
        break

asyncio.run(main())
"""

_COLD_IMPORT = "import time\n{imports}\nprint(time.monotonic(), flush=True)\n"


def cold_programs(workload: Workload, base_url: str) -> dict[str, str]:
    """Fresh-interpreter programs that print `time.monotonic()` when they got there."""
    fields = {
        "system": SYSTEM,
        "model": MODEL,
        "n": workload.requests,
        "c": workload.concurrency,
        "url": base_url,
        "key": API_KEY,
    }
    return {
        "python (interpreter only)": _COLD_IMPORT.format(imports=""),
        "import openai": _COLD_IMPORT.format(imports="import openai"),
        "import batch_stream_openai": _COLD_IMPORT.format(imports="import batch_stream_openai"),
        ASYNCIO: _COLD_ASYNCIO.format(**fields),
        library_label(default_workers(workload.concurrency)): _COLD_LIBRARY.format(**fields),
    }


def cold_start(program: str) -> float:
    """Seconds from launching `python -c program` until it printed its timestamp."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout.split()[0]) - start


def pool_startup(workers: int, base_url: str) -> tuple[float, float]:
    """(first result of a 1-request run on a fresh BatchPool, then its close), seconds."""
    pool = BatchPool(
        max_concurrency=FULL.concurrency, workers=workers, base_url=base_url, api_key=API_KEY
    )
    start = time.perf_counter()
    pool.run([chat_request(0)])
    started = time.perf_counter()
    pool.close()
    return started - start, time.perf_counter() - started


def measure_startup(server: FakeOpenAIServer, workload: Workload, runs: int) -> StartupReport:
    """Cold starts in fresh interpreters, and pool start-up for each worker count."""
    server.configure(latency=0.0)
    programs = cold_programs(workload, server.base_url)
    cold: dict[str, list[float]] = {label: [] for label in programs}
    pool: dict[int, list[tuple[float, float]]] = {w: [] for w in WORKER_CANDIDATES}
    for run in range(1, runs + 1):
        for label, program in programs.items():
            settle()
            cold[label].append(cold_start(program))
            log(f"D run {run}/{runs}: cold start, {label}: {cold[label][-1]:.2f} s")
        for workers in WORKER_CANDIDATES:
            settle()
            pool[workers].append(pool_startup(workers, server.base_url))
            log(f"D run {run}/{runs}: pool of {workers}: start {pool[workers][-1][0]:.2f} s")
    return StartupReport(
        cold={label: statistics.median(times) for label, times in cold.items()},
        cold_range={label: (min(times), max(times)) for label, times in cold.items()},
        pool={
            w: (statistics.median(s for s, _ in t), statistics.median(c for _, c in t))
            for w, t in pool.items()
        },
    )


# --------------------------------------------------------------------------- the run


def run_tools(
    server: FakeOpenAIServer, workload: Workload, workers: Sequence[int], runs: int, section: str
) -> Scenario:
    """The three baselines, then the library with each count in `workers`, on `workload`."""
    return measure_scenario(
        server, [*baselines(workload), *libraries(workload, workers)], runs, section
    )


def postprocess_entries(plan: Plan, rounds: int) -> list[Entry]:
    """Section F: the same `spin` in the caller's loop, or as `postprocess=` in the workers."""
    workload = Workload(plan.postprocess_requests, plan.postprocess_concurrency, plan.latency)
    run = partial(run_library, workers=default_workers(plan.postprocess_concurrency))
    work = partial(spin, rounds)
    return [
        Entry(WORK_IN_CALLER, run, replace(workload, consume=work)),
        Entry(WORK_IN_WORKERS, run, replace(workload, postprocess=work)),
    ]


def run_all(server: FakeOpenAIServer, plan: Plan, runs: int, with_memory: bool) -> Report:
    """Every scenario, in order; returns what the report needs."""
    started, load, revision = time.monotonic(), [os.getloadavg()], git_revision()
    concurrency = plan.concurrency
    default = default_workers(concurrency)
    consumer_burn = calibrate(plan.consumer_cpu_s)
    postprocess_burn = calibrate(plan.postprocess_cpu_s)
    log(
        f"calibrated: {consumer_burn.rounds} rounds = {consumer_burn.cpu_s * 1000:.1f} ms CPU; "
        f"{postprocess_burn.rounds} rounds = {postprocess_burn.cpu_s * 1000:.1f} ms; "
        f"default workers {default}"
    )
    warm_up(server, concurrency)

    latency_bound_load = Workload(plan.latency_bound_requests, concurrency, plan.latency)
    latency_bound = run_tools(server, latency_bound_load, WORKER_CANDIDATES, runs, "A")
    latency_bound_best = latency_bound.best_workers()

    consume = partial(spin, consumer_burn.rounds)
    consumer_load = Workload(plan.consumer_requests, concurrency, plan.latency, consume=consume)
    consumer = run_tools(server, consumer_load, [default, latency_bound_best], runs, "B")

    zero_latency_load = Workload(plan.zero_latency_requests, concurrency, 0.0)
    zero_latency = run_tools(server, zero_latency_load, WORKER_CANDIDATES, runs, "C")

    startup = measure_startup(server, latency_bound_load, runs)
    postprocess_work = postprocess_entries(plan, postprocess_burn.rounds)
    postprocess = measure_scenario(server, postprocess_work, runs, "F")
    quick = plan != FULL
    measured_memory = memory.measure(server, quick=quick) if with_memory else memory.load()
    load.append(os.getloadavg())
    return Report(
        plan=plan,
        runs=runs,
        command=" ".join(["python", *sys.argv]),
        default_workers=default,
        consumer_burn=consumer_burn,
        postprocess_burn=postprocess_burn,
        latency_bound=latency_bound,
        consumer=consumer,
        zero_latency=zero_latency,
        startup=startup,
        memory=measured_memory,
        postprocess=postprocess,
        latency_bound_best_workers=latency_bound_best,
        zero_latency_best_workers=zero_latency.best_workers(),
        revision=revision,
        load=load,
        minutes=(time.monotonic() - started) / 60,
    )


def git_revision() -> str:
    """The checked-out commit, marked dirty when the working tree has changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip() or "unknown"


# --------------------------------------------------------------------------- main


def log(message: str) -> None:
    """Progress, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Parse the arguments, run everything, write BENCHMARKS.md and the chart."""
    # Imported here: the library's spawned workers, which re-run this file, never need it.
    import bench_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (to a temp dir)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="measure section E here instead of reusing scripts/memory.py's",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    out = Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else ROOT
    markdown = out / "BENCHMARKS.md"
    chart = out / ("benchmarks.png" if args.quick else "scripts/benchmarks.png")
    with FakeOpenAIServer(latency=plan.latency) as server:
        report = run_all(server, plan, runs, args.memory)
    bench_report.draw_chart(report, chart)
    markdown.write_text(bench_report.render(report, chart, markdown))
    log(f"wrote {markdown} and {chart} ({report.minutes:.1f} min)")
    for what, measured, target, met in bench_report.target_rows(report):
        log(f"{what}: {measured} (target {target}) {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
