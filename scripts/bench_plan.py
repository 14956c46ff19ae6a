"""What `bench.py` measures and what `bench_report.py` renders: the plan of each run,
the labels of the tools, and the shapes of the results (shared, so neither script imports
the other)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_THREADS = 64
WORKER_CANDIDATES = (1, 2, 3, 4)
WATCHDOG_S = 900.0  # a run that takes longer than this is hung: dump tracebacks and exit

# How the tools and section F's two modes are labelled, in the tables and as result keys.
ASYNCIO = "asyncio (httpx)"
AIOHTTP = "asyncio + aiohttp"
THREADS = f"threads ({MAX_THREADS}) + sync client"
BASELINES = (ASYNCIO, AIOHTTP, THREADS)
WORK_IN_CALLER = "(a) work in the caller's loop"
WORK_IN_WORKERS = "(b) work as postprocess= (in the workers)"

# Before each run, wait up to QUIET_WAIT_S for a second in which the machine (nothing of
# ours runs between runs) uses less than QUIET_CORES of a core.
QUIET_CORES = 0.25
QUIET_WAIT_S = 30.0


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
    """The sizes of every scenario; `FULL` is what BENCHMARKS.md reports.

    A, B and C run at `concurrency`, F at `postprocess_concurrency`; all but C at `latency`.
    """

    latency_bound_requests: int = 5_000  # A
    consumer_requests: int = 5_000  # B
    zero_latency_requests: int = 20_000  # C
    postprocess_requests: int = 2_000  # F
    concurrency: int = 200
    postprocess_concurrency: int = 100
    latency: float = 0.1
    consumer_cpu_s: float = 0.010  # B: CPU the caller spends on each result
    postprocess_cpu_s: float = 0.020  # F: CPU spent on each result, in the caller or workers


FULL = Plan()
QUICK = Plan(
    latency_bound_requests=1_000,
    consumer_requests=300,
    zero_latency_requests=3_000,
    postprocess_requests=200,
)


class Burn(NamedTuple):
    """CPU work to do on each result: `spin` rounds, and the CPU seconds they measured."""

    rounds: int
    cpu_s: float


def library_label(workers: int) -> str:
    """How a library entry is named in tables."""
    return f"batch-stream-openai, {workers} worker{'s' if workers > 1 else ''}"


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


@dataclass
class Scenario:
    """A measured comparison, summarized."""

    workload: Workload
    summaries: dict[str, Summary]

    def speedup(self, label: str, reference: str = ASYNCIO) -> float:
        """How many times faster than `reference` (ratio of median walls)."""
        return self.summaries[reference].wall / self.summaries[label].wall

    def best_workers(self) -> int:
        """The library's worker count with the lowest median wall among those measured."""
        measured = [w for w in WORKER_CANDIDATES if library_label(w) in self.summaries]
        return min(measured, key=lambda w: self.summaries[library_label(w)].wall)


@dataclass
class StartupReport:
    """Section D's medians (seconds)."""

    cold: dict[str, float]
    cold_range: dict[str, tuple[float, float]]
    pool: dict[int, tuple[float, float]]  # workers -> (start, close)


@dataclass
class Report:
    """Everything BENCHMARKS.md and the chart are made of (one field per section)."""

    plan: Plan
    runs: int
    command: str
    default_workers: int
    consumer_burn: Burn  # B: CPU per result in the caller
    postprocess_burn: Burn  # F: CPU per result, in the caller or the workers
    latency_bound: Scenario  # A
    consumer: Scenario  # B
    zero_latency: Scenario  # C
    startup: StartupReport  # D
    memory: dict[str, Any] | None  # E: scripts/memory.py's results (None: never measured)
    postprocess: Scenario  # F
    latency_bound_best_workers: int  # the fastest worker count in A
    zero_latency_best_workers: int  # the fastest worker count in C
    revision: str = ""
    load: list[tuple[float, float, float]] = field(default_factory=list)
    minutes: float = 0.0
