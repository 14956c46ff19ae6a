"""Self-hosted fleets: auto concurrency, hedged stragglers, an endpoint lost mid-batch.

Usage: ``python scripts/bench_fleet.py [--runs 3]``

1. Auto concurrency: the bundled server in capacity mode (it serves `CAPACITY` requests
   at once, `SERVICE_S` each, and queues the rest, as a GPU server does), with a
   `TIMEOUT_S` attempt timeout and no retries: fixed concurrencies 16, 64, 512 against
   ``max_concurrency="auto"``: throughput, median and p99 latency, timeouts, and how long
   the 1-second throughput took to first reach 90% of the best fixed run's.
2. Hedging: `HEDGE_REQUESTS` requests at concurrency 100, normal latency `NORMAL_S`;
   2% of the prompts' first attempts take 30 times as long. Makespan without stragglers,
   with them, and with them and ``hedge=0.03``; extra requests the server saw.
3. Three endpoints (each `ENDPOINT_CAPACITY` at once, `SERVICE_S`), one killed once half
   of the results are in: wall time against three healthy ones; every index once.

Runs are interleaved; medians of `--runs`. Writes section "fleet" of BENCHMARKS.md
(``--print-only``: only prints it).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench_core import git_revision
from benchmarks_md import medians, save_section

from batch_stream_openai import BatchPool, OpenAIRequest
from batch_stream_openai.errors import APITimeoutError
from batch_stream_openai.testing import FakeOpenAIServer

API_KEY = "sk-bench-0123456789"
CAPACITY, SERVICE_S, TIMEOUT_S, AUTO_REQUESTS = 64, 0.1, 0.6, 4000
HEDGE_REQUESTS, NORMAL_S, STRAGGLERS, SLOWER = 2000, 0.1, 0.02, 30
ENDPOINT_CAPACITY, FLEET_REQUESTS = 16, 3000


def ask(tag: str, i: int, directive: str = "") -> OpenAIRequest:
    return OpenAIRequest("You are terse.", f"{tag} {i} {directive}", model="gpt-4o-mini")


def timed_stream(pool: BatchPool, requests: list[OpenAIRequest], **options: Any) -> dict[str, Any]:
    """Stream `requests`; wall time, completion times, latencies and errors."""
    started = time.monotonic()
    done_at, latencies, errors = [], [], []
    stream = pool.stream(requests, return_results=True, **options)
    for _, result in stream:
        done_at.append(time.monotonic() - started)
        if result.ok:
            latencies.append(result.latency_s)
        else:
            errors.append(result.error)
    return {
        "wall": time.monotonic() - started,
        "done_at": done_at,
        "latencies": latencies,
        "errors": errors,
        "summary": stream.summary,
    }


def first_reaching(done_at: list[float], rate: float) -> float:
    """Seconds until a 1-second window first completed `rate` requests."""
    j = 0
    for i, end in enumerate(done_at):
        while done_at[j] < end - 1.0:
            j += 1
        if i - j + 1 >= rate:
            return end
    return float("nan")


def auto_concurrency(runs: int) -> str:
    labels: list[int | str] = [16, 64, 512, "auto"]
    samples: dict[str, list[dict[str, float]]] = {str(label): [] for label in labels}
    completions: dict[str, list[list[float]]] = {str(label): [] for label in labels}
    with FakeOpenAIServer(latency=SERVICE_S, capacity=CAPACITY) as server:
        for run in range(runs):
            for label in labels:
                server.reset()
                with BatchPool(
                    max_concurrency=label,
                    base_url=server.base_url,
                    api_key=API_KEY,
                    timeout=TIMEOUT_S,
                    max_retries=0,
                    workers=2,
                ) as pool:
                    pool.run([ask("warm", i) for i in range(50)])
                    out = timed_stream(
                        pool, [ask(f"r{run} c{label}", i) for i in range(AUTO_REQUESTS)]
                    )
                lat = sorted(out["latencies"])
                samples[str(label)].append(
                    {
                        "rps": len(lat) / out["wall"],
                        "p50": statistics.median(lat) * 1000,
                        "p99": lat[int(0.99 * (len(lat) - 1))] * 1000,
                        "timeouts": sum(isinstance(e, APITimeoutError) for e in out["errors"]),
                        "errors": len(out["errors"]),
                    }
                )
                completions[str(label)].append(out["done_at"])
                print(f"auto run {run + 1} {label}: {samples[str(label)][-1]}", file=sys.stderr)
    medians_of = medians(samples)
    best = max(m["rps"] for label, m in medians_of.items() if label != "auto")
    lines = [
        "| concurrency | req/s | vs best fixed | p50 ms | p99 ms | timeouts "
        "| 90% of best after s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m in medians_of.items():
        reach = statistics.median(first_reaching(d, 0.9 * best) for d in completions[label])
        reached = f"{reach:.1f}" if reach == reach else "never"  # NaN: not reached
        lines.append(
            f"| {label} | {m['rps']:.0f} | {m['rps'] / best:.2f}x | {m['p50']:.0f} "
            f"| {m['p99']:.0f} | {m['timeouts']:.0f} of {AUTO_REQUESTS:,} | {reached} |"
        )
    return "\n".join(lines)


def hedging(runs: int) -> str:
    labels = ["no stragglers", "stragglers", "stragglers, hedge=0.03"]
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    straggle = f"[[straggle={NORMAL_S * (SLOWER - 1):g}]]"
    with (
        FakeOpenAIServer(latency=NORMAL_S) as server,
        BatchPool(
            max_concurrency=100, base_url=server.base_url, api_key=API_KEY, workers=2
        ) as pool,
    ):
        pool.run([ask("warm", i) for i in range(200)])
        for run in range(runs):
            rng = random.Random(run)
            slow = {i for i in range(HEDGE_REQUESTS) if rng.random() < STRAGGLERS}
            for label in labels:
                server.reset()
                requests = [
                    ask(
                        f"r{run} {labels.index(label)}",
                        i,
                        straggle if i in slow and label != labels[0] else "",
                    )
                    for i in range(HEDGE_REQUESTS)
                ]
                out = timed_stream(pool, requests, hedge=0.03 if "hedge" in label else False)
                assert not out["errors"], out["errors"][:3]
                extra = server.stats().requests - HEDGE_REQUESTS
                samples[label].append({"wall": out["wall"], "extra": extra, "slow": len(slow)})
                print(f"hedge run {run + 1} {label}: {samples[label][-1]}", file=sys.stderr)
    table = medians(samples)
    base = table[labels[0]]["wall"]
    lines = ["| run | makespan s | vs no stragglers | extra requests |", "|---|---|---|---|"]
    for label, med in table.items():
        wall, extra = med["wall"], med["extra"]
        lines.append(
            f"| {label} | {wall:.2f} | {wall / base:.2f}x | {extra:.0f} "
            f"({extra / HEDGE_REQUESTS:.1%}) |"
        )
    stragglers = table[labels[1]]["slow"]
    return (
        "\n".join(lines)
        + f"\n\nStragglers per run (median): {stragglers:.0f} of {HEDGE_REQUESTS:,}."
    )


def lost_endpoint(runs: int) -> str:
    labels = ["three healthy", "one killed at half-time"]
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for run in range(runs):
        for label in labels:
            servers = [
                FakeOpenAIServer(latency=SERVICE_S, capacity=ENDPOINT_CAPACITY).start()
                for _ in range(3)
            ]
            try:
                kill: Callable[[], None] = servers[1].kill
                with BatchPool(
                    max_concurrency=3 * ENDPOINT_CAPACITY,
                    endpoint_concurrency=ENDPOINT_CAPACITY,
                    base_url=[s.base_url for s in servers],
                    api_key=API_KEY,
                    workers=2,
                ) as pool:
                    pool.run([ask("warm", i) for i in range(60)])
                    started, seen, errors = time.monotonic(), set(), 0
                    stream = pool.stream([ask(f"r{run} {label}", i) for i in range(FLEET_REQUESTS)])
                    for index, value in stream:
                        assert index not in seen
                        seen.add(index)
                        errors += isinstance(value, Exception)
                        if label != labels[0] and len(seen) == FLEET_REQUESTS // 2:
                            kill()
                    wall = time.monotonic() - started
                assert len(seen) == FLEET_REQUESTS
                failed = sum(e.failed for e in stream.summary.endpoints.values())
                samples[label].append({"wall": wall, "errors": errors, "failed": failed})
            finally:
                for server in servers:
                    server.stop()
            print(f"fleet run {run + 1} {label}: {samples[label][-1]}", file=sys.stderr)
    table = medians(samples)
    base = table[labels[0]]["wall"]
    lines = [
        "| endpoints | wall s | vs three healthy | errors | attempts failed (re-sent) |",
        "|---|---|---|---|---|",
    ]
    for label, med in table.items():
        lines.append(
            f"| {label} | {med['wall']:.2f} | {med['wall'] / base:.2f}x "
            f"| {med['errors']:.0f} | {med['failed']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    command = " ".join(["python scripts/bench_fleet.py", *sys.argv[1:]])
    auto = auto_concurrency(args.runs)
    hedged = hedging(args.runs)
    lost = lost_endpoint(args.runs)
    section = "\n".join(
        [
            "## L. Your own servers: auto concurrency, hedging, a lost endpoint",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}, library at git `{git_revision()}`.",
            f"Medians of {args.runs} interleaved runs; 2 workers.",
            "",
            f"**Auto concurrency.** {AUTO_REQUESTS:,} requests to the bundled server in capacity "
            f"mode: {CAPACITY} served at once for {SERVICE_S * 1000:.0f} ms each, the rest queued "
            f"(its best is {CAPACITY / SERVICE_S:.0f} req/s); attempts time out after "
            f"{TIMEOUT_S} s, no retries.",
            "",
            auto,
            "",
            f"**Hedged stragglers.** {HEDGE_REQUESTS:,} requests at concurrency 100, "
            f"{NORMAL_S * 1000:.0f} ms each; {STRAGGLERS:.0%} of the prompts' first attempts take "
            f"{SLOWER}x as long (`[[straggle=...]]`).",
            "",
            hedged,
            "",
            f"**A lost endpoint.** {FLEET_REQUESTS:,} requests over three endpoints, each serving "
            f"{ENDPOINT_CAPACITY} at once for {SERVICE_S * 1000:.0f} ms "
            f"(`endpoint_concurrency={ENDPOINT_CAPACITY}`); one is killed (SIGKILL) once half of "
            "the results are in, and not restarted.",
            "",
            lost,
        ]
    )
    print(section)
    if not args.print_only:
        save_section("fleet", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
