"""`RunStats`: what a run's output file says of it, added up for a person to read.

Each output line the command line writes carries ``x_stats`` (when it was written, its
latency, attempts, model, tokens, cost, cache hit, Batch API job); the runs that wrote a
file leave one line each in its sidecar, ``OUTPUT.runs.jsonl`` (start, end, what the
cache saved). `RunStats.read` adds them up in one pass, keeping two floats per line for
the charts; ``str()`` is the compact text summary, `to_html` the picture
(`charts.py`). Output files without ``x_stats`` (OpenAI's own) give counts, tokens and
errors without times.
"""

from __future__ import annotations

import heapq
import json
import statistics
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._wire.answers import usage_of
from ..results import BatchSummary, Result
from .jsonl import error_object, line_stats

__all__ = ["FailedLine", "ModelTotals", "RunStats", "note_run", "runs_path"]

_SLOWEST = 10  # requests listed as the slowest
_FAILED = 50  # failed requests listed (the first ones)


def runs_path(output_path: Path) -> Path:
    """The sidecar of an output file: one line per run that wrote it."""
    return output_path.with_name(output_path.name + ".runs.jsonl")


def note_run(output_path: Path, started_at: float, summary: BatchSummary) -> None:
    """Append the line of a run that ends now (started at `started_at`, epoch seconds)
    to the output's sidecar."""
    run = {
        "started_at": round(started_at, 3),
        "ended_at": round(time.time(), 3),
        "ok": summary.ok,
        "failed": summary.failed,
        "retries": summary.retries,
        "cost_usd": summary.cost_usd,
        "cached": summary.cached,
        "saved_usd": summary.saved_usd,
    }
    with runs_path(output_path).open("a", encoding="utf-8") as sidecar:
        sidecar.write(json.dumps(run) + "\n")


@dataclass
class ModelTotals:
    """Requests, tokens and spend of one model."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class FailedLine:
    """A request that ended in an error: its ``custom_id``, the error and its attempts."""

    custom_id: str
    error: str
    message: str
    attempts: int


@dataclass
class RunStats:
    """The figures of the runs that wrote one output file.

    Example:

    >>> stats = RunStats()
    >>> stats.add_line({"custom_id": "q1", "response": {"status_code": 200, "body": {}},
    ...     "x_stats": {"at": 100.0, "latency_s": 0.5, "attempts": 2, "model": "m",
    ...                 "tokens": [10, 3], "cost_usd": 0.001}})
    >>> stats.ok, stats.retries, stats.models["m"].output_tokens
    (1, 1, 3)

    Parameters:
        requests: output lines read.
        ok: of those, answers; failed: errors (by type in `errors`).
        retries: attempts after each request's first (a hedge is none).
        cached: answers from the response cache; saved_usd: what they cost when paid
            for (from the runs' sidecar).
        cost_usd: spend; models: requests, tokens and spend by model.
        finished_at, latency_s: each timed line's epoch seconds at its end and latency.
        error_times: by error type, the epoch seconds at which such errors ended.
        attempts: requests by their number of attempts.
        slowest: the slowest requests, (latency, custom_id, attempts), slowest first.
        failures: the first failed requests.
        jobs: Batch API jobs: id -> [first send, last answer, lines].
        runs: the runs' (start, end) epoch seconds, from the sidecar (`wall_s` adds them
            up).
    """

    requests: int = 0
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    cached: int = 0
    saved_usd: float = 0.0
    cost_usd: float = 0.0
    models: dict[str, ModelTotals] = field(default_factory=dict)
    finished_at: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    error_times: dict[str, array[float]] = field(default_factory=dict)
    attempts: Counter[int] = field(default_factory=Counter)
    slowest: list[tuple[float, str, int]] = field(default_factory=list)
    failures: list[FailedLine] = field(default_factory=list)
    jobs: dict[str, list[float]] = field(default_factory=dict)
    runs: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def read(cls, output_path: str | Path) -> RunStats:
        """The figures of `output_path` (and its sidecar, if there is one).

        Raises `ValueError` naming the line that is not JSON.
        """
        path = Path(output_path)
        stats = cls()
        for number, line in _json_lines(path):
            try:
                stats.add_line(line)
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"{path}:{number}: not a Batch API output line") from None
        sidecar = runs_path(path)
        if sidecar.exists():
            for _, run in _json_lines(sidecar):
                stats.add_run(run)
        return stats

    def add_line(self, line: dict[str, Any]) -> None:
        """Count one Batch API output line."""
        stats: dict[str, Any] = line.get("x_stats") or {}
        error: dict[str, Any] | None = line.get("error")
        custom_id = str(line.get("custom_id"))
        attempts = int(stats.get("attempts") or (error or {}).get("attempts") or 1)
        self.requests += 1
        self.attempts[attempts] += 1
        self.retries += max(0, attempts - 1 - bool(stats.get("hedged")))  # a hedge is none
        self._count_spend(line, stats)
        timed = "at" in stats and "latency_s" in stats and not stats.get("cached")
        at, latency = (float(stats["at"]), float(stats["latency_s"])) if timed else (0.0, 0.0)
        if timed:  # a cache hit took no time, and its job (if any) is an earlier run's
            self._count_time(custom_id, at, latency, attempts)
            if batch_id := stats.get("batch_id"):
                self._count_job(str(batch_id), at - latency, at)
        if error is None:
            self.ok += 1
            self.cached += bool(stats.get("cached"))
            return
        kind = str(error.get("type") or error.get("code") or "error")
        self.failed += 1
        self.errors[kind] += 1
        if timed:
            self.error_times.setdefault(kind, array("d")).append(at)
        if len(self.failures) < _FAILED:
            message = str(error.get("message") or "")
            self.failures.append(FailedLine(custom_id, kind, message, attempts))

    def add_result(self, result: Result, custom_id: str | None = None) -> None:
        """Count one result as it arrives, from ``stream_batch(..., return_results=True)``
        (its index names it unless `custom_id` does); `to_html` then draws the stream."""
        error = None if result.error is None else error_object(result.error, result.attempts)
        name = str(result.index) if custom_id is None else custom_id
        self.add_line({"custom_id": name, "error": error, "x_stats": line_stats(result)})

    def add_run(self, run: dict[str, Any]) -> None:
        """Count one run's sidecar line."""
        if run.get("started_at") is not None and run.get("ended_at") is not None:
            self.runs.append((float(run["started_at"]), float(run["ended_at"])))
        self.saved_usd += float(run.get("saved_usd") or 0.0)

    @property
    def wall_s(self) -> float:
        """Seconds the runs took (from the sidecar: the pauses between runs left out), or
        from the first request's send to the last answer."""
        if self.runs:
            return sum(end - start for start, end in self.runs)
        if not self.finished_at:
            return 0.0
        first = min(
            at - latency for at, latency in zip(self.finished_at, self.latency_s, strict=True)
        )
        return max(self.finished_at) - first

    def latency_percentiles(self) -> dict[str, float]:
        """p50, p95 and p99 of the timed requests' latency ({} when none is timed)."""
        if len(self.latency_s) < 2:
            return {"p50": self.latency_s[0]} if self.latency_s else {}
        cuts = statistics.quantiles(self.latency_s, n=100, method="inclusive")
        return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}

    def headline(self) -> dict[str, str]:
        """The numbers a person asks first: requests, ok, failed, cost, time."""
        rate = self.requests / self.wall_s if self.wall_s else 0.0
        return {
            "requests": f"{self.requests:,}",
            "ok": f"{self.ok:,}",
            "failed": f"{self.failed:,}",
            "cost": f"${self.cost_usd:,.4f}",
            "time": _duration(self.wall_s) + (f" ({rate:,.1f}/s)" if rate else ""),
        }

    def __str__(self) -> str:
        head = self.headline()
        lines = [", ".join(f"{name} {value}" for name, value in head.items())]
        if self.cached:
            lines.append(f"cache hits {self.cached:,} (saved ${self.saved_usd:,.4f})")
        if cuts := self.latency_percentiles():
            latency = ", ".join(f"{name} {value:.2f} s" for name, value in cuts.items())
            lines.append(f"latency {latency}; retries {self.retries:,}")
        for model, totals in sorted(self.models.items()):
            lines.append(
                f"{model}: {totals.requests:,} requests, {totals.input_tokens:,} tokens in, "
                f"{totals.output_tokens:,} out, ${totals.cost_usd:,.4f}"
            )
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {n:,}" for k, n in self.errors.most_common()))
        if self.slowest:
            slow = sorted(self.slowest, reverse=True)[:3]
            lines.append("slowest: " + ", ".join(f"{c} {s:.2f} s ({a} att.)" for s, c, a in slow))
        if self.jobs:
            lines.append(f"Batch API jobs: {len(self.jobs)}")
        return "\n".join(lines)

    def to_html(self, title: str = "batch-stream-openai run") -> str:
        """The run drawn as one self-contained HTML page (needs the ``[report]`` extra)."""
        from .charts import html_page

        return html_page(self, title)

    def _count_spend(self, line: dict[str, Any], stats: dict[str, Any]) -> None:
        body = ((line.get("response") or {}).get("body")) or {}
        model = stats.get("model") or body.get("model")
        tokens = stats.get("tokens")
        if tokens is None and (usage := usage_of(body)) is not None:  # OpenAI's own lines
            tokens = (usage.input_tokens, usage.output_tokens)
        cost = float(stats.get("cost_usd") or 0.0)
        self.cost_usd += cost
        if not model:  # an error without an answer: no model said, nothing spent
            return
        totals = self.models.get(model)
        if totals is None:
            totals = self.models[model] = ModelTotals()
        totals.requests += 1
        if tokens:
            totals.input_tokens += int(tokens[0])
            totals.output_tokens += int(tokens[1])
        totals.cost_usd += cost

    def _count_time(self, custom_id: str, at: float, latency: float, attempts: int) -> None:
        self.finished_at.append(at)
        self.latency_s.append(latency)
        entry = (latency, custom_id, attempts)
        if len(self.slowest) < _SLOWEST:
            heapq.heappush(self.slowest, entry)
        elif entry > self.slowest[0]:
            heapq.heapreplace(self.slowest, entry)

    def _count_job(self, batch_id: str, sent: float, answered: float) -> None:
        job = self.jobs.get(batch_id)
        if job is None:
            self.jobs[batch_id] = [sent, answered, 1]
            return
        job[0], job[1], job[2] = min(job[0], sent), max(job[1], answered), job[2] + 1


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except ValueError:
                if raw.endswith(b"\n"):
                    raise ValueError(f"{path}:{number}: not a JSON line") from None
                return  # a torn last line: a run was killed while writing it


def _duration(seconds: float) -> str:
    """``42.0 s``, ``12m 31s``, ``2h 05m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
