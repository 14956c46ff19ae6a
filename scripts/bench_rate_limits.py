"""Fixed vs adaptive concurrency against a rate-limited server: 429s met and wall time.

Usage: ``python scripts/bench_rate_limits.py [--requests 600] [--rpm 3000] [--runs 3]``.
The bundled server enforces the RPM budget like the real API (a bucket of one second's
worth, 429 with ``retry-after-ms`` and ``x-ratelimit-*`` headers). Prints a markdown table
of medians and writes it to its own section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks_md import save_section

from batch_stream_openai import BatchPool, OpenAIRequest
from batch_stream_openai.testing import FakeOpenAIServer

TITLE = "## G. Rate limits: fixed vs adaptive concurrency"
COMMAND = "python scripts/bench_rate_limits.py"

CONCURRENCY = 100
LATENCY_S = 0.05


def _one_run(server: FakeOpenAIServer, requests: int, adaptive: bool) -> tuple[float, int, int]:
    """Wall seconds, 429s answered by the server, and failed requests, for one batch."""
    server.reset()
    batch = [
        OpenAIRequest("s", f"limited {i}", model="gpt-4o-mini", api="chat") for i in range(requests)
    ]
    with BatchPool(
        max_concurrency=CONCURRENCY,
        workers=2,
        adaptive=adaptive,
        max_retries=30,
        base_url=server.base_url,
        api_key="sk-bench",
    ) as pool:
        pool.run(batch[:1])  # workers up before the clock starts
        server.reset()
        started = time.perf_counter()
        failed = sum(1 for result in pool.run(batch) if not isinstance(result, str))
        wall = time.perf_counter() - started
    return wall, server.stats().by_status.get(429, 0), failed


def measure(requests: int = 600, rpm: float = 3000, runs: int = 3) -> list[dict[str, float]]:
    """Median wall, 429 count and failures for fixed and adaptive concurrency."""
    rows = []
    with FakeOpenAIServer(latency=LATENCY_S, rpm=rpm) as server:
        for adaptive in (False, True):
            samples = [_one_run(server, requests, adaptive) for _ in range(runs)]
            rows.append(
                {
                    "adaptive": float(adaptive),
                    "wall_s": statistics.median(s[0] for s in samples),
                    "rate_limited": statistics.median(s[1] for s in samples),
                    "failed": statistics.median(s[2] for s in samples),
                    "ideal_s": requests / (rpm / 60),
                }
            )
    return rows


def as_markdown(rows: list[dict[str, float]], requests: int, rpm: float) -> str:
    """The rows as a markdown table with ratios against the fixed run."""
    fixed = rows[0]
    lines = [
        f"{requests} chat requests, max_concurrency {CONCURRENCY}, 2 workers, server limited to "
        f"{rpm:.0f} RPM ({rpm / 60:.0f}/s, so at best {rows[0]['ideal_s']:.1f} s), "
        f"{LATENCY_S * 1000:.0f} ms latency; medians.",
        "",
        "| mode | wall (s) | 429s met | failed | 429s vs fixed | wall vs fixed |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = "adaptive (default)" if row["adaptive"] else "fixed (`adaptive=False`)"
        lines.append(
            f"| {name} | {row['wall_s']:.2f} | {row['rate_limited']:.0f} | {row['failed']:.0f} "
            f"| {row['rate_limited'] / max(fixed['rate_limited'], 1):.2f}x "
            f"| {row['wall_s'] / fixed['wall_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = measure(args.requests, args.rpm, args.runs)
    table = as_markdown(rows, args.requests, args.rpm)
    print(table)
    save_section("rate-limits", f"{TITLE}\n\nCommand: `{COMMAND}`\n\n{table}")


if __name__ == "__main__":
    main()
