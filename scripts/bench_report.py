"""BENCHMARKS.md and scripts/benchmarks.png from the results `scripts/bench.py` measured.

`render` writes the whole Markdown file: the targets table, the machine and method, then
one section per scenario (``render_latency_bound`` for A, ``render_consumer`` for B,
``render_zero_latency`` for C, ``render_startup`` for D, ``memory.render`` for E,
``render_postprocess`` for F), each a table and a "What limits it" paragraph written from
the CPU measured in the runs (``limits_*``); last, the sections other scripts own
(``benchmarks_md``), kept as they are. `draw_chart` draws the bars. Nothing here measures:
every figure comes from the `bench_plan.Report`.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import memory
import psutil
from bench_plan import (
    AIOHTTP,
    ASYNCIO,
    BASELINES,
    FULL,
    MAX_THREADS,
    QUIET_CORES,
    QUIET_WAIT_S,
    WORK_IN_CALLER,
    WORK_IN_WORKERS,
    Plan,
    Report,
    Scenario,
    Summary,
    library_label,
)
from benchmarks_md import owned_sections

from batch_stream_openai.pool import default_workers

CORES = psutil.cpu_count() or 1

# Targets (goals to report against, not tests).
LATENCY_BOUND_SPEEDUP_TARGET = 3.0  # A: the library's speed-up over asyncio, at least
LATENCY_BOUND_IDEAL_RATIO_TARGET = 1.5  # A: its wall / the ideal wall, at most
CONSUMER_FLOOR_RATIO_TARGET = 1.05  # B: its wall / the consumer's CPU floor, at most
ZERO_LATENCY_SPEEDUP_TARGET = 2.0  # C: its req/s over asyncio's, at least
COLD_START_TARGET_S = 1.0  # D: seconds from launch to the first result, at most
# Other processes' CPU (cores' worth) above which the notes warn that the box was busy.
OTHERS_NOTICE = 0.25

CPU_HEADER = "CPU % of a core: parent / workers / server / others"
WALL_HEADER = "wall s, median (min-max)"


# --------------------------------------------------------------------------- the file


def render(report: Report, chart: Path, markdown: Path) -> str:
    """The whole of BENCHMARKS.md (`chart` is linked relative to `markdown`)."""
    targets = _table(
        ["figure", "measured", "target", "met"],
        [
            [what, measured, target, "yes" if met else "**no**"]
            for what, measured, target, met in target_rows(report)
        ],
    )
    memory_section = (
        memory.render(report.memory)
        if report.memory is not None
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

{render_latency_bound(report)}

{render_consumer(report)}

{render_zero_latency(report)}

{render_startup(report)}

{memory_section}

{render_postprocess(report)}

{owned_sections(markdown, exclude=frozenset({"memory"}))}
"""


def target_rows(report: Report) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, met) for every target."""
    default = library_label(report.default_workers)
    speedup = report.latency_bound.speedup(default)
    over_ideal = report.latency_bound.summaries[default].wall / latency_bound_ideal_s(report.plan)
    over_floor = report.consumer.summaries[default].wall / consumer_floor_s(report)
    throughput = report.zero_latency.speedup(default)
    first = report.startup.cold[default]
    rows = [
        (
            "A. speed-up vs asyncio (default workers)",
            f"{speedup:.2f}x",
            f">= {LATENCY_BOUND_SPEEDUP_TARGET:.0f}x",
            speedup >= LATENCY_BOUND_SPEEDUP_TARGET,
        ),
        (
            "A. wall / ideal (default workers)",
            f"{over_ideal:.2f}",
            f"<= {LATENCY_BOUND_IDEAL_RATIO_TARGET}",
            over_ideal <= LATENCY_BOUND_IDEAL_RATIO_TARGET,
        ),
        (
            "B. wall / consumer CPU floor (default workers)",
            f"{over_floor:.3f}",
            f"<= {CONSUMER_FLOOR_RATIO_TARGET}",
            over_floor <= CONSUMER_FLOOR_RATIO_TARGET,
        ),
        (
            "C. req/s vs asyncio (default workers)",
            f"{throughput:.2f}x",
            f">= {ZERO_LATENCY_SPEEDUP_TARGET:.0f}x",
            throughput >= ZERO_LATENCY_SPEEDUP_TARGET,
        ),
        (
            "D. cold start to first result",
            f"{first:.2f} s",
            f"<= {COLD_START_TARGET_S:.1f} s",
            first <= COLD_START_TARGET_S,
        ),
    ]
    if report.memory is not None:
        rows += memory.targets(report.memory)
    return rows


def render_machine(report: Report) -> str:
    """Machine, versions, command and method."""
    mem_gb = psutil.virtual_memory().total / 2**30
    (l1, l5, l15), (e1, _, _) = report.load[0], report.load[-1]
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("openai", "httpx2", "aiohttp", "batch-stream-openai")
    )
    return f"""## Machine and method

- CPU: {_cpu_model()}, {CORES} logical cores ({psutil.cpu_count(logical=False)} physical); \
RAM {mem_gb:.0f} GB; {platform.system()} {platform.release()}
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------- what to compare with


def latency_bound_ideal_s(plan: Plan) -> float:
    """Section A's ideal wall: ceil(N / C) round trips of the server's latency."""
    return math.ceil(plan.latency_bound_requests / plan.concurrency) * plan.latency


def consumer_floor_s(report: Report) -> float:
    """Section B's floor: the CPU the caller's consumer spends on all the results."""
    return report.plan.consumer_requests * report.consumer_burn.cpu_s


def postprocess_floor_s(report: Report) -> float:
    """Section F's floor on one core: the CPU of the work on all the results."""
    return report.plan.postprocess_requests * report.postprocess_burn.cpu_s


# --------------------------------------------------------------------------- A: latency-bound


def render_latency_bound(report: Report) -> str:
    """Section A: latency-bound."""
    scenario, plan = report.latency_bound, report.plan
    ideal = latency_bound_ideal_s(plan)
    best = report.latency_bound_best_workers
    table = _walls_table(report, scenario, best, (ideal, "wall / ideal", 2))
    heading = (
        f"## A. Latency-bound: {plan.latency_bound_requests:,} requests, "
        f"{plan.latency * 1000:.0f} ms latency, concurrency {plan.concurrency}"
    )
    return f"""{heading}

Ideal = ceil(N / C) x latency = **{ideal:.2f} s**.

{table}

{limits_throughput(report, scenario, best)}"""


def limits_throughput(report: Report, scenario: Scenario, best: int) -> str:
    """'What limits it' for A and C (`best`: its fastest worker count)."""
    startup = report.startup.pool.get(report.default_workers, (0.0, 0.0))
    return (
        _baseline_limits(scenario)
        + _library_limits(report, scenario)
        + f"Best worker count here: {best}."
        + f" Each library run includes pool start-up and close (~{sum(startup):.1f} s, section D)."
    )


def _baseline_limits(scenario: Scenario) -> str:
    """What capped the two asyncio baselines: their one process's CPU per request."""
    base, aio = scenario.summaries[ASYNCIO], scenario.summaries[AIOHTTP]
    base_ms, aio_ms = base.cpu_per_request_ms[0], aio.cpu_per_request_ms[0]
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
    return text + (
        f". With the aiohttp transport the same process needs {aio_ms:.2f} ms per request "
        f"({aio.parent:.0%} of a core, cap near {1000 / aio_ms:,.0f} req/s): the best one "
        f"process does with the SDK. "
    )


def _library_limits(report: Report, scenario: Scenario) -> str:
    """Where the library's CPU went (default workers), and whether the box was the limit."""
    lib = scenario.summaries[library_label(report.default_workers)]
    total_ms = sum(lib.cpu_per_request_ms)
    text = (
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
    return text


# --------------------------------------------------------------------------- B: CPU-heavy consumer


def render_consumer(report: Report) -> str:
    """Section B: a CPU-heavy consumer."""
    scenario, plan, burn = report.consumer, report.plan, report.consumer_burn
    floor = consumer_floor_s(report)
    best = report.latency_bound_best_workers
    table = _walls_table(report, scenario, best, (floor, "wall / floor", 3))
    heading = (
        f"## B. CPU-heavy consumer: A plus {plan.consumer_cpu_s * 1000:.0f} ms of CPU per "
        f"result in the caller"
    )
    return f"""{heading}

Each result is fed to `spin()` (chained SHA-256 in a Python loop), calibrated at start to
{burn.rounds:,} rounds = {burn.cpu_s * 1000:.2f} ms of CPU (thread time). Consumer
CPU floor = N x that = **{floor:.1f} s**. {plan.consumer_requests:,} requests, \
{plan.latency * 1000:.0f} ms latency, concurrency {plan.concurrency}.

{table}

{limits_consumer(report, floor)}"""


def limits_consumer(report: Report, floor: float) -> str:
    """'What limits it' for B: the consumer's CPU `floor`, and what each tool added to it."""
    scenario, default = report.consumer, report.default_workers
    base = scenario.summaries[ASYNCIO]
    lib = scenario.summaries[library_label(default)]
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
        f"thread was not running: pool start-up (~{report.startup.pool[default][0]:.1f}"
        f" s, section D), waiting for results, or waiting for a CPU"
    )
    if lib.others > OTHERS_NOTICE:
        text += (
            f": other processes took {lib.others:.0%} of a core during these runs, so the "
            f"caller only got {lib.parent:.0%} of one"
        )
    return text + "."


# --------------------------------------------------------------------------- C: zero latency


def render_zero_latency(report: Report) -> str:
    """Section C: zero latency, throughput."""
    scenario, plan = report.zero_latency, report.plan
    best = report.zero_latency_best_workers
    rows = [
        [
            _marked_label(label, report, best),
            f"**{plan.zero_latency_requests / s.wall:,.0f}**",
            _wall(s),
            f"{scenario.speedup(label):.2f}x",
            " / ".join(f"{v:.2f}" for v in s.cpu_per_request_ms),
            _cpu(s),
        ]
        for label, s in scenario.summaries.items()
    ]
    header = ["tool", "req/s", WALL_HEADER, "vs asyncio"]
    header += ["CPU ms per request: parent / workers / server", CPU_HEADER]
    return f"""## C. Zero latency: {plan.zero_latency_requests:,} requests, \
concurrency {plan.concurrency}

{_table(header, rows)}

{limits_throughput(report, scenario, best)}"""


# --------------------------------------------------------------------------- D: start-up


def render_startup(report: Report) -> str:
    """Section D: cold start and pool start-up."""
    startup, plan = report.startup, report.plan
    ref = startup.cold[ASYNCIO]
    cold_rows = [
        [
            label,
            f"**{t:.2f}**",
            f"{startup.cold_range[label][0]:.2f}-{startup.cold_range[label][1]:.2f}",
            f"{t / ref:.2f}x" if label == ASYNCIO or _is_library(label) else "",
        ]
        for label, t in startup.cold.items()
    ]
    pool_rows = [
        [
            f"{w}{' (default)' if w == report.default_workers else ''}",
            f"**{start:.2f}**",
            f"{close:.2f}",
        ]
        for w, (start, close) in startup.pool.items()
    ]
    return f"""## D. Start-up

Cold start: a fresh `python -c` process (server latency 0, so this is pure overhead: add
the API's latency); the clock starts when the subprocess is launched and stops when the
program prints its first result (or finishes its imports). The two batch programs send
{plan.latency_bound_requests:,} requests at concurrency {plan.concurrency} and stop at the
first result.

{_table(["fresh interpreter", "seconds, median", "min-max", "time vs asyncio"], cold_rows)}

Pool start-up (in this process, library already imported): `BatchPool(workers=N)`, then
`pool.run([one request])` on it: the time until the first worker is ready and has answered,
then `close()`.

{_table(["workers", "1-request run on a fresh pool, s", "close, s"], pool_rows)}

{limits_startup(report)}"""


def limits_startup(report: Report) -> str:
    """'What limits it' for D: interpreter, imports, and how the pool's start-up grows."""
    cold = report.startup.cold
    lib = cold[library_label(report.default_workers)]
    return (
        f"**What limits it.** A fresh interpreter costs {cold['python (interpreter only)']:.2f}"
        f" s and `import openai` {cold['import openai']:.2f} s. The library's parent does not "
        f"import openai (`import batch_stream_openai`: "
        f"{cold['import batch_stream_openai']:.2f} s), but each worker is a spawned "
        f"interpreter that does, after the parent has started: the two in sequence take "
        f"{cold['import batch_stream_openai'] + cold['import openai']:.2f} s, and the first "
        f"result came at {lib:.2f} s ({cold[ASYNCIO]:.2f} s for the single-process "
        f"baseline, which pays one interpreter and `import openai`). "
    ) + _pool_growth(report.startup.pool)


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


# --------------------------------------------------------------------------- F: postprocess


def render_postprocess(report: Report) -> str:
    """Section F: postprocess in the workers vs in the caller."""
    scenario, plan, burn = report.postprocess, report.plan, report.postprocess_burn
    floor = postprocess_floor_s(report)
    rows = [
        [
            label,
            _wall(s),
            f"{scenario.speedup(label, WORK_IN_CALLER):.2f}x",
            f"{s.wall / floor:.2f}",
            _cpu(s),
        ]
        for label, s in scenario.summaries.items()
    ]
    table = _table(["mode", WALL_HEADER, "vs (a)", "wall / one-core CPU floor", CPU_HEADER], rows)
    workers = default_workers(plan.postprocess_concurrency)
    cores = min(workers, CORES)
    heading = (
        f"## F. Postprocess gain: {plan.postprocess_requests:,} requests, "
        f"{plan.latency * 1000:.0f} ms latency, concurrency {plan.postprocess_concurrency}, "
        f"{plan.postprocess_cpu_s * 1000:.0f} ms CPU per result"
    )
    return f"""{heading}

The same function (`spin`, {burn.rounds:,} rounds = {burn.cpu_s * 1000:.2f} ms of
CPU) runs (a) in the caller's `for` loop over `stream_batch` results, or (b) passed as
`postprocess=` so it runs in the workers ({workers}, the default for this concurrency). CPU
floor on one core: N x {burn.cpu_s * 1000:.1f} ms = **{floor:.1f} s**; spread over
{cores} cores it is {floor / cores:.1f} s.

{table}

{limits_postprocess(report, floor)}"""


def limits_postprocess(report: Report, floor: float) -> str:
    """'What limits it' for F: the caller's one thread in (a), the cores in (b)."""
    scenario = report.postprocess
    caller, workers = scenario.summaries[WORK_IN_CALLER], scenario.summaries[WORK_IN_WORKERS]
    return (
        f"**What limits it.** (a) is bound by the caller's one thread: it ran at "
        f"{caller.parent:.0%} of a core for {caller.wall:.1f} s (floor {floor:.1f} s). In (b) the "
        f"parent only receives results ({workers.parent:.0%} of a core) and the work runs in "
        f"each worker's postprocess thread, off its event loop; the workers used "
        f"{workers.workers:.0%} of a core together, the server {workers.server:.0%} and other "
        f"processes {workers.others:.0%}, so with {CORES} cores the gain is capped near "
        f"{CORES}x (measured {scenario.speedup(WORK_IN_WORKERS, WORK_IN_CALLER):.2f}x)."
    )


# --------------------------------------------------------------------------- the chart


class Panel(NamedTuple):
    """One bar chart: a value per tool of a scenario, and a reference line."""

    title: str
    scenario: Scenario
    value: Callable[[Summary], float]
    line: float | None = None  # where to draw a reference line, if anywhere
    line_label: str = ""


def chart_panels(report: Report) -> list[Panel]:
    """Wall of A, B and F, req/s of C, each against what it is compared with."""
    requests = report.plan.zero_latency_requests
    return [
        Panel(
            "A. latency-bound: wall (s)",
            report.latency_bound,
            lambda s: s.wall,
            latency_bound_ideal_s(report.plan),
            "ideal",
        ),
        Panel(
            "B. 10 ms CPU per result: wall (s)",
            report.consumer,
            lambda s: s.wall,
            consumer_floor_s(report),
            "consumer CPU floor",
        ),
        Panel("C. zero latency: requests/s", report.zero_latency, lambda s: requests / s.wall),
        Panel(
            "F. 20 ms CPU per result: wall (s)",
            report.postprocess,
            lambda s: s.wall,
            postprocess_floor_s(report),
            "one-core CPU floor",
        ),
    ]


def draw_chart(report: Report, path: Path) -> None:
    """The four panels of `chart_panels` as horizontal bars (baselines grey), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    for axis, panel in zip(axes.flat, chart_panels(report), strict=True):
        labels = list(panel.scenario.summaries)
        values = [panel.value(s) for s in panel.scenario.summaries.values()]
        colors = ["tab:gray" if lb in BASELINES else "tab:orange" for lb in labels]
        axis.barh(labels, values, color=colors)
        axis.set_xlim(0, max([*values, panel.line or 0]) * 1.18)
        axis.invert_yaxis()
        axis.set_title(panel.title)
        for y, v in enumerate(values):
            axis.text(v, y, f" {v:,.1f}" if v < 100 else f" {v:,.0f}", va="center")
        if panel.line is not None:
            axis.axvline(panel.line, color="tab:red", linestyle="--", label=panel.line_label)
            axis.legend(loc="upper right")
    figure.suptitle(
        f"batch-stream-openai vs baselines (median of {report.runs} runs, {CORES} cores)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --------------------------------------------------------------------------- table cells


def _walls_table(
    report: Report, scenario: Scenario, best: int, bound: tuple[float, str, int]
) -> str:
    """A and B's table: each tool's wall, over `bound` (seconds, header, decimals), vs asyncio."""
    seconds, header, decimals = bound
    rows = [
        [
            _marked_label(label, report, best),
            _wall(s),
            f"{s.wall / seconds:.{decimals}f}",
            f"{scenario.speedup(label):.2f}x",
            _cpu(s),
        ]
        for label, s in scenario.summaries.items()
    ]
    return _table(["tool", WALL_HEADER, header, "vs asyncio", CPU_HEADER], rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def _cpu(summary: Summary) -> str:
    """'parent / workers / server / others' CPU in % of one core."""
    parts = (summary.parent, summary.workers, summary.server, summary.others)
    return " / ".join(f"{part:.0%}" for part in parts)


def _wall(summary: Summary) -> str:
    """The median wall in bold, then its range over the runs."""
    return f"**{summary.wall:.2f}** ({summary.low:.2f}-{summary.high:.2f})"


def _is_library(label: str) -> bool:
    return label.startswith("batch-stream-openai")


def _marked_label(label: str, report: Report, best: int) -> str:
    """A label with '(default)' / '(best)' marks for the library."""
    marks = []
    if label == library_label(report.default_workers):
        marks.append("default")
    if label == library_label(best):
        marks.append("best")
    return f"{label} ({', '.join(marks)})" if marks else label
