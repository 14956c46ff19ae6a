"""Core throughput, this tree against another git revision, side by side in one run.

Usage: ``python scripts/bench_core.py [--baseline REV] [--runs 5] [--requests 20000]``

Scenario C of BENCHMARKS.md: N chat requests at zero server latency, concurrency 200, the
default number of workers, against one bundled `FakeOpenAIServer`. Each run is a fresh
Python process that imports the library from a given source tree (this one, or REV
checked out into a temporary git worktree), warms its pool up with one request, then
streams the batch. Measured per run:

- requests per second over the batch (pool start-up excluded: it is section D's figure);
- worker CPU per request: the workers' CPU time (psutil) over the batch / N;
- parent CPU per request: this process's CPU time over the batch / N (every thread of
  the parent, so the pool's helper threads count);
- server CPU per request.

Runs alternate between the two trees; the table gives medians and the ratio of the
medians. Writes section "core" of BENCHMARKS.md (``--print-only``: only prints it).
With ``--metrics``, this tree also runs with an OpenTelemetry `MeterProvider` set (an
in-memory reader: the cost of recording, not of exporting) and with ``metrics_port``
(nothing scrapes it), written to section "core-metrics" against this tree without either.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from trees import ROOT, checked_out

RUN_ONE = textwrap.dedent(
    """
    import json, sys, time
    import psutil
    from batch_stream_openai import BatchPool, OpenAIRequest

    base_url = sys.argv[1]
    count, concurrency, server_pid = map(int, sys.argv[2:5])
    server = psutil.Process(server_pid)

    def requests(n, tag):
        for i in range(n):
            yield OpenAIRequest("You are terse.", f"{tag} {i}", model="gpt-4o-mini", api="chat")

    def cpu(processes):
        total = 0.0
        for p in processes:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    if __name__ == "__main__":
        options = dict(base_url=base_url, api_key="sk-bench-0123456789")
        if sys.argv[5] == "provider":  # an application that set a MeterProvider
            from opentelemetry import metrics
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        elif sys.argv[5] == "port":  # metrics served for Prometheus
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                options["metrics_port"] = probe.getsockname()[1]
        with BatchPool(max_concurrency=concurrency, **options) as pool:
            pool.run(list(requests(concurrency, "warm-up")))
            workers = [psutil.Process(pid) for pid in pool.pids]
            me = psutil.Process()
            before = (time.monotonic(), cpu([me]), cpu(workers), cpu([server]))
            done = errors = 0
            for _index, result in pool.stream(requests(count, "question")):
                done += 1
                errors += isinstance(result, Exception)
            after = (time.monotonic(), cpu([me]), cpu(workers), cpu([server]))
        wall, parent, worker, srv = (b - a for a, b in zip(before, after))
        print(json.dumps({
            "done": done, "errors": errors, "workers": len(workers), "wall_s": wall,
            "req_s": count / wall, "parent_ms": 1000 * parent / count,
            "worker_ms": 1000 * worker / count, "server_ms": 1000 * srv / count,
        }))
    """
)


METRICS_NOTE = (
    "With a `MeterProvider` set, the counters and gauges cost next to nothing (observable "
    "instruments read the library's running totals), but each attempt's duration and "
    "each answer's input and output tokens go through the OpenTelemetry SDK's histogram "
    "`record`, about 15 us each (it cleans and hashes the attributes every time; its API "
    "has no cheaper way in): that is the difference. `metrics_port` keeps its histograms "
    "itself (`_observe/tally.py`) and hands them to `prometheus_client` only when scraped."
)


def run_once(
    tree: Path, base_url: str, count: int, concurrency: int, server_pid: int, metrics: str
) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    arguments = [base_url, str(count), str(concurrency), str(server_pid)]
    out = subprocess.run(
        [sys.executable, "-c", RUN_ONE, *arguments, metrics],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    if result["done"] != count or result["errors"]:
        raise RuntimeError(f"bad run in {tree}: {result}")
    return result


def table(label_runs: dict[str, list[dict]], baseline: str | None) -> str:
    keys = [
        ("req_s", "req/s"),
        ("worker_ms", "worker CPU ms/req"),
        ("parent_ms", "parent CPU ms/req"),
        ("server_ms", "server CPU ms/req"),
    ]
    lines = [
        "| tree | " + " | ".join(name for _, name in keys) + " | runs |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    medians = {
        label: {k: statistics.median(r[k] for r in runs) for k, _ in keys}
        for label, runs in label_runs.items()
    }
    for label, values in medians.items():
        cells = []
        for key, _ in keys:
            cell = f"{values[key]:,.0f}" if key == "req_s" else f"{values[key]:.3f}"
            if baseline is not None and label != baseline:
                cell += f" ({values[key] / medians[baseline][key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(label_runs[label])} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare with (e.g. HEAD~3)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="this tree against itself with an OpenTelemetry MeterProvider set, and with "
        "metrics_port (section C3)",
    )
    parser.add_argument("--print-only", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from batch_stream_openai.testing import FakeOpenAIServer

    trees = {"this tree": (ROOT, "plain")}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(FakeOpenAIServer())
        if args.baseline:
            baseline = stack.enter_context(checked_out(args.baseline))
            trees = {f"baseline {args.baseline}": (baseline, "plain"), "this tree": (ROOT, "plain")}
        if args.metrics:
            trees["this tree, a MeterProvider set"] = (ROOT, "provider")
            trees["this tree, metrics_port"] = (ROOT, "port")
        runs: dict[str, list[dict]] = {label: [] for label in trees}
        for run in range(args.runs):
            for label, (tree, metrics) in trees.items():
                server.reset()
                result = run_once(
                    tree, server.base_url, args.requests, args.concurrency, server.pid, metrics
                )
                runs[label].append(result)
                print(f"run {run + 1} {label}: {result}", file=sys.stderr)
    baseline_label = f"baseline {args.baseline}" if args.baseline else None
    if args.metrics:
        baseline_label = baseline_label or "this tree"
    command = " ".join(["python scripts/bench_core.py", *sys.argv[1:]])
    heading = "## C2. Core throughput and CPU per request, before and after"
    if args.metrics:
        heading = "## C3. The cost of metrics (a MeterProvider set; metrics_port)"
    section = "\n".join(
        [
            heading,
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}, library at git `{git_revision()}`. "
            f"{args.requests:,} chat requests at zero server latency, concurrency "
            f"{args.concurrency}, the default {runs['this tree'][0]['workers']} workers, "
            "one bundled server; each run is a fresh process that warms its pool up with "
            "one request per slot, then streams the batch (start-up excluded). Runs "
            f"alternate between the trees; medians of {args.runs} runs, ratios against "
            "the baseline of the same invocation. CPU columns are CPU seconds over the "
            "batch / requests (psutil; the parent's every thread included).",
            "",
            table(runs, baseline_label),
            *([] if not args.metrics else ["", METRICS_NOTE]),
        ]
    )
    print(section)
    if not args.print_only:
        from benchmarks_md import save_section

        save_section("core-metrics" if args.metrics else "core", section)
    return 0


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
