"""Time to first result, this tree against another git revision and two asyncio loops.

Usage: ``python scripts/bench_first_result.py [--baseline REV] [--runs 5]``

Every figure is a fresh process (``python -c``) against one bundled `FakeOpenAIServer`
at zero latency, 100 requests at concurrency 50; runs alternate between the programs;
medians (and the range) of `--runs`. Measured:

- **fresh interpreter**: from launching ``python -c`` to the first request on the wire
  (the server's clock) and to the first result in hand, for `stream_batch` (this tree,
  and the baseline), asyncio with the SDK's aiohttp transport
  (``openai.DefaultAioHttpClient``), and a raw aiohttp loop (the floor);
- **warm interpreter**: the package imported a second earlier (a notebook), from the
  `stream_batch` call to the first request on the wire and to the first result (a new
  pool, and so new workers);
- **a built pool, its next batch**: ``pool.stream(...)`` to the first result, the pool's
  workers already running;
- **scenario A**: 5,000 requests at 100 ms latency and concurrency 200, wall seconds
  (ideal: 5,000 / 200 x 0.1 = 2.5 s), and the raw aiohttp loop doing the same (what this
  machine allows: the server shares its two cores);
- **the cold path's imports** (``python -X importtime``): what the fork server imports
  before it forks the first worker, and what the parent imports for `stream_batch`.

Writes section "first-result" of BENCHMARKS.md (``--print-only``: only prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from trees import ROOT, checked_out

KEY = "sk-bench-0123456789abcdef"

_LIBRARY = """
import time
from batch_stream_openai import OpenAIRequest, stream_batch
requests = [OpenAIRequest("s", f"q{i}", model="gpt-4o-mini", api="chat") for i in range(100)]
for _ in stream_batch(requests, max_concurrency=50, base_url=URL, api_key=KEY):
    print(time.monotonic(), flush=True)
    break
"""
_SDK_AIOHTTP = """
import asyncio, time
import openai

async def main():
    client = openai.AsyncOpenAI(base_url=URL, api_key=KEY, max_retries=0,
                                http_client=openai.DefaultAioHttpClient())
    async def one(i):
        return await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}])
    for _ in asyncio.as_completed([one(i) for i in range(100)]):
        await _
        print(time.monotonic(), flush=True)
        break
    await client.close()
asyncio.run(main())
"""
_RAW_AIOHTTP = """
import asyncio, json, time
import aiohttp

async def main():
    headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(i):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
            async with session.post(URL + "/chat/completions", data=json.dumps(body)) as r:
                return await r.json()
        for _ in asyncio.as_completed([one(i) for i in range(100)]):
            await _
            print(time.monotonic(), flush=True)
            break
asyncio.run(main())
"""
_WARM = """
import time
from batch_stream_openai import BatchPool, OpenAIRequest, stream_batch
requests = [OpenAIRequest("s", f"q{i}", model="gpt-4o-mini", api="chat") for i in range(100)]
time.sleep(1.0)  # a notebook: the library was imported a while ago
called = time.time()
start = time.monotonic()
for _ in stream_batch(requests, max_concurrency=50, base_url=URL, api_key=KEY):
    warm = time.monotonic() - start
    break
with BatchPool(max_concurrency=50, base_url=URL, api_key=KEY) as pool:
    pool.run(requests[:10])
    start = time.monotonic()
    for _ in pool.stream(requests):
        again = time.monotonic() - start
        break
print(warm, again, called, flush=True)
"""
_SCENARIO_A = """
import time
from batch_stream_openai import OpenAIRequest, run_batch
requests = [OpenAIRequest("s", f"q{i}", model="gpt-4o-mini", api="chat") for i in range(5000)]
start = time.monotonic()
run_batch(requests, max_concurrency=200, base_url=URL, api_key=KEY)
print(time.monotonic() - start, flush=True)
"""
_SCENARIO_A_RAW = """
import asyncio, json, time
import aiohttp

async def main():
    headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
    room = asyncio.Semaphore(200)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        async def one(i):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
            async with room, session.post(URL + "/chat/completions", data=json.dumps(body)) as r:
                return await r.json()
        await asyncio.gather(*(one(i) for i in range(5000)))
start = time.monotonic()
asyncio.run(main())
print(time.monotonic() - start, flush=True)
"""


# What is imported before the first request: by the fork server (every worker's code),
# and by the parent (`stream_batch`).
_IMPORTS = {
    "imports of the fork server (preload)": "batch_stream_openai._backends.preload",
    "imports of the parent (the api)": "batch_stream_openai.api",
}


def _program(text: str, url: str) -> str:
    return f"URL = {url!r}\nKEY = {KEY!r}\n" + textwrap.dedent(text)


def _run(program: str, tree: Path | None) -> list[float]:
    """Launch `program` in a fresh interpreter (the library from `tree`); what it printed,
    as numbers; a lone timestamp becomes the seconds since the launch."""
    env = None
    if tree is not None:
        env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    start = time.monotonic()
    # In the tree's own folder: ``python -c`` puts the working directory first on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        check=True,
    )
    numbers = [float(x) for x in done.stdout.split()]
    return [numbers[0] - start] if len(numbers) == 1 and numbers[0] > start else numbers


def _fresh(program: str, tree: Path | None, server: Any) -> tuple[float, float]:
    """Seconds from launching `program` to its first request reaching `server`, and to
    its first result (one clock: the machine's)."""
    server.reset()
    launched = time.time()
    (first_result,) = _run(program, tree)
    return min(r.received_at for r in server.requests()) - launched, first_result


def _import_seconds(module: str, tree: Path) -> float:
    """Seconds `python -X importtime` gives importing `module` (and all it imports) from
    `tree` in a fresh interpreter (import time only: what the fork server and the parent
    pay before the first request)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        cwd=tree,
        check=True,
    )
    line = next(x for x in done.stderr.splitlines() if x.rstrip().endswith(f"| {module}"))
    return int(line.split("|")[1]) / 1e6


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _breakdown(median: dict[str, float]) -> str:
    """The cold path of this tree in words, from the medians."""
    mine = {label.removesuffix(", this tree"): value for label, value in median.items()}
    return (
        "The cold path of this tree, medians: a fresh `python -c` has the first request on "
        f"the wire after {mine['fresh: first request sent, stream_batch']:.2f} s and its "
        f"result after {mine['fresh: first result, stream_batch']:.2f} s; of that, the "
        f"parent's imports take {mine['imports of the parent (the api)']:.2f} s and the fork "
        "server's (every worker's code, started on the library's first use so that they "
        f"overlap the caller's) {mine['imports of the fork server (preload)']:.2f} s; the rest "
        "is the interpreter's start, forking a worker and its first connection. In a warm "
        f"interpreter the first request leaves {mine['warm: first request sent']:.2f} s after "
        "the call."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare with (e.g. HEAD~3)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--print-only", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from batch_stream_openai.testing import FakeOpenAIServer

    trees = {"this tree": ROOT}
    figures: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        if args.baseline:
            trees = {f"baseline {args.baseline}": stack.enter_context(checked_out(args.baseline))}
            trees["this tree"] = ROOT
        server = stack.enter_context(FakeOpenAIServer())
        url = server.base_url
        for run in range(args.runs):
            fresh: dict[str, tuple[str, Path | None]] = {
                f"stream_batch, {label}": (_LIBRARY, tree) for label, tree in trees.items()
            }
            fresh["asyncio + SDK (aiohttp transport)"] = (_SDK_AIOHTTP, None)
            fresh["raw aiohttp loop"] = (_RAW_AIOHTTP, None)
            for label, (program, tree) in fresh.items():
                sent, first = _fresh(_program(program, url), tree, server)
                figures.setdefault(f"fresh: first request sent, {label}", []).append(sent)
                figures.setdefault(f"fresh: first result, {label}", []).append(first)
            for label, tree in trees.items():
                for what, module in _IMPORTS.items():
                    figures.setdefault(f"{what}, {label}", []).append(_import_seconds(module, tree))
                server.reset()
                warm, again, called = _run(_program(_WARM, url), tree)
                sent = min(r.received_at for r in server.requests()) - called
                figures.setdefault(f"warm: first request sent, {label}", []).append(sent)
                figures.setdefault(f"warm: first result, {label}", []).append(warm)
                figures.setdefault(f"built pool, next batch, {label}", []).append(again)
            print(
                f"run {run + 1}: {json.dumps({k: v[-1] for k, v in figures.items()})}",
                file=sys.stderr,
            )
        server.configure(latency=0.1)
        scenario_a: dict[str, tuple[str, Path | None]] = {
            label: (_SCENARIO_A, tree) for label, tree in trees.items()
        }
        scenario_a["raw aiohttp loop"] = (_SCENARIO_A_RAW, None)
        for _ in range(min(args.runs, 3)):
            for label, (program, tree) in scenario_a.items():
                figures.setdefault(f"scenario A (ideal 2.5 s), {label}", []).extend(
                    _run(_program(program, url), tree)
                )
    command = " ".join(["python scripts/bench_first_result.py", *sys.argv[1:]])
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rows = [f"| {label} | {_cell(values)} |" for label, values in figures.items()]
    median = {label: statistics.median(values) for label, values in figures.items()}
    section = "\n".join(
        [
            "## D2. Time to first result",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}, library at git `{revision}`. "
            "Each figure is a fresh process against one bundled server (zero latency, 100 "
            "requests at concurrency 50, except scenario A); runs alternate; seconds, median "
            "(min-max) of the runs.",
            "",
            "| what | seconds |",
            "|---|---|",
            *rows,
            "",
            _breakdown(median),
        ]
    )
    print(section)
    if not args.print_only:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmarks_md import save_section

        save_section("first-result", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
