"""Memory of `stream_batch` fed a lazy generator of requests: parent RSS must stay flat.

Usage: ``python scripts/memory.py [--quick]`` (also importable: `measure()`).

Against the bundled server (latency 0), with ``max_concurrency=200`` and the default
worker count, a thread samples the RSS of this process (the parent) and of parent +
workers every 0.2 s while:

1. and 2. ONE run streams 1,000,000 requests with a fast consumer; RSS is also read at the
   moment the 100,000th result arrives and at the last result, so "100k vs 1M" compares two
   points of the same run (the first 100k are a run of 100k).
3. a slow consumer (10 ms sleep per result) reads from a generator of 1,000,000 requests
   for 20 s, then breaks out; first vs last RSS sample shows whether the parent grows.

The full run writes section E of BENCHMARKS.md (the results are embedded there as JSON,
which ``scripts/bench.py`` reuses); ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from benchmarks_md import save_section

from batch_stream_openai import OpenAIRequest, stream_batch
from batch_stream_openai.pool import default_workers
from batch_stream_openai.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ROOT / "BENCHMARKS.md"
SECTION_START = "<!-- memory:start -->"
SECTION_END = "<!-- memory:end -->"
_RESULTS_RE = re.compile(r"<!-- memory-results (\{.*?\}) -->", re.DOTALL)

SYSTEM = "You are a benchmark."
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench"
CONCURRENCY = 200
SAMPLE_INTERVAL_S = 0.2
SLOW_SLEEP_S = 0.010
PARENT_TARGET_MB = 150.0
GROWTH_TARGET = 0.10
MB = 2**20


@dataclass(frozen=True)
class Sizes:
    """How big the memory runs are."""

    fast_total: int = 1_000_000
    checkpoint: int = 100_000
    slow_total: int = 1_000_000
    slow_seconds: float = 20.0


FULL = Sizes()
QUICK = Sizes(fast_total=20_000, checkpoint=2_000, slow_total=1_000_000, slow_seconds=4.0)


@dataclass
class RssSampler:
    """Samples parent and total (parent + its children but `exclude`) RSS from a thread."""

    exclude: set[int]
    interval: float = SAMPLE_INTERVAL_S
    samples: list[tuple[int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def read(self) -> tuple[int, int]:
        """(parent RSS, parent + workers RSS) in bytes, now; also recorded as a sample."""
        me = psutil.Process()
        parent = me.memory_info().rss
        total = parent
        for child in me.children(recursive=True):
            if child.pid in self.exclude:
                continue
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a worker that just exited
                continue
        self.samples.append((parent, total))
        return parent, total

    def peaks(self) -> tuple[int, int]:
        """Highest parent and total RSS sampled so far."""
        return max(p for p, _ in self.samples), max(t for _, t in self.samples)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.read()


@dataclass
class Counter:
    """How many items a generator has handed out."""

    pulled: int = 0


def chat_request(index: int) -> OpenAIRequest:
    """The benchmark's request number `index`: a short Chat Completions prompt."""
    return OpenAIRequest(SYSTEM, f"question {index}", model=MODEL, api="chat")


def lazy_requests(total: int, counter: Counter) -> Iterator[OpenAIRequest]:
    """`total` requests, built one at a time as the pool asks for them."""
    for index in range(total):
        counter.pulled += 1
        yield chat_request(index)


def _mb(rss: tuple[int, int]) -> tuple[float, float]:
    return round(rss[0] / MB, 1), round(rss[1] / MB, 1)


def fast_run(server: FakeOpenAIServer, sizes: Sizes) -> dict[str, Any]:
    """Stream `fast_total` requests with a consumer that only counts; RSS at checkpoints."""
    counter = Counter()
    points: dict[str, tuple[float, float]] = {}
    errors = received = 0
    with RssSampler(exclude={server.pid}) as sampler:
        points["before"] = _mb(sampler.read())
        start = time.perf_counter()
        results = stream_batch(
            lazy_requests(sizes.fast_total, counter),
            max_concurrency=CONCURRENCY,
            base_url=server.base_url,
            api_key=API_KEY,
        )
        for _, value in results:
            received += 1
            errors += not isinstance(value, str)
            if received in (sizes.checkpoint, sizes.fast_total):
                points[f"at_{received}"] = _mb(sampler.read())
                peaks = _mb(sampler.peaks())
                points[f"peak_to_{received}"] = peaks
                _log(f"{received:,} results: parent/total RSS {points[f'at_{received}']} MB")
        wall = time.perf_counter() - start
    return {
        "points_mb": points,
        "peak_mb": _mb(sampler.peaks()),
        "errors": errors,
        "wall_s": round(wall, 1),
        "req_per_s": round(received / wall),
    }


def slow_run(server: FakeOpenAIServer, sizes: Sizes) -> dict[str, Any]:
    """A consumer sleeping 10 ms per result for `slow_seconds`, then breaking out."""
    counter = Counter()
    consumed = 0
    first, start = (0.0, 0.0), time.monotonic()
    with RssSampler(exclude={server.pid}) as sampler:
        results = stream_batch(
            lazy_requests(sizes.slow_total, counter),
            max_concurrency=CONCURRENCY,
            base_url=server.base_url,
            api_key=API_KEY,
        )
        for _, _value in results:
            if consumed == 0:  # the pool is up: the clock starts now
                first = _mb(sampler.read())
                start = time.monotonic()
            consumed += 1
            time.sleep(SLOW_SLEEP_S)
            if time.monotonic() - start >= sizes.slow_seconds:
                break
        last = _mb(sampler.read())
        pulled = counter.pulled
        closing = time.monotonic()
        results.close()  # what leaving the for loop does, made explicit to time it
        close_s = time.monotonic() - closing
    return {
        "first_mb": first,
        "last_mb": last,
        "peak_mb": _mb(sampler.peaks()),
        "consumed": consumed,
        "pulled": pulled,
        "close_s": round(close_s, 2),
    }


def measure(server: FakeOpenAIServer | None = None, *, quick: bool = False) -> dict[str, Any]:
    """Run the three memory measurements; start a bundled server unless one is given."""
    if server is None:
        with FakeOpenAIServer(latency=0.0) as own:
            return measure(own, quick=quick)
    sizes = QUICK if quick else FULL
    server.configure(latency=0.0)
    _log(f"memory: fast consumer, {sizes.fast_total:,} lazy requests")
    fast = fast_run(server, sizes)
    _log(f"memory: slow consumer for {sizes.slow_seconds:.0f} s")
    slow = slow_run(server, sizes)
    return {
        "quick": quick,
        "sizes": asdict(sizes),
        "concurrency": CONCURRENCY,
        "workers": default_workers(CONCURRENCY),
        "fast": fast,
        "slow": slow,
    }


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, measured, target, met) rows for the summary table of BENCHMARKS.md."""
    sizes, fast = results["sizes"], results["fast"]
    peak_parent = fast["peak_mb"][0]
    at_check = fast["points_mb"][f"at_{sizes['checkpoint']}"][0]
    at_end = fast["points_mb"][f"at_{sizes['fast_total']}"][0]
    growth = at_end / at_check - 1
    return [
        (
            f"E. peak parent RSS, {sizes['fast_total']:,} lazy requests",
            f"{peak_parent:.0f} MB",
            f"< {PARENT_TARGET_MB:.0f} MB",
            peak_parent < PARENT_TARGET_MB,
        ),
        (
            f"E. parent RSS at {sizes['fast_total']:,} vs at {sizes['checkpoint']:,} results",
            f"{growth:+.1%}",
            f"within {GROWTH_TARGET:.0%}",
            abs(growth) <= GROWTH_TARGET,
        ),
    ]


def render(results: dict[str, Any]) -> str:
    """Section E of BENCHMARKS.md, with the raw results embedded for bench.py."""
    sizes, fast, slow = results["sizes"], results["fast"], results["slow"]
    points = fast["points_mb"]
    check, total = sizes["checkpoint"], sizes["fast_total"]
    rows = [
        ("before the batch (library imported)", points["before"]),
        (f"when the {check:,}th result arrived", points[f"at_{check}"]),
        (f"peak up to {check:,} results", points[f"peak_to_{check}"]),
        (f"when the {total:,}th (last) result arrived", points[f"at_{total}"]),
        (f"peak over all {total:,} results", fast["peak_mb"]),
    ]
    table = "\n".join(f"| {what} | {p:.1f} | {t:.1f} |" for what, (p, t) in rows)
    growth = points[f"at_{total}"][0] / points[f"at_{check}"][0] - 1
    per_worker = (points[f"at_{total}"][1] - points[f"at_{total}"][0]) / results["workers"]
    quick = " (**--quick smoke run, not the reported sizes**)" if results["quick"] else ""
    return f"""{SECTION_START}
## E. Memory with a lazy generator{quick}

`python scripts/memory.py`: `stream_batch` over a generator (never a list) of short chat
requests, `max_concurrency={results["concurrency"]}`, default workers
({results["workers"]}), server latency 0. A thread samples RSS (psutil) every
{SAMPLE_INTERVAL_S} s; "total" is the parent plus its worker processes (not the server).
Runs 1 and 2 are ONE run of {total:,} requests with a consumer that only counts: RSS was read
when the {check:,}th result arrived and again at the last one.

| {total:,} requests, fast consumer ({fast["req_per_s"]:,} req/s, {fast["wall_s"]} s, \
{fast["errors"]} errors) | parent RSS (MB) | total RSS (MB) |
|---|---:|---:|
{table}

Parent RSS at {total:,} vs at {check:,} results: **{growth:+.1%}**.

Slow consumer (sleeps {SLOW_SLEEP_S * 1000:.0f} ms per result) on a generator of \
{sizes["slow_total"]:,} requests, stopped after {sizes["slow_seconds"]:.0f} s by breaking out:
{slow["consumed"]:,} results consumed, {slow["pulled"]:,} requests pulled from the generator
(at most `max_concurrency` ahead of the consumer: the input is read lazily).
Parent RSS first / last / peak sample: **{slow["first_mb"][0]:.1f} / {slow["last_mb"][0]:.1f} /
{slow["peak_mb"][0]:.1f} MB** (total {slow["first_mb"][1]:.1f} / {slow["last_mb"][1]:.1f} /
{slow["peak_mb"][1]:.1f} MB). Closing the stream after the break took {slow["close_s"]} s.

**What limits it.** The parent holds only the in-flight ledger (at most `max_concurrency`
requests) and the results of one pipe read, so its RSS is set by its imports
({points["before"][0]:.0f} MB before the batch), not by the batch size. The rest of the total
is the workers: {per_worker:.0f} MB each at the end (an interpreter with `openai` imported).

<!-- memory-results {json.dumps(results)} -->
{SECTION_END}"""


def load(markdown: Path = MARKDOWN) -> dict[str, Any] | None:
    """The results embedded in an existing BENCHMARKS.md, if any."""
    if not markdown.exists():
        return None
    found = _RESULTS_RE.search(markdown.read_text())
    return json.loads(found.group(1)) if found else None


def save(results: dict[str, Any], markdown: Path = MARKDOWN) -> None:
    """Replace section E in BENCHMARKS.md (append it, or create the file, if missing)."""
    body = render(results).removeprefix(SECTION_START).removesuffix(SECTION_END)
    save_section("memory", body, markdown)


def _log(message: str) -> None:
    print(f"[memory] {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Measure, print the results, and (full run only) update BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; prints only")
    args = parser.parse_args()
    results = measure(quick=args.quick)
    print(json.dumps(results, indent=2))
    for what, measured, target, met in targets(results):
        print(f"{what}: {measured} (target {target}): {'met' if met else 'MISSED'}")
    if not args.quick:
        save(results)
        _log(f"wrote section E of {MARKDOWN}")


if __name__ == "__main__":
    main()
