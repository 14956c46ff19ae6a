"""The model-based test's long profile: random scenarios for a while, every invariant checked.

    python scripts/model_based.py --minutes 30 [--seed 1]

Draws scenarios from `tests/model.py` (hypothesis, not derandomized: each run explores
others) against one bundled server, for `--minutes`, and prints how many ran, how many
were refused (an option that cannot act), and each failure with its scenario (hypothesis
shrinks it first). Exit 1 when an invariant broke. BENCHMARKS.md reports its last run.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks_md import save_section
from hypothesis import HealthCheck, Phase, given, settings

from batch_stream_openai.testing import FakeOpenAIServer
from tests.model import SECRET_KEY, Scenario, describe, run_scenario, scenarios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None, help="a label for this run's prompts")
    parser.add_argument("--print-only", action="store_true", help="do not write BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bso-model-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "user-cache")
    deadline = time.monotonic() + args.minutes * 60
    counts: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    started = time.monotonic()
    with FakeOpenAIServer(batch_seconds=0.2, prefix_cache=20_000) as server:
        os.environ.update(server.sdk_environment(SECRET_KEY))

        @settings(
            max_examples=20,  # per call: the loop below goes on until the time is up
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(scenario=scenarios())
        def explore(scenario: Scenario) -> None:
            if time.monotonic() > deadline:
                return
            run = sum(counts.values())
            folder = work / f"s{run}"
            folder.mkdir()
            scenario = Scenario(**{**scenario.__dict__, "tag": f"r{run}-{args.seed}"})
            try:
                what = run_scenario(scenario, server, folder)
            except AssertionError as broken:
                raise AssertionError(f"{broken}\n{describe(scenario)}") from broken
            counts["refused" if what == "refused" else scenario.mode] += 1

        while time.monotonic() < deadline:
            try:
                explore()
            except Exception:  # an invariant broke (hypothesis shrank it)
                failures.append(traceback.format_exc(limit=-8))
                counts["failed"] += 1
    minutes = (time.monotonic() - started) / 60
    print(f"{sum(counts.values())} scenarios in {minutes:.1f} min: {dict(counts)}")
    for failure in failures:
        print("-" * 80, failure, sep="\n")
    if not args.print_only:
        save_section("model", report(counts, minutes, " ".join(sys.argv[1:])))
    return 1 if failures else 0


def report(counts: collections.Counter[str], minutes: float, arguments: str) -> str:
    """The BENCHMARKS.md section of this run."""
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    ran = sum(counts.values())
    by_kind = ", ".join(f"{counts[k]} {k}" for k in ("online", "flex", "batch", "refused"))
    return f"""## M. The model-based test, long profile

`python scripts/model_based.py {arguments}` on {time.strftime("%Y-%m-%d")}, library at git
`{revision}`: {ran} generated scenarios in {minutes:.1f} min ({by_kind}: "refused" are
option combinations that cannot act, each checked to be refused before anything is
sent), {counts["failed"]} broke an invariant. Each scenario is a batch of 1-24 requests of
every kind (chat, Responses, pydantic and JSON-schema output, tool calls, embeddings, raw
bodies) with faults (429, 503, dropped connections, stragglers, 400s) under a drawn
combination of cache, mode (in batch mode, a provider: OpenAI, Anthropic, Gemini or
Azure through LiteLLM), journal, max_cost, a dead endpoint, fixed or auto concurrency,
hedge, postprocess, workers, and a crash (a worker SIGKILLed once, or the parent killed
mid-stream and the batch run again); its invariants are listed in
`tests/model.py`. The fast profile (30 fixed scenarios) runs in the test suite."""


if __name__ == "__main__":
    sys.exit(main())
