"""`batch-stream-openai report` on a big output file, beside just parsing its lines.

Usage: ``python scripts/bench_output_report.py [--lines 100000] [--runs 3]``

Writes an output file of N lines as the command line writes them (`output_line`: a Chat
Completions body and ``x_stats`` each, 1% of them errors, finished over an hour), then
times, each in a fresh process (peak RSS is that process's):

- baseline: read the file and ``json.loads`` every line (what any reader of it does);
- ``RunStats.read``: the text report's figures;
- ``RunStats.read(...).to_html()``: the HTML page too (plotly).

Medians of `--runs`, ratios against the baseline of the same invocation. Writes section
"output-report" of BENCHMARKS.md (``--print-only``: only prints it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trees import ROOT

STEPS = {
    "baseline: json.loads of every line": (
        "import json\nfor raw in open(path, 'rb'):\n    json.loads(raw)"
    ),
    "RunStats.read (text report)": (
        "from batch_stream_openai.files import RunStats\nRunStats.read(path)"
    ),
    "RunStats.read + to_html (HTML page)": (
        "from batch_stream_openai.files import RunStats\nRunStats.read(path).to_html()"
    ),
}
TIMED = """
import resource, sys, time
path = sys.argv[1]
started = time.perf_counter()
{step}
wall = time.perf_counter() - started
print(wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_output(path: Path, lines: int) -> None:
    """`lines` output lines as `run_batch_file` writes them, finished over an hour."""
    sys.path.insert(0, str(ROOT))
    from batch_stream_openai.errors import APIError
    from batch_stream_openai.files.jsonl import output_line
    from batch_stream_openai.results import Result, Usage

    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 100, "total_tokens": 220},
    }
    with path.open("wb") as out:
        for i in range(lines):
            if i % 100 == 7:
                error = APIError("Injected fault: HTTP 503", status_code=503)
                result = Result(i, error=error, attempts=3, latency_s=2.0)
            else:
                usage = Usage(120, 100)
                result = Result(
                    i,
                    text="x" * 400,
                    usage=usage,
                    latency_s=0.2 + (i % 50) / 100,
                    attempts=1,
                    model="gpt-4o-mini",
                    status_code=200,
                    body=body,
                    cost_usd=7.8e-05,
                )
            record = json.loads(output_line(f"c{i}", "0123456789abcdef", result))
            record["x_stats"]["at"] = 1_765_000_000.0 + 3600.0 * i / lines
            out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")


def timed(step: str, path: Path) -> tuple[float, int]:
    """(seconds, peak RSS in KB) of `step` in a fresh process."""
    code = TIMED.format(step=step)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env=env,
    )
    wall, rss = done.stdout.split()
    return float(wall), int(rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--print-only", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.jsonl"
        write_output(path, args.lines)
        size_mb = path.stat().st_size / 2**20
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in STEPS}
        for run in range(args.runs):
            for name, step in STEPS.items():  # alternating, so the noise falls on each
                runs[name].append(timed(step, path))
                print(f"run {run + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    medians = {
        name: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r))
        for name, r in runs.items()
    }
    base_wall, base_rss = next(iter(medians.values()))
    rows = [
        f"| {name} | {wall:.2f} s ({wall / base_wall:.1f}x) | {rss / 1024:.0f} MB "
        f"({rss / base_rss:.1f}x) |"
        for name, (wall, rss) in medians.items()
    ]
    command = " ".join(["python scripts/bench_output_report.py", *sys.argv[1:]])
    section = "\n".join(
        [
            "## R. The report of a big output file",
            "",
            f"`{command}` on {time.strftime('%Y-%m-%d')}: an output file of "
            f"{args.lines:,} lines ({size_mb:.0f} MB) as the command line writes them; "
            "each step in a fresh process, medians of "
            f"{args.runs} runs alternating between the steps, ratios against the baseline "
            "(parsing every line and nothing more). Peak RSS is the whole process's, "
            "the interpreter included.",
            "",
            "| step | wall time | peak RSS |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(section)
    if not args.print_only:
        from benchmarks_md import save_section

        save_section("output-report", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
