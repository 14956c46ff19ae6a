"""Throughput of the Ray backend against worker processes, on this machine and on 2 nodes.

Usage: ``python scripts/bench_ray.py [--requests 5000] [--runs 3]``; prints its table and writes
it to its own section of BENCHMARKS.md.

Against the bundled `FakeOpenAIServer` (latency 0, so the figures are the cost of the
pool itself), each run streams the same chat requests through a pool of 2 workers with
``max_concurrency=200``:

- "local processes": ``BatchPool(workers=2)``;
- "Ray, 1 node": ``BatchPool(backend="ray", workers=2)`` on ``ray.init(num_cpus=2)``;
- "Ray, 2 nodes": the same on a simulated 2-node cluster (`ray.cluster_utils.Cluster`,
  1 CPU per node), one actor per node. Both nodes share this machine's cores.

Each pool is started and warmed up with one request first ("first result" is that
request's time, from creating the pool); the throughput is that of the timed batch that
follows. Local and 1-node Ray runs alternate (Ray stays up for both); each figure is the
median of ``--runs``. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import ray
from benchmarks_md import save_section
from ray.cluster_utils import Cluster

from batch_stream_openai import BatchPool, OpenAIRequest
from batch_stream_openai.testing import FakeOpenAIServer

SYSTEM = "You are a benchmark."
API_KEY = "sk-bench-0123456789"
WORKERS = 2
CONCURRENCY = 200
LOCAL = "local processes"
RAY_LOCAL = "Ray, 1 node"
RAY_CLUSTER = "Ray, 2 nodes (simulated, 1 CPU each)"

LOOPBACK = "127.0.0.1"


@dataclass
class Runs:
    """The measurements of one setup: throughput and time to the first result, per run."""

    rates: list[float] = field(default_factory=list)
    first_results: list[float] = field(default_factory=list)


def requests(total: int) -> list[OpenAIRequest]:
    return [OpenAIRequest(SYSTEM, f"question {i}", model="gpt-4o-mini") for i in range(total)]


def measure(runs: Runs, base_url: str, total: int, **pool_options: Any) -> None:
    """One run: start a pool, warm it up with one request, then time `total` requests."""
    started = time.perf_counter()
    with BatchPool(
        workers=WORKERS,
        max_concurrency=CONCURRENCY,
        base_url=base_url,
        api_key=API_KEY,
        **pool_options,
    ) as pool:
        pool.run(requests(1))
        runs.first_results.append(time.perf_counter() - started)
        batch = requests(total)
        started = time.perf_counter()
        results = pool.run(batch)
        elapsed = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0]!r}")
    runs.rates.append(total / elapsed)


def on_one_machine(base_url: str, total: int, count: int) -> dict[str, Runs]:
    """Local processes and Ray on one node, run after run."""
    setups: dict[str, Runs] = {LOCAL: Runs(), RAY_LOCAL: Runs()}
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address=LOOPBACK,
    )
    try:
        for run in range(count):
            measure(setups[LOCAL], base_url, total)
            measure(setups[RAY_LOCAL], base_url, total, backend="ray")
            report_progress(run, setups)
    finally:
        ray.shutdown()
    return setups


def on_two_nodes(base_url: str, total: int, count: int) -> Runs:
    """The Ray backend on a simulated cluster of two 1-CPU nodes."""
    # The simulated nodes talk over this machine's own interface address (bound to
    # 127.0.0.1, the head's GCS did not come up here); nothing leaves the machine.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    runs = Runs()
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        for run in range(count):
            measure(runs, base_url, total, backend="ray", ray_address=cluster.address)
            report_progress(run, {RAY_CLUSTER: runs})
    finally:
        ray.shutdown()
        cluster.shutdown()
    return runs


def report_progress(run: int, setups: dict[str, Runs]) -> None:
    rates = ", ".join(f"{name}: {runs.rates[-1]:,.0f} req/s" for name, runs in setups.items())
    print(f"run {run + 1}: {rates}", file=sys.stderr, flush=True)


def table(setups: dict[str, Runs], total: int, command: str) -> str:
    """The markdown section: one row per setup, ratios against local processes."""
    local = statistics.median(setups[LOCAL].rates)
    lines = [
        "## I. Ray backend vs local processes",
        "",
        f"{total:,} chat requests to the bundled server (latency 0), {WORKERS} workers, "
        f"`max_concurrency={CONCURRENCY}`, median of {len(setups[LOCAL].rates)} runs on "
        f"{psutil.cpu_count()} cores. Throughput of a warm pool; first result: from creating "
        "the pool to its first answer (Ray already running).",
        "",
        "| Workers run as | req/s | vs local processes | first result (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in setups.items():
        rate, first = statistics.median(runs.rates), statistics.median(runs.first_results)
        lines.append(f"| {name} | {rate:,.0f} | {rate / local:.2f}x | {first:.2f} |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per timed batch")
    parser.add_argument("--runs", type=int, default=3, help="runs per setup (median)")
    args = parser.parse_args()
    with FakeOpenAIServer(latency=0.0) as server:
        setups = on_one_machine(server.base_url, args.requests, args.runs)
        setups[RAY_CLUSTER] = on_two_nodes(server.base_url, args.requests, args.runs)
    command = " ".join(["python scripts/bench_ray.py", *sys.argv[1:]])
    markdown = table(setups, args.requests, command)
    print(markdown)
    save_section("ray", markdown)


if __name__ == "__main__":
    main()
