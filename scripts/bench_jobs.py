"""Online vs batch jobs vs batch jobs under a deadline, and flat memory while spooling.

Usage: ``python scripts/bench_jobs.py [--runs 3] [--requests 10000] [--rss-lines 200000]
[--providers openai,anthropic,gemini,azure]``

1. One batch of chat requests split evenly over the providers' models (gpt-4o-mini,
   claude-haiku-4-5, gemini-2.5-flash, an Azure deployment) against the bundled server,
   whose online answers take 200 ms and whose batch jobs take `JOB_SECONDS` (OpenAI's
   Batch API, Anthropic's Message Batches and Gemini's batch mode, each through its SDK;
   Azure's Batch API through LiteLLM's batch functions; online, all but OpenAI's go
   through LiteLLM): online (concurrency 50), ``mode="batch"`` (jobs of 1,000 lines),
   and ``mode="batch"`` with a deadline shorter than the jobs take (they are cancelled,
   the rest runs online). Wall time, cost (genai-prices: batch lines at each provider's
   batch rate), and the calls the server saw (online requests + batch API calls);
   medians of `--runs`, runs interleaved.
2. Memory: ``mode="batch"`` over lazy generators of 50,000 and `--rss-lines` requests
   over the same providers (jobs of 50,000 lines at most), parent RSS peak while the
   lines are written, sent and read back.

Writes section "jobs" of BENCHMARKS.md (``--print-only``: only prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_core import git_revision
from benchmarks_md import medians, save_section

from batch_stream_openai import BatchPool, OpenAIRequest
from batch_stream_openai.testing import FakeOpenAIServer

API_KEY = "sk-bench-0123456789"
HERE = Path(__file__).resolve().parent
JOB_SECONDS = 120.0
LATENCY_S = 0.2
DEADLINE_S = 100.0
# Online, all but OpenAI's requests go through LiteLLM, whose CPU bounds this machine to
# ~180 requests a second: the reserve is what the online rest needs (what is not done by
# the deadline yields DeadlineExceededError, and the run fails).
ONLINE_RESERVE_S = 85.0
# The RSS runs' jobs: lines per job (None: the default, 50,000).
RSS_JOB_LINES = 10_000
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "anthropic/claude-haiku-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "azure": "azure/gpt-4o-mini",
}


def requests(count: int, tag: str, models: list[str]) -> Iterator[OpenAIRequest]:
    for i in range(count):
        model = models[i % len(models)]
        yield OpenAIRequest("You are terse.", f"{tag} {i}", model=model, api="chat")


def one_run(
    server: FakeOpenAIServer, label: str, count: int, tag: str, models: list[str]
) -> dict[str, float]:
    server.reset()
    options: dict[str, Any] = {}
    if label != "online":
        options = {"mode": "batch", "batch_size": 1000, "poll_interval": 0.5}
    if label == "batch + deadline":
        options.update(deadline=DEADLINE_S, online_reserve=ONLINE_RESERVE_S)
    with BatchPool(max_concurrency=50, base_url=server.base_url, api_key=API_KEY) as pool:
        started = time.monotonic()
        stream = pool.stream(requests(count, tag, models), **options)
        done = sum(1 for _, value in stream if isinstance(value, str))
        wall = time.monotonic() - started
    if done != count:
        raise RuntimeError(f"{label}: {done} of {count} done: {stream.summary}")
    jobs = server.batch_jobs()
    online = server.stats().requests
    calls = jobs["calls"] + jobs["message_calls"] + jobs["gemini_calls"]
    made = len(jobs["jobs"]) - 1 + len(jobs["message_batches"]) + len(jobs["gemini_batches"])
    return {
        "wall": wall,
        "cost": stream.summary.cost_usd,
        "online": online,
        "batch_calls": len(calls),
        "jobs": made,
    }


def modes(server: FakeOpenAIServer, runs: int, count: int, models: list[str]) -> str:
    labels = ("online", "batch", "batch + deadline")
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for run in range(runs):
        for label in labels:
            tag = f"run {run} mode {labels.index(label)}"  # same length: same tokens
            samples[label].append(one_run(server, label, count, tag, models))
            print(f"run {run + 1} {label}: {samples[label][-1]}", file=sys.stderr)
    base = statistics.median(s["cost"] for s in samples["online"])
    lines = [
        "| mode | wall s | cost USD | vs online | online requests | batch API calls | jobs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, med in medians(samples).items():
        lines.append(
            f"| {label} | {med['wall']:.1f} | {med['cost']:.5f} | {med['cost'] / base:.2f}x "
            f"| {med['online']:,.0f} | {med['batch_calls']:,.0f} | {med['jobs']:.0f} |"
        )
    return "\n".join(lines)


RSS_RUN = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[3])
    from memory import RssSampler, _mb
    from batch_stream_openai import BatchPool, OpenAIRequest

    base_url, total, models = sys.argv[1], int(sys.argv[2]), sys.argv[4].split(",")
    size = {"batch_size": int(sys.argv[5])} if sys.argv[5] != "None" else {}
    if __name__ == "__main__":
        lazy = (OpenAIRequest("You are terse.", f"rss {i}", model=models[i % len(models)],
                              api="chat") for i in range(total))
        with RssSampler(exclude=set()) as sampler:
            before = _mb(sampler.read())[0]
            started = time.monotonic()
            done, through = 0, []
            with BatchPool(max_concurrency=50, base_url=base_url, api_key="sk-bench-0") as pool:
                for _ in pool.stream(lazy, mode="batch", poll_interval=1, **size):
                    done += 1
                    if done % (total // 4) == 0:
                        through.append(_mb(sampler.read())[0])
            wall = time.monotonic() - started
            peak = _mb(sampler.peaks())[0]
        print(json.dumps({"done": done, "before": before, "peak": peak, "wall": wall,
                          "through": through}))
    """
)


def memory(server: FakeOpenAIServer, runs: list[tuple[int, int | None]], models: list[str]) -> str:
    """Parent RSS of a fresh process sending `total` requests in batch mode in jobs of
    `lines` lines (None: the default), per run."""
    server.configure(batch_seconds=2.0)
    rows = [
        "| lines | lines per job | parent RSS before, MB | peak, MB | growth, MB "
        "| RSS at 1/4, 2/4, 3/4, 4/4 of the results, MB | wall s |"
    ]
    rows.append("|---|---|---|---|---|---|---|")
    for total, lines in runs:
        server.reset()
        command = [sys.executable, "-c", RSS_RUN, server.base_url, str(total), str(HERE)]
        command += [",".join(models), str(lines)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        assert run["done"] == total, run
        growth = run["peak"] - run["before"]
        through = ", ".join(f"{mb:.0f}" for mb in run["through"])
        rows.append(
            f"| {total:,} | {lines or 50_000:,} | {run['before']:.0f} | {run['peak']:.0f} "
            f"| {growth:.0f} "
            f"| {through} | {run['wall']:.1f} |"
        )
        print(rows[-1], file=sys.stderr)
    server.configure(batch_seconds=JOB_SECONDS)
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rss-lines", type=int, default=200_000)
    parser.add_argument("--providers", default=",".join(MODELS))
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    command = " ".join(["python scripts/bench_jobs.py", *sys.argv[1:]])
    models = [MODELS[name] for name in args.providers.split(",")]
    with FakeOpenAIServer() as server:
        os.environ.update(server.sdk_environment(API_KEY))
        server.configure(latency=LATENCY_S, batch_seconds=JOB_SECONDS)
        table = modes(server, args.runs, args.requests, models)
        runs = [(50_000, RSS_JOB_LINES), (args.rss_lines, RSS_JOB_LINES), (args.rss_lines, None)]
        flat = memory(server, runs, models)
    section = "\n".join(
        [
            "## K. Half price: batch jobs at every provider, and a deadline",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}, library at git `{git_revision()}`.",
            f"{args.requests:,} chat requests split evenly over {', '.join(models)}; the "
            f"bundled server answers online in {LATENCY_S * 1000:.0f} ms and finishes a batch "
            f"job in {JOB_SECONDS:.0f} s (answering its lines as it goes); the deadline is "
            f"{DEADLINE_S:.0f} s with `online_reserve={ONLINE_RESERVE_S:.0f}`. Medians of "
            f"{args.runs} interleaved runs.",
            "",
            table,
            "",
            "Each line costs its provider's batch rate: half of online at every provider. With",
            "the deadline, the jobs are cancelled at the deadline minus `online_reserve`, the",
            "lines they answered are kept at half price and the rest runs online (all but",
            "OpenAI's through LiteLLM, whose CPU bounds this machine), done before the",
            "deadline (what is not yields DeadlineExceededError, which fails the run); each",
            "prompt is answered once.",
            "",
            "Memory while writing and reading back the jobs of one batch, from a lazy",
            "generator over the same providers (the lines go to disk as they are read;",
            "Gemini's jobs above 20,000 lines go as a file; the parent imports LiteLLM for",
            "Azure's jobs): the peak at one job size for 4x the lines, and at the default",
            "job size of 50,000 lines (the last row):",
            "",
            flat,
        ]
    )
    print(section)
    if not args.print_only:
        save_section("jobs", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
