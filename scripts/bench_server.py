"""Benchmark the fake OpenAI server: raw aiohttp chat-completion POSTs at fixed concurrency.

Usage: ``python scripts/bench_server.py [--requests 20000] [--concurrency 100] [--runs 3]``.
Prints requests/s and the server process CPU% per run and the median over all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import psutil

from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

SYSTEM = "You are a benchmark."


async def _fire(base_url: str, total: int, concurrency: int) -> float:
    """Send ``total`` requests with ``concurrency`` workers; return the elapsed seconds."""
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            user = f"question {i}"
            body = {
                "model": "fake",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": user},
                ],
            }
            async with session.post(url, data=json.dumps(body), headers=headers) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {data}")
            if i % 1000 == 0:  # spot-check correctness without slowing the client down
                assert data["choices"][0]["message"]["content"] == expected_answer(SYSTEM, user)

    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - start


def _run_once(server: FakeOpenAIServer, total: int, concurrency: int) -> tuple[float, float]:
    """Return (requests/s, server CPU%) of one run."""
    proc = psutil.Process(server.pid)
    server.reset()
    cpu_before = proc.cpu_times()
    elapsed = asyncio.run(_fire(server.base_url, total, concurrency))
    cpu_after = proc.cpu_times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    stats = server.stats()
    if stats.by_status.get(200) != total:
        raise RuntimeError(f"unexpected server stats: {stats}")
    return total / elapsed, 100.0 * cpu / elapsed


def main() -> None:
    """Run the benchmark and print per-run and median numbers."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates: list[float] = []
    cpus: list[float] = []
    with FakeOpenAIServer(latency=0.0) as server:
        asyncio.run(_fire(server.base_url, 1_000, args.concurrency))  # warm-up
        for run in range(1, args.runs + 1):
            rate, cpu = _run_once(server, args.requests, args.concurrency)
            rates.append(rate)
            cpus.append(cpu)
            print(f"run {run}: {rate:,.0f} req/s, server CPU {cpu:.0f}%")
    print(
        f"median of {args.runs}: {statistics.median(rates):,.0f} req/s, "
        f"server CPU {statistics.median(cpus):.0f}% "
        f"({args.requests:,} requests, concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    main()
