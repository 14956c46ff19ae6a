"""`batch-stream-openai report`: the figures of a real run's output file, as text and as a
self-contained HTML page (drawn in headless Chromium where Debian's ``chromium`` is)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch_stream_openai.files import RunStats
from batch_stream_openai.files.stats import runs_path
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY, jobs_of

pytestmark = pytest.mark.timeout(120)

USERS = [f"q{i}" for i in range(60)]
USERS[3] += " [[status=503 times=1]]"  # answered on its second attempt
USERS[5] += " [[status=503 times=2]]"  # on its third
USERS[7] += " [[status=400]]"  # fails
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batch_stream_openai.cli", *args]
    env = {"OPENAI_API_KEY": TEST_API_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)


def _run(fake: FakeOpenAIServer, folder: Path, users: list[str], *flags: str) -> Path:
    """A command-line run of one prompt line per user prompt; its output file."""
    source, output = folder / "in.jsonl", folder / "out.jsonl"
    lines = (
        {"custom_id": f"c{i}", "system_prompt": "s", "user_prompt": u} for i, u in enumerate(users)
    )
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    command = ["run", str(source), "-o", str(output), "--base-url", fake.base_url]
    done = _cli(*command, "--model", "gpt-4o-mini", *flags)
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture(scope="module")
def run(server: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A command-line run of `USERS` (its output file and what the server saw)."""
    server.reset()
    server.configure(latency=0.02, capacity=0, queue_limit=0)
    folder = tmp_path_factory.mktemp("report")
    output = _run(server, folder, USERS, "--workers", "1", "--max-concurrency", "8")
    records = [json.loads(line) for line in output.read_text().splitlines()]
    return {"output": output, "records": records, "attempts": server.stats().requests}


def test_the_figures_are_those_of_the_run(run: dict[str, Any]) -> None:
    stats = RunStats.read(run["output"])
    assert (stats.requests, stats.ok, stats.failed) == (60, 59, 1)
    assert stats.retries == run["attempts"] - 60 == 3
    assert stats.attempts == {1: 58, 2: 1, 3: 1}
    assert stats.errors == {"APIError": 1}
    assert [f.custom_id for f in stats.failures] == ["c7"]
    usage = [r["response"]["body"]["usage"] for r in run["records"] if r["error"] is None]
    model = stats.models["gpt-4o-mini"]
    assert model.input_tokens == sum(u["input_tokens"] for u in usage)
    assert model.output_tokens == sum(u["output_tokens"] for u in usage)
    assert model.cost_usd == pytest.approx(stats.cost_usd) and stats.cost_usd > 0
    assert len(stats.finished_at) == 60 and min(stats.latency_s) > 0
    slowest = sorted(stats.slowest, reverse=True)  # (a retry's wait is random: no order)
    assert len(slowest) == 10 and slowest[0][0] == max(stats.latency_s)
    assert all(tries == {"c3": 2, "c5": 3}.get(name, 1) for _, name, tries in slowest)
    assert len(stats.runs) == 1 and stats.runs[0][0] <= stats.runs[0][1]


def test_the_command_prints_the_headline_and_writes_a_page_that_needs_no_network(
    run: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    done = _cli("report", str(run["output"]), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("requests 60, ok 59, failed 1, cost $")
    assert "latency p50" in done.stdout and "errors: APIError 1" in done.stdout
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", html)  # offline
    assert html.count('class="plotly-graph-div"') == 6  # no Batch API jobs: no timeline
    assert "c7" in html  # the failed request's row


def test_lines_without_stats_still_count_and_a_torn_last_line_is_left(tmp_path: Path) -> None:
    """OpenAI's own output files have no ``x_stats``; a killed run may leave half a line."""
    body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": body}, "error": None}
    failed = {"custom_id": "b", "response": None, "error": {"code": "server_error"}}
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps(ok) + "\n" + json.dumps(failed) + "\n" + '{"custom_id": "c"')
    stats = RunStats.read(output)
    assert (stats.requests, stats.ok, stats.failed, stats.errors) == (2, 1, 1, {"server_error": 1})
    assert stats.models["gpt-4o-mini"].input_tokens == 5 and not stats.finished_at
    assert str(stats).startswith("requests 2, ok 1, failed 1")
    assert not runs_path(output).exists()


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text('{"custom_id": "a", "error": null}\nnot json\n')
    done = _cli("report", str(output))
    assert done.returncode == 2 and f"{output}:2: not a JSON line" in done.stderr


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_page_draws_its_charts_in_headless_chromium(
    run: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(RunStats.read(run["output"]).to_html())
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=90).stdout
    # plotly draws each chart as an SVG with its bars or lines in it
    assert dom.count('class="main-svg"') >= 6, dom[:500]
    assert dom.count('class="point"') + dom.count('class="trace scatter') > 0


def test_a_stream_is_counted_as_its_results_arrive(fake: FakeOpenAIServer) -> None:
    from batch_stream_openai import OpenAIRequest, stream_batch

    requests = [OpenAIRequest("s", u, model="gpt-4o-mini") for u in ["a", "b [[status=400]]"]]
    stats = RunStats()
    options = {"base_url": fake.base_url, "api_key": TEST_API_KEY, "workers": 1}
    for _, result in stream_batch(requests, return_results=True, **options):
        stats.add_result(result)
    assert (stats.ok, stats.failed, [f.custom_id for f in stats.failures]) == (1, 1, ["1"])
    assert len(stats.latency_s) == 2 and stats.models["gpt-4o-mini"].output_tokens > 0


def test_a_batch_api_run_shows_its_jobs_and_how_long_each_line_waited(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    output = _run(
        fake, tmp_path, [f"q{i}" for i in range(20)], "--mode", "batch", "--poll-interval", "0.05"
    )
    stats = RunStats.read(output)
    assert stats.ok == 20 and sum(lines for _, _, lines in stats.jobs.values()) == 20
    assert set(stats.jobs) == {job["id"] for job in jobs_of(fake)}
    assert min(stats.latency_s) > 0  # from the job's creation to its answer
    assert stats.to_html().count('class="plotly-graph-div"') == 6  # jobs, no errors chart


@pytest.mark.fast
def test_cache_hits_hedges_and_resumed_runs_are_counted_for_what_they_are() -> None:
    def line(custom_id: str, at: float, **stats: Any) -> dict[str, Any]:
        body = {"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return {
            "custom_id": custom_id,
            "response": {"status_code": 200, "body": body},
            "error": None,
            "x_stats": {"at": at, "latency_s": 2.0, "attempts": 1, **stats},
        }

    stats = RunStats()
    stats.add_line(line("a", 100.0, batch_id="batch_1"))
    stats.add_line(line("b", 5000.0, attempts=2, hedged=True))  # a hedge, not a retry
    stats.add_line(line("c", 9000.0, latency_s=0.0, cached=True, batch_id="batch_1"))
    assert (stats.ok, stats.cached, stats.retries, stats.attempts[2]) == (3, 1, 0, 1)
    assert list(stats.latency_s) == [2.0, 2.0]  # the cache hit took no time
    assert stats.jobs == {"batch_1": [98.0, 100.0, 1]}  # nor is it the earlier job's line
    stats.add_run({"started_at": 97.0, "ended_at": 101.0})
    stats.add_run({"started_at": 4997.0, "ended_at": 5001.0})
    assert stats.wall_s == 8.0  # the two runs, not the night between them


def test_a_line_that_is_json_but_no_output_line_is_named(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text('{"custom_id": "a", "error": null}\n["not", "a", "line"]\n')
    done = _cli("report", str(output))
    assert done.returncode == 2 and f"{output}:2: not a Batch API output line" in done.stderr
