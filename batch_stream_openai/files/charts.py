"""`RunStats` drawn: one self-contained HTML page of plotly charts (the ``[report]`` extra).

The page carries plotly's JavaScript inline, so it opens offline, from a file, with no
server and nothing fetched. Charts: completions per second and latency percentiles over
time, a latency histogram, errors by type over time, requests by attempts, tokens and
spend by model, Batch API jobs on a timeline; tables: the headline numbers, the slowest
and the failed requests.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .stats import RunStats

__all__ = ["html_page"]

_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
_MAX_BINS = 150


def html_page(stats: RunStats, title: str) -> str:
    """The page: the headline numbers as text, then every chart and table."""
    plotly = _plotly()
    figures = [figure for figure in _figures(stats) if figure is not None]
    charts = [
        figure.to_html(full_html=False, include_plotlyjs=False, default_width="100%")
        for figure in figures
    ]
    head = "".join(
        f"<div class='n'><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
        for k, v in stats.headline().items()
    )
    tables = _table(
        "Slowest requests",
        ("custom_id", "latency (s)", "attempts"),
        [(c, f"{s:.3f}", str(a)) for s, c, a in sorted(stats.slowest, reverse=True)],
    ) + _table(
        "Failed requests",
        ("custom_id", "error", "message", "attempts"),
        [(f.custom_id, f.error, f.message[:200], str(f.attempts)) for f in stats.failures],
    )
    return _PAGE.format(
        title=html.escape(title),
        script=plotly.offline.get_plotlyjs(),
        head=head,
        summary=html.escape(str(stats)),
        charts="\n".join(f"<section class='chart'>{c}</section>" for c in charts),
        tables=tables,
    )


def _plotly() -> Any:
    try:
        import plotly.offline
    except ImportError:
        raise ImportError(
            "an HTML report needs plotly: pip install 'batch-stream-openai[report]'"
        ) from None
    return plotly


def _figures(stats: RunStats) -> list[Any]:
    bins = _Bins(stats.finished_at)
    return [
        _throughput(stats, bins),
        _latency_over_time(stats, bins),
        _latency_histogram(stats),
        _errors_over_time(stats, bins),
        _attempts(stats),
        _models(stats),
        _jobs(stats),
    ]


class _Bins:
    """Time bins of a nice width (1 s, 2 s, 5 s ... 1 day) over the timed lines."""

    def __init__(self, times: Sequence[float]) -> None:
        self.start = min(times) if times else 0.0
        span = (max(times) - self.start) if times else 0.0
        self.width = next((s for s in _STEPS if span / s <= _MAX_BINS), _STEPS[-1])
        self.count = int(span // self.width) + 1

    def of(self, at: float) -> int:
        return max(0, min(int((at - self.start) // self.width), self.count - 1))

    def axis(self) -> list[datetime]:
        return [datetime.fromtimestamp(self.start + i * self.width, UTC) for i in range(self.count)]


def _figure(title: str, x: str, y: str) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, height=360, margin={"t": 50, "b": 40}
    )
    return figure


def _throughput(stats: RunStats, bins: _Bins) -> Any:
    if not stats.finished_at:
        return None
    import plotly.graph_objects as go

    counts = [0] * bins.count
    for at in stats.finished_at:
        counts[bins.of(at)] += 1
    figure = _figure(f"Completions per second ({bins.width} s bins)", "time (UTC)", "per second")
    figure.add_trace(go.Bar(x=bins.axis(), y=[c / bins.width for c in counts], name="done"))
    return figure


def _latency_over_time(stats: RunStats, bins: _Bins) -> Any:
    if len(stats.finished_at) < 2:
        return None
    import plotly.graph_objects as go

    groups: list[list[float]] = [[] for _ in range(bins.count)]
    for at, latency in zip(stats.finished_at, stats.latency_s, strict=True):
        groups[bins.of(at)].append(latency)
    figure = _figure("Latency percentiles over time", "time (UTC)", "seconds")
    axis = bins.axis()
    for name, share in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        values = [_percentile(sorted(g), share) if g else None for g in groups]
        figure.add_trace(go.Scatter(x=axis, y=values, name=name, mode="lines+markers"))
    return figure


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def _latency_histogram(stats: RunStats) -> Any:
    if not stats.latency_s:
        return None
    import plotly.graph_objects as go

    figure = _figure("Latency", "seconds", "requests (log scale)")
    figure.update_yaxes(type="log")  # the tail is what a person looks for
    figure.add_trace(go.Histogram(x=list(stats.latency_s), nbinsx=60, name="requests"))
    return figure


def _errors_over_time(stats: RunStats, bins: _Bins) -> Any:
    if not stats.errors:
        return None
    import plotly.graph_objects as go

    figure = _figure("Errors by type", "time (UTC)", "errors")
    figure.update_layout(barmode="stack", showlegend=True)
    if not stats.error_times:  # untimed lines: totals only
        names = list(stats.errors)
        figure.add_trace(go.Bar(x=names, y=[stats.errors[n] for n in names], name="errors"))
        return figure
    for kind, times in sorted(stats.error_times.items()):
        counts = [0] * bins.count
        for at in times:
            counts[bins.of(at)] += 1
        figure.add_trace(go.Bar(x=bins.axis(), y=counts, name=kind))
    return figure


def _attempts(stats: RunStats) -> Any:
    if not stats.requests:
        return None
    import plotly.graph_objects as go

    tries = sorted(stats.attempts)
    title = f"Requests by attempts ({stats.retries:,} retries)"
    figure = _figure(title, "attempts", "requests (log scale)")
    figure.update_yaxes(type="log")
    figure.add_trace(go.Bar(x=[str(t) for t in tries], y=[stats.attempts[t] for t in tries]))
    return figure


def _models(stats: RunStats) -> Any:
    if not stats.models:
        return None
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = sorted(stats.models)
    totals = [stats.models[n] for n in names]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Tokens", "Spend (USD)"))
    figure.add_trace(go.Bar(x=names, y=[t.input_tokens for t in totals], name="input"), 1, 1)
    figure.add_trace(go.Bar(x=names, y=[t.output_tokens for t in totals], name="output"), 1, 1)
    figure.add_trace(go.Bar(x=names, y=[t.cost_usd for t in totals], name="USD"), 1, 2)
    figure.update_layout(title="By model", height=360, barmode="group")
    return figure


def _jobs(stats: RunStats) -> Any:
    if not stats.jobs:
        return None
    import plotly.graph_objects as go

    figure = _figure("Batch API jobs", "time (UTC)", "job")
    for batch_id, (sent, answered, lines) in sorted(stats.jobs.items(), key=lambda j: j[1][0]):
        start, end = (datetime.fromtimestamp(t, UTC) for t in (sent, answered))
        figure.add_trace(
            go.Scatter(
                x=[start, end],
                y=[batch_id, batch_id],
                mode="lines",
                line={"width": 12},
                name=f"{batch_id} ({int(lines):,} lines)",
            )
        )
    return figure


def _table(title: str, columns: Sequence[str], rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<script type="text/javascript">{script}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.head {{ display: flex; gap: 2em; margin: 1em 0; }}
.n b {{ display: block; font-size: 1.6em; }} .n span {{ color: #666; }}
.chart {{ margin: 1em 0; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head>
<body><h1>{title}</h1>
<div class="head">{head}</div>
<pre>{summary}</pre>
{charts}
{tables}
</body></html>
"""
