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
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import faulthandler
import hashlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx2
import memory
import openai
import psutil
from benchmarks_md import owned_sections
from memory import API_KEY, MODEL, SYSTEM, chat_request
from openai.types.chat import ChatCompletionMessageParam

from batch_stream_openai import BatchPool, stream_batch
from batch_stream_openai.pool import default_workers
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

ROOT = Path(__file__).resolve().parents[1]
MAX_THREADS = 64
WORKER_CANDIDATES = (1, 2, 3, 4)
WATCHDOG_S = 900.0  # a run that takes longer than this is hung: dump tracebacks and exit
CORES = psutil.cpu_count() or 1

ASYNCIO = "asyncio (httpx)"
AIOHTTP = "asyncio + aiohttp"
THREADS = f"threads ({MAX_THREADS}) + sync client"
BASELINES = (ASYNCIO, AIOHTTP, THREADS)
F_CALLER = "(a) work in the caller's loop"
F_WORKERS = "(b) work as postprocess= (in the workers)"

# Targets (goals to report against, not tests).
A_SPEEDUP_TARGET = 3.0
A_IDEAL_TARGET = 1.5
B_FLOOR_TARGET = 1.05
C_SPEEDUP_TARGET = 2.0
D_FIRST_RESULT_TARGET_S = 1.0
# Other processes' CPU (cores' worth) above which the notes warn that the box was busy.
OTHERS_NOTICE = 0.25
# Before each run, wait up to QUIET_WAIT_S for a second in which the machine (nothing of
# ours runs between runs) uses less than QUIET_CORES of a core.
QUIET_CORES = 0.25
QUIET_WAIT_S = 30.0


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """One batch, run identically by every tool it is given to.

    Parameters:
        requests: how many requests (``chat_request(0)`` ...).
        concurrency: requests in flight at most.
        latency: the server's latency in seconds.
        consume: work the caller does on each result, in its own loop.
        postprocess: work done on each answer in the workers (library only).
    """

    requests: int
    concurrency: int
    latency: float
    consume: Callable[[str], object] | None = None
    postprocess: Callable[[str], object] | None = None


@dataclass(frozen=True)
class Plan:
    """The sizes of every scenario; `FULL` is what BENCHMARKS.md reports."""

    a_requests: int = 5_000
    b_requests: int = 5_000
    c_requests: int = 20_000
    f_requests: int = 2_000
    concurrency: int = 200
    f_concurrency: int = 100
    latency: float = 0.1
    b_cpu_s: float = 0.010
    f_cpu_s: float = 0.020


FULL = Plan()
QUICK = Plan(a_requests=1_000, b_requests=300, c_requests=3_000, f_requests=200)


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


def calibrate(seconds: float) -> tuple[int, float]:
    """Rounds of `spin` that take `seconds` of CPU here, and what those rounds measured."""
    probe = 20_000
    per_round = min(_cpu_seconds(partial(spin, probe, "calibrate")) for _ in range(5)) / probe
    rounds = max(1, round(seconds / per_round))
    return rounds, min(_cpu_seconds(partial(spin, rounds, "check")) for _ in range(5))


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


def library_label(workers: int) -> str:
    """How a library entry is named in tables."""
    return f"batch-stream-openai, {workers} worker{'s' if workers > 1 else ''}"


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


def compare(server: FakeOpenAIServer, entries: list[Entry], runs: int, name: str) -> Series:
    """Interleaved runs of every entry (all share the first entry's server latency)."""
    server.configure(latency=entries[0].workload.latency)
    series: Series = {entry.label: [] for entry in entries}
    for run in range(1, runs + 1):
        for entry in entries:
            sample = measure(entry, server)
            series[entry.label].append(sample)
            log(f"{name} run {run}/{runs}: {entry.label}: {sample.wall:.2f} s")
    return series


def warm_up(server: FakeOpenAIServer, concurrency: int) -> None:
    """One small untimed run per tool: lazy imports, first-use caches, the file cache."""
    workload = Workload(requests=concurrency, concurrency=concurrency, latency=0.0)
    compare(server, [*baselines(workload), *libraries(workload, [1])], 1, "warm-up")


@dataclass(frozen=True)
class Summary:
    """Medians over the runs of one entry; CPU as a fraction of one core."""

    wall: float
    low: float
    high: float
    parent: float
    workers: float
    server: float
    others: float
    cpu_per_request_ms: tuple[float, float, float]  # parent, workers, server

    @property
    def busy(self) -> float:
        """Cores' worth of CPU the machine spent, all processes together."""
        return self.parent + self.workers + self.server + self.others


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


@dataclass
class Scenario:
    """A measured comparison, summarized."""

    workload: Workload
    summaries: dict[str, Summary]

    @classmethod
    def run(cls, server: FakeOpenAIServer, entries: list[Entry], runs: int, name: str) -> Scenario:
        """Measure `entries` (same workload size) and summarize them."""
        series = compare(server, entries, runs, name)
        requests = entries[0].workload.requests
        summaries = {label: summarize(samples, requests) for label, samples in series.items()}
        return cls(entries[0].workload, summaries)

    def speedup(self, label: str, reference: str = ASYNCIO) -> float:
        """How many times faster than `reference` (ratio of median walls)."""
        return self.summaries[reference].wall / self.summaries[label].wall

    def best_workers(self) -> int:
        """The library's worker count with the lowest median wall among those measured."""
        measured = [w for w in WORKER_CANDIDATES if library_label(w) in self.summaries]
        return min(measured, key=lambda w: self.summaries[library_label(w)].wall)


# --------------------------------------------------------------------------- D: start-up

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


@dataclass
class StartupReport:
    """Section D's medians (seconds)."""

    cold: dict[str, float]
    cold_range: dict[str, tuple[float, float]]
    pool: dict[int, tuple[float, float]]  # workers -> (start, close)


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


def postprocess_entries(plan: Plan, rounds: int) -> list[Entry]:
    """F: the same `spin` in the caller's loop, or as `postprocess=` in the workers."""
    workload = Workload(plan.f_requests, plan.f_concurrency, plan.latency)
    run = partial(run_library, workers=default_workers(plan.f_concurrency))
    work = partial(spin, rounds)
    return [
        Entry(F_CALLER, run, replace(workload, consume=work)),
        Entry(F_WORKERS, run, replace(workload, postprocess=work)),
    ]


@dataclass
class Report:
    """Everything BENCHMARKS.md and the chart are made of."""

    plan: Plan
    runs: int
    command: str
    default_workers: int
    b_burn: tuple[int, float]  # spin rounds, measured CPU seconds
    f_burn: tuple[int, float]
    a: Scenario
    b: Scenario
    c: Scenario
    d: StartupReport
    f: Scenario
    e: dict[str, Any] | None
    best_a: int  # worker counts
    best_c: int
    revision: str = ""
    load: list[tuple[float, float, float]] = field(default_factory=list)
    minutes: float = 0.0


def run_all(server: FakeOpenAIServer, plan: Plan, runs: int, with_memory: bool) -> Report:
    """Every scenario, in order; returns what the report needs."""
    started, load, revision = time.monotonic(), [os.getloadavg()], git_revision()
    c = plan.concurrency
    default = default_workers(c)
    b_burn, f_burn = calibrate(plan.b_cpu_s), calibrate(plan.f_cpu_s)
    log(
        f"calibrated: {b_burn[0]} rounds = {b_burn[1] * 1000:.1f} ms CPU; "
        f"{f_burn[0]} rounds = {f_burn[1] * 1000:.1f} ms; default workers {default}"
    )
    warm_up(server, c)

    a_load = Workload(plan.a_requests, c, plan.latency)
    a = Scenario.run(server, [*baselines(a_load), *libraries(a_load, WORKER_CANDIDATES)], runs, "A")
    best_a = a.best_workers()

    b_load = Workload(plan.b_requests, c, plan.latency, consume=partial(spin, b_burn[0]))
    b = Scenario.run(server, [*baselines(b_load), *libraries(b_load, [default, best_a])], runs, "B")

    c_load = Workload(plan.c_requests, c, 0.0)
    c_run = Scenario.run(
        server, [*baselines(c_load), *libraries(c_load, WORKER_CANDIDATES)], runs, "C"
    )
    best_c = c_run.best_workers()

    d = measure_startup(server, a_load, runs)

    f = Scenario.run(server, postprocess_entries(plan, f_burn[0]), runs, "F")
    e = memory.measure(server, quick=plan != FULL) if with_memory else memory.load()
    load.append(os.getloadavg())
    return Report(
        plan=plan,
        runs=runs,
        command=" ".join(["python", *sys.argv]),
        default_workers=default,
        b_burn=b_burn,
        f_burn=f_burn,
        a=a,
        b=b,
        c=c_run,
        d=d,
        f=f,
        e=e,
        best_a=best_a,
        best_c=best_c,
        revision=revision,
        load=load,
        minutes=(time.monotonic() - started) / 60,
    )


# --------------------------------------------------------------------------- rendering


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def _cpu(summary: Summary) -> str:
    """'parent / workers / server / others' CPU in % of one core."""
    parts = (summary.parent, summary.workers, summary.server, summary.others)
    return " / ".join(f"{part:.0%}" for part in parts)


def _wall(summary: Summary) -> str:
    return f"**{summary.wall:.2f}** ({summary.low:.2f}-{summary.high:.2f})"


CPU_HEADER = "CPU % of a core: parent / workers / server / others"


def _is_library(label: str) -> bool:
    return label.startswith("batch-stream-openai")


def render_a(report: Report) -> str:
    """Section A: latency-bound."""
    a, plan = report.a, report.plan
    ideal = math.ceil(plan.a_requests / plan.concurrency) * plan.latency
    rows = [
        [
            _name(label, report, report.best_a),
            _wall(s),
            f"{s.wall / ideal:.2f}",
            f"{a.speedup(label):.2f}x",
            _cpu(s),
        ]
        for label, s in a.summaries.items()
    ]
    table = _table(
        ["tool", "wall s, median (min-max)", "wall / ideal", "vs asyncio", CPU_HEADER], rows
    )
    return f"""## A. Latency-bound: {plan.a_requests:,} requests, {plan.latency * 1000:.0f} ms \
latency, concurrency {plan.concurrency}

Ideal = ceil(N / C) x latency = **{ideal:.2f} s**.

{table}

{limits_throughput(report, a, "A")}"""


def render_b(report: Report) -> str:
    """Section B: a CPU-heavy consumer."""
    b, plan = report.b, report.plan
    floor = plan.b_requests * report.b_burn[1]
    rows = [
        [
            _name(label, report, report.best_a),
            _wall(s),
            f"{s.wall / floor:.3f}",
            f"{b.speedup(label):.2f}x",
            _cpu(s),
        ]
        for label, s in b.summaries.items()
    ]
    table = _table(
        ["tool", "wall s, median (min-max)", "wall / floor", "vs asyncio", CPU_HEADER], rows
    )
    return f"""## B. CPU-heavy consumer: A plus {plan.b_cpu_s * 1000:.0f} ms of CPU per result in \
the caller

Each result is fed to `spin()` (chained SHA-256 in a Python loop), calibrated at start to
{report.b_burn[0]:,} rounds = {report.b_burn[1] * 1000:.2f} ms of CPU (thread time). Consumer
CPU floor = N x that = **{floor:.1f} s**. {plan.b_requests:,} requests, \
{plan.latency * 1000:.0f} ms latency, concurrency {plan.concurrency}.

{table}

{limits_consumer(report, floor)}"""


def render_c(report: Report) -> str:
    """Section C: zero latency, throughput."""
    c, plan = report.c, report.plan
    rows = []
    for label, s in c.summaries.items():
        ms = " / ".join(f"{v:.2f}" for v in s.cpu_per_request_ms)
        rows.append(
            [
                _name(label, report, report.best_c),
                f"**{plan.c_requests / s.wall:,.0f}**",
                _wall(s),
                f"{c.speedup(label):.2f}x",
                ms,
                _cpu(s),
            ]
        )
    table = _table(
        [
            "tool",
            "req/s",
            "wall s, median (min-max)",
            "vs asyncio",
            "CPU ms per request: parent / workers / server",
            CPU_HEADER,
        ],
        rows,
    )
    return f"""## C. Zero latency: {plan.c_requests:,} requests, concurrency {plan.concurrency}

{table}

{limits_throughput(report, c, "C")}"""


def render_d(report: Report) -> str:
    """Section D: cold start and pool start-up."""
    d = report.d
    ref = d.cold[ASYNCIO]
    cold_rows = [
        [
            label,
            f"**{t:.2f}**",
            f"{d.cold_range[label][0]:.2f}-{d.cold_range[label][1]:.2f}",
            f"{t / ref:.2f}x" if label == ASYNCIO or _is_library(label) else "",
        ]
        for label, t in d.cold.items()
    ]
    pool_rows = [
        [
            f"{w}{' (default)' if w == report.default_workers else ''}",
            f"**{start:.2f}**",
            f"{close:.2f}",
        ]
        for w, (start, close) in d.pool.items()
    ]
    return f"""## D. Start-up

Cold start: a fresh `python -c` process (server latency 0, so this is pure overhead: add
the API's latency); the clock starts when the subprocess is launched and stops when the
program prints its first result (or finishes its imports). The two batch programs send
{report.plan.a_requests:,} requests at concurrency {report.plan.concurrency} and stop at the
first result.

{_table(["fresh interpreter", "seconds, median", "min-max", "time vs asyncio"], cold_rows)}

Pool start-up (in this process, library already imported): `BatchPool(workers=N)`, then
`pool.run([one request])` on it: the time until the first worker is ready and has answered,
then `close()`.

{_table(["workers", "1-request run on a fresh pool, s", "close, s"], pool_rows)}

{limits_startup(report)}"""


def render_f(report: Report) -> str:
    """Section F: postprocess in the workers vs in the caller."""
    f, plan = report.f, report.plan
    floor = plan.f_requests * report.f_burn[1]
    rows = [
        [label, _wall(s), f"{f.speedup(label, F_CALLER):.2f}x", f"{s.wall / floor:.2f}", _cpu(s)]
        for label, s in f.summaries.items()
    ]
    table = _table(
        ["mode", "wall s, median (min-max)", "vs (a)", "wall / one-core CPU floor", CPU_HEADER],
        rows,
    )
    workers = default_workers(plan.f_concurrency)
    return f"""## F. Postprocess gain: {plan.f_requests:,} requests, {plan.latency * 1000:.0f} ms \
latency, concurrency {plan.f_concurrency}, {plan.f_cpu_s * 1000:.0f} ms CPU per result

The same function (`spin`, {report.f_burn[0]:,} rounds = {report.f_burn[1] * 1000:.2f} ms of
CPU) runs (a) in the caller's `for` loop over `stream_batch` results, or (b) passed as
`postprocess=` so it runs in the workers ({workers}, the default for this concurrency). CPU
floor on one core: N x {report.f_burn[1] * 1000:.1f} ms = **{floor:.1f} s**; spread over
{min(workers, CORES)} cores it is {floor / min(workers, CORES):.1f} s.

{table}

{limits_postprocess(report, floor)}"""


def _name(label: str, report: Report, best: int) -> str:
    """A label with '(default)' / '(best)' marks for the library."""
    marks = []
    if label == library_label(report.default_workers):
        marks.append("default")
    if label == library_label(best):
        marks.append("best")
    return f"{label} ({', '.join(marks)})" if marks else label


def limits_throughput(report: Report, scenario: Scenario, name: str) -> str:
    """'What limits it' for A and C, from the CPU measured in the runs."""
    base = scenario.summaries[ASYNCIO]
    best = report.best_a if name == "A" else report.best_c
    lib = scenario.summaries[library_label(report.default_workers)]
    base_ms = base.cpu_per_request_ms[0]
    total_ms = sum(lib.cpu_per_request_ms)
    aio = scenario.summaries[AIOHTTP]
    allowed = scenario.workload.concurrency / max(scenario.workload.latency, 1e-9)
    base_cap = 1000 / base_ms
    text = (
        f"**What limits it.** The asyncio baseline kept its single process at "
        f"{base.parent:.0%} of a core: {base_ms:.2f} ms of CPU per request in the SDK, so one "
        f"core caps it near {base_cap:,.0f} req/s"
    )
    if base_cap < allowed:
        text += (
            f" (the latency alone would allow {allowed:,.0f} req/s): it is CPU-bound, not "
            f"latency-bound"
            if scenario.workload.latency > 0
            else ": at zero latency it is bound by that one core"
        )
    aio_ms = aio.cpu_per_request_ms[0]
    text += (
        f". With the aiohttp transport the same process needs {aio_ms:.2f} ms per request "
        f"({aio.parent:.0%} of a core, cap near {1000 / aio_ms:,.0f} req/s): the best one "
        f"process does with the SDK. "
    )
    text += (
        f"With the library ({library_label(report.default_workers)}) the parent used "
        f"{lib.parent:.0%} of a core, the workers {lib.workers:.0%} "
        f"({lib.cpu_per_request_ms[1]:.2f} ms per request, their start-up imports included), "
        f"the server {lib.server:.0%} ({lib.cpu_per_request_ms[2]:.2f} ms per request) and "
        f"other processes on the machine {lib.others:.0%}: {lib.busy:.0%} of the "
        f"{CORES * 100}% this box has. "
    )
    if lib.others > OTHERS_NOTICE:
        text += (
            f"Other processes took {lib.others:.0%} of a core during these runs: the figures "
            f"here are pessimistic, the multi-process ones most (they need both cores). "
        )
    elif lib.busy > 0.85 * CORES:
        text += (
            f"The machine is CPU-saturated by the workers and the server: {total_ms:.2f} ms of "
            f"CPU per request (parent + workers + server) caps it near "
            f"{CORES * 1000 / total_ms:,.0f} req/s on {CORES} cores. "
        )
    text += f"Best worker count here: {best}."
    startup = report.d.pool.get(report.default_workers, (0.0, 0.0))
    text += (
        f" Each library run includes pool start-up and close (~{sum(startup):.1f} s, section D)."
    )
    return text


def limits_consumer(report: Report, floor: float) -> str:
    """'What limits it' for B."""
    b = report.b
    base = b.summaries[ASYNCIO]
    lib = b.summaries[library_label(report.default_workers)]
    base_cpu, lib_cpu = base.parent * base.wall, lib.parent * lib.wall
    text = (
        f"**What limits it.** Nothing can beat the floor: the consumer is Python code in the "
        f"caller's thread. The asyncio baseline runs the consumer on its own event loop, so "
        f"while a result is being consumed no response is read and no request sent; its "
        f"process spent {base_cpu:.1f} s of CPU, the floor plus {base_cpu - floor:.1f} s of SDK "
        f"work on the same core ({base.wall / floor:.2f}x the floor). The threads baseline "
        f"shares one GIL between the consumer and {MAX_THREADS} HTTP threads. With the library "
        f"the caller's process spent {lib_cpu:.1f} s of CPU: the floor plus "
        f"{lib_cpu - floor:.1f} s of dispatch and result handling; the workers "
        f"({lib.workers:.0%} of a core) and the server ({lib.server:.0%}) ran beside it. "
        f"Of its wall ({lib.wall:.1f} s), {lib.wall - lib_cpu:.1f} s is time the caller's "
        f"thread was not running: pool start-up (~{report.d.pool[report.default_workers][0]:.1f}"
        f" s, section D), waiting for results, or waiting for a CPU"
    )
    if lib.others > OTHERS_NOTICE:
        text += (
            f": other processes took {lib.others:.0%} of a core during these runs, so the "
            f"caller only got {lib.parent:.0%} of one"
        )
    return text + "."


def limits_startup(report: Report) -> str:
    """'What limits it' for D."""
    d = report.d
    lib = d.cold[library_label(report.default_workers)]
    return (
        f"**What limits it.** A fresh interpreter costs {d.cold['python (interpreter only)']:.2f}"
        f" s and `import openai` {d.cold['import openai']:.2f} s. The library's parent does not "
        f"import openai (`import batch_stream_openai`: "
        f"{d.cold['import batch_stream_openai']:.2f} s), but each worker is a spawned "
        f"interpreter that does, after the parent has started: the two in sequence take "
        f"{d.cold['import batch_stream_openai'] + d.cold['import openai']:.2f} s, and the first "
        f"result came at {lib:.2f} s ({d.cold[ASYNCIO]:.2f} s for the single-process "
        f"baseline, which pays one interpreter and `import openai`). "
    ) + _pool_growth(d.pool)


def _pool_growth(pool: dict[int, tuple[float, float]]) -> str:
    """How start-up grows with the worker count, from the pool table."""
    one, most = pool[1][0], max(pool)
    alike = max(w for w in pool if pool[w][0] <= 1.2 * one)
    same = (
        f"up to {alike} workers start in about the time of one"
        if alike > 1
        else "every extra worker adds start-up time"
    )
    return (
        f"Pool start-up ({one:.2f} s for one worker): {same}; {most} take "
        f"{pool[most][0]:.2f} s, their imports competing for {CORES} cores."
    )


def limits_postprocess(report: Report, floor: float) -> str:
    """'What limits it' for F."""
    f = report.f
    caller, workers = f.summaries[F_CALLER], f.summaries[F_WORKERS]
    return (
        f"**What limits it.** (a) is bound by the caller's one thread: it ran at "
        f"{caller.parent:.0%} of a core for {caller.wall:.1f} s (floor {floor:.1f} s). In (b) the "
        f"parent only receives results ({workers.parent:.0%} of a core) and the work runs in "
        f"each worker's postprocess thread, off its event loop; the workers used "
        f"{workers.workers:.0%} of a core together, the server {workers.server:.0%} and other "
        f"processes {workers.others:.0%}, so with {CORES} cores the gain is capped near "
        f"{CORES}x (measured {f.speedup(F_WORKERS, F_CALLER):.2f}x)."
    )


def target_rows(report: Report) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, met) for every target."""
    plan, d = report.plan, report.d
    default = library_label(report.default_workers)
    ideal = math.ceil(plan.a_requests / plan.concurrency) * plan.latency
    a_speed, c_speed = report.a.speedup(default), report.c.speedup(default)
    b_ratio = report.b.summaries[default].wall / (plan.b_requests * report.b_burn[1])
    a_ideal = report.a.summaries[default].wall / ideal
    first = d.cold[default]
    rows = [
        (
            "A. speed-up vs asyncio (default workers)",
            f"{a_speed:.2f}x",
            f">= {A_SPEEDUP_TARGET:.0f}x",
            a_speed >= A_SPEEDUP_TARGET,
        ),
        (
            "A. wall / ideal (default workers)",
            f"{a_ideal:.2f}",
            f"<= {A_IDEAL_TARGET}",
            a_ideal <= A_IDEAL_TARGET,
        ),
        (
            "B. wall / consumer CPU floor (default workers)",
            f"{b_ratio:.3f}",
            f"<= {B_FLOOR_TARGET}",
            b_ratio <= B_FLOOR_TARGET,
        ),
        (
            "C. req/s vs asyncio (default workers)",
            f"{c_speed:.2f}x",
            f">= {C_SPEEDUP_TARGET:.0f}x",
            c_speed >= C_SPEEDUP_TARGET,
        ),
        (
            "D. cold start to first result",
            f"{first:.2f} s",
            f"<= {D_FIRST_RESULT_TARGET_S:.1f} s",
            first <= D_FIRST_RESULT_TARGET_S,
        ),
    ]
    if report.e is not None:
        rows += memory.targets(report.e)
    return rows


def render_machine(report: Report) -> str:
    """Machine, versions, command and method."""
    model = _cpu_model()
    mem_gb = psutil.virtual_memory().total / 2**30
    (l1, l5, l15), (e1, _, _) = report.load[0], report.load[-1]
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("openai", "httpx2", "aiohttp", "batch-stream-openai")
    )
    return f"""## Machine and method

- CPU: {model}, {CORES} logical cores ({psutil.cpu_count(logical=False)} physical); RAM \
{mem_gb:.0f} GB; {platform.system()} {platform.release()}
- Python {platform.python_version()}; {versions}; library at git `{report.revision}`
- Load average at start {l1:.2f} / {l5:.2f} / {l15:.2f} (1 / 5 / 15 min), at the end {e1:.2f}:
  other processes were running; the "others" CPU column shows how much of the machine they
  took during each run.
- Command: `{report.command}` ({report.runs} runs per figure, {report.minutes:.1f} min in all).
- One bundled `FakeOpenAIServer` process for the whole run. Baselines run in the
  benchmark's own process; every library run starts a fresh pool (`stream_batch`) and
  includes its start-up and close. Runs are interleaved (run 1 of every tool, then run 2,
  ...); figures are medians, ratios are against the asyncio (httpx) median of this run.
  Every run is checked: all N results, no errors, no retries (the server saw exactly N
  requests), answers spot-checked against `expected_answer`. Before each run the script
  waits (up to {QUIET_WAIT_S:.0f} s) for a second in which the machine uses less than
  {QUIET_CORES:.0%} of a core, to dodge other processes' bursts.
- Spawned workers re-import the main module: here that is this script, whose imports
  (`batch_stream_openai.testing`, ...) add ~0.06 s to each library run's start-up compared
  with a minimal script (section D's cold start uses minimal `python -c` programs).
- CPU columns: CPU seconds / wall in % of one core for this process ("parent": the whole
  baseline, or the library's caller), its exited child processes ("workers"), the server
  and everything else on the machine ("others"), from psutil."""


def git_revision() -> str:
    """The checked-out commit, marked dirty when the working tree has changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    )
    return done.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(report: Report, chart: Path, markdown: Path) -> str:
    """The whole of BENCHMARKS.md."""
    targets = _table(
        ["figure", "measured", "target", "met"],
        [
            [what, measured, target, "yes" if met else "**no**"]
            for what, measured, target, met in target_rows(report)
        ],
    )
    memory_section = (
        memory.render(report.e)
        if report.e is not None
        else ("## E. Memory\n\nNot measured yet: run `python scripts/memory.py`.")
    )
    quick = (
        "\n**This is a `--quick` smoke run: small sizes, not the reported figures.**\n"
        if (report.plan != FULL)
        else ""
    )
    chart_link = os.path.relpath(chart, markdown.parent)
    return f"""# Benchmarks
{quick}
batch-stream-openai vs hand-written asyncio and thread baselines, against the bundled
fake server on 127.0.0.1. Written by `scripts/bench.py` (section E by
`scripts/memory.py`) on {datetime.date.today().isoformat()}.

![wall time and throughput per tool]({chart_link})

## Targets

{targets}

{render_machine(report)}

{render_a(report)}

{render_b(report)}

{render_c(report)}

{render_d(report)}

{memory_section}

{render_f(report)}

{owned_sections(markdown, exclude=frozenset({"memory"}))}
"""


def draw_chart(report: Report, path: Path) -> None:
    """Bars: wall of A, B and F, req/s of C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = report.plan
    panels = [
        (
            "A. latency-bound: wall (s)",
            report.a,
            lambda s: s.wall,
            math.ceil(plan.a_requests / plan.concurrency) * plan.latency,
            "ideal",
        ),
        (
            "B. 10 ms CPU per result: wall (s)",
            report.b,
            lambda s: s.wall,
            plan.b_requests * report.b_burn[1],
            "consumer CPU floor",
        ),
        ("C. zero latency: requests/s", report.c, lambda s: plan.c_requests / s.wall, None, ""),
        (
            "F. 20 ms CPU per result: wall (s)",
            report.f,
            lambda s: s.wall,
            plan.f_requests * report.f_burn[1],
            "one-core CPU floor",
        ),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    for axis, (title, scenario, value, line, line_label) in zip(axes.flat, panels, strict=True):
        labels = list(scenario.summaries)
        values = [value(s) for s in scenario.summaries.values()]
        colors = ["tab:gray" if lb in BASELINES else "tab:orange" for lb in labels]
        axis.barh(labels, values, color=colors)
        axis.set_xlim(0, max([*values, line or 0]) * 1.18)
        axis.invert_yaxis()
        axis.set_title(title)
        for y, v in enumerate(values):
            axis.text(v, y, f" {v:,.1f}" if v < 100 else f" {v:,.0f}", va="center")
        if line is not None:
            axis.axvline(line, color="tab:red", linestyle="--", label=line_label)
            axis.legend(loc="upper right")
    figure.suptitle(
        f"batch-stream-openai vs baselines (median of {report.runs} runs, {CORES} cores)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --------------------------------------------------------------------------- main


def log(message: str) -> None:
    """Progress, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Parse the arguments, run everything, write BENCHMARKS.md and the chart."""
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
    draw_chart(report, chart)
    markdown.write_text(render(report, chart, markdown))
    log(f"wrote {markdown} and {chart} ({report.minutes:.1f} min)")
    for what, measured, target, met in target_rows(report):
        log(f"{what}: {measured} (target {target}) {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
