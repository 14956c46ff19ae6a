"""The response cache: its cost on the zero-latency scenario, hits per second, flat memory.

Usage: ``python scripts/bench_cache.py [--runs 3] [--requests 20000] [--rss-total 1000000]``

1. Throughput, runs interleaved, each a fresh process (as ``scripts/bench_core.py``):
   20,000 chat requests at zero server latency, concurrency 200, default workers, with
   no cache; with a new cache (every request a miss, every answer written); and a second
   run on that cache (every request a hit: nothing is sent). Requests per second and the
   parent's CPU per request, medians, ratios against "no cache".
2. Memory: one run of 1,000,000 requests from a lazy generator with a cache, parent RSS
   sampled as in ``scripts/memory.py``, read at the 100,000th and at the last result.

Writes section "cache" of BENCHMARKS.md (``--print-only``: only prints it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench_core import git_revision
from benchmarks_md import save_section
from memory import RssSampler, _mb, chat_request

from batch_stream_openai import stream_batch
from batch_stream_openai.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench-0123456789"

RUN_ONE = textwrap.dedent(
    """
    import json, sys, time
    from batch_stream_openai import BatchPool, OpenAIRequest

    base_url, count, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None

    def requests(n, tag):
        for i in range(n):
            yield OpenAIRequest("You are terse.", f"{tag} {i}", model="gpt-4o-mini", api="chat")

    if __name__ == "__main__":
        options = dict(base_url=base_url, api_key="sk-bench-0123456789", cache=cache)
        with BatchPool(max_concurrency=200, **options) as pool:
            pool.run(list(requests(200, f"warm-up {time.time()}")))
            started, cpu = time.monotonic(), time.process_time()
            stream = pool.stream(requests(count, "question"))
            done = sum(1 for _index, result in stream if isinstance(result, str))
            wall, cpu = time.monotonic() - started, time.process_time() - cpu
        print(json.dumps({"done": done, "cached": stream.summary.cached, "req_s": count / wall,
                          "parent_ms": 1000 * cpu / count}))
    """
)


def run_once(base_url: str, count: int, cache: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", RUN_ONE, base_url, str(count), cache],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["done"] != count:
        raise RuntimeError(f"bad run: {result}")
    return result


def throughput(server: FakeOpenAIServer, runs: int, count: int, scratch: Path) -> str:
    samples: dict[str, list[dict[str, float]]] = {"no cache": [], "misses": [], "hits": []}
    for run in range(runs):
        cache = str(scratch / f"run-{run}.sqlite")
        for label, path in (("no cache", ""), ("misses", cache), ("hits", cache)):
            samples[label].append(run_once(server.base_url, count, path))
            print(f"run {run + 1} {label}: {samples[label][-1]}", file=sys.stderr)
    assert all(s["cached"] == count for s in samples["hits"]), "a hit run sent requests"
    base = {k: statistics.median(s[k] for s in samples["no cache"]) for k in ("req_s", "parent_ms")}
    lines = ["| run | req/s | vs no cache | parent CPU ms/req |", "|---|---|---|---|"]
    for label, rows in samples.items():
        req_s = statistics.median(r["req_s"] for r in rows)
        parent = statistics.median(r["parent_ms"] for r in rows)
        lines.append(f"| {label} | {req_s:,.0f} | {req_s / base['req_s']:.2f}x | {parent:.3f} |")
    return "\n".join(lines)


def memory(server: FakeOpenAIServer, total: int, scratch: Path) -> str:
    checkpoint = total // 10
    points: dict[int, tuple[float, float]] = {}
    with RssSampler(exclude={server.pid}) as sampler:
        before = _mb(sampler.read())
        started = time.monotonic()
        stream = stream_batch(
            (chat_request(i) for i in range(total)),
            max_concurrency=200,
            base_url=server.base_url,
            api_key=API_KEY,
            cache=scratch / "million.sqlite",
        )
        for received, _ in enumerate(stream, 1):
            if received in (checkpoint, total):
                points[received] = _mb(sampler.read())
                print(f"{received:,}: parent/total RSS {points[received]} MB", file=sys.stderr)
        wall = time.monotonic() - started
    size_mb = (scratch / "million.sqlite").stat().st_size / 2**20
    growth = points[total][0] / points[checkpoint][0] - 1
    return (
        f"| RSS, MB (parent / parent + workers) | before | at {checkpoint:,} | at {total:,} |\n"
        f"|---|---|---|---|\n| with a cache | {before[0]} / {before[1]} | "
        f"{points[checkpoint][0]} / {points[checkpoint][1]} | {points[total][0]} / "
        f"{points[total][1]} |\n\nParent RSS at {total:,} results vs at {checkpoint:,}: "
        f"{growth:+.1%}; the cache file grew to {size_mb:,.0f} MB on disk; {total / wall:,.0f} "
        "requests/s over the run."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rss-total", type=int, default=1_000_000)
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    command = " ".join(["python scripts/bench_cache.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as scratch, FakeOpenAIServer() as server:
        speed = throughput(server, args.runs, args.requests, Path(scratch))
        flat = memory(server, args.rss_total, Path(scratch))
    section = "\n".join(
        [
            "## J. The response cache",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}, library at git `{git_revision()}`.",
            f"{args.requests:,} chat requests at zero server latency, concurrency 200, default",
            "workers; each run a fresh process, warmed up first; medians of "
            f'{args.runs} interleaved runs. "misses": a new cache file (each answer stored);',
            '"hits": a second run on that file (nothing sent, no postprocess: answered in',
            "the parent).",
            "",
            speed,
            "",
            flat,
        ]
    )
    print(section)
    if not args.print_only:
        save_section("cache", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
