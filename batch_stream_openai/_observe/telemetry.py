"""OpenTelemetry metrics and spans of one batch, recorded in the parent.

The parent sees every attempt and every result, so it records them all; the workers know
nothing of it. Names follow OpenTelemetry's GenAI semantic conventions:

- ``gen_ai.client.operation.duration`` (s) per attempt and ``gen_ai.client.token.usage``
  (``{token}``, by ``gen_ai.token.type``) per answer, with the spec's buckets and
  attributes (``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``server.address``,
  ``server.port``, ``error.type``);
- the library's own under ``batch_stream_openai.``: results by outcome, retries, hedges,
  spend, and gauges of the requests in flight and waiting, the concurrency limit, the
  Batch API jobs by state and each endpoint's requests in flight and set-aside state (by
  ``server.address`` and ``server.port``; no attribute per request: bounded cardinality);
- a span per batch (``batch_stream_openai.batch``, a child of the caller's current span)
  and a CLIENT span per request under it (``{operation} {model}``, from its first send to
  its result; each attempt an event). Prompts and answers are recorded only when the
  application opts in (``content.py``).

Nothing is imported and nothing recorded unless the application imported OpenTelemetry
and set a global `MeterProvider` or `TracerProvider` before the batch started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..results import BatchSummary, Result
from .content import capture_content, input_messages, output_messages
from .instruments import Instruments, instruments_of, library_version, set_provider
from .names import error_type, outcome_of, provider_of, server_of
from .tally import METER, Labels, Series, State, Tally

__all__ = ["SNAPSHOT_S", "Described", "Telemetry"]

SNAPSHOT_S = 0.5  # how old the gauges a reader sees may be


class Described(Protocol):
    """What the parent keeps of a request (its ledger entry)."""

    operation: str
    model: str
    routed: bool
    payload: bytes  # the pickled request (a cached `Result` when `replay`)
    replay: bool


class Telemetry:
    """The metrics and spans of one batch (`start` makes one only when a provider is set).

    Parameters:
        instruments: the instruments of each application meter provider.
        tallies: what adds the counters up: each provider's, and `metrics_port`'s.
        tracer: the tracer, or None (no spans).
        state: the batch's gauges, read when the metrics are collected.
        attributes: the batch span's attributes (its size, mode, options).
    """

    def __init__(
        self,
        instruments: list[Instruments],
        tallies: list[Tally],
        tracer: Any,
        state: Callable[[], State],
        attributes: Mapping[str, Any],
    ) -> None:
        self._instruments = instruments
        self._tallies = tallies
        self._attributes: dict[tuple[Any, ...], _Attributes] = {}
        self._tracer = tracer
        self._state = state
        self.snapshot = State()  # the gauges, as the loop last took them (`refresh`)
        self._next_snapshot = 0.0
        self._wall = time.time_ns() - time.monotonic_ns()  # monotonic -> epoch
        self._attempts: dict[int, list[tuple[str, dict[str, Any], int]]] = {}  # span events
        self._batch: Any = None
        self._content = tracer is not None and capture_content()  # prompts, answers on spans
        if tracer is not None:
            self._batch = tracer.start_span("batch_stream_openai.batch", attributes=attributes)
        for tally in tallies:
            tally.join(self)

    def refresh(self, now: float) -> None:
        """Take the batch's gauges, at most every `SNAPSHOT_S` (called by the batch's loop,
        on its thread: a reader's thread never touches the dispatcher)."""
        if now >= self._next_snapshot:
            self.snapshot = self._state()
            self._next_snapshot = now + SNAPSHOT_S

    @property
    def traces(self) -> bool:
        """Spans are recorded (each wants the request's whole `Result`)."""
        return self._tracer is not None

    def __repr__(self) -> str:
        tallies, spans = len(self._tallies), self._tracer is not None
        return f"<Telemetry tallies={tallies} spans={spans}>"

    @classmethod
    def start(
        cls,
        state: Callable[[], State],
        describe: Callable[[], Mapping[str, Any]],
        own: Tally | None = None,
    ) -> Telemetry | None:
        """The telemetry of a batch starting now, or None when there is no provider:
        neither the application's (looked up now: one set after the import counts) nor
        the library's `own` (`metrics_port`'s). `describe` gives the batch span's
        attributes (called only when there is a provider)."""
        meters = set_provider("opentelemetry.metrics", "get_meter_provider", "_ProxyMeterProvider")
        tracers = set_provider("opentelemetry.trace", "get_tracer_provider", "ProxyTracerProvider")
        if meters is None and own is None and tracers is None:
            return None
        instruments = [] if meters is None else [instruments_of(meters)]
        tallies = [each.tally for each in instruments] + ([] if own is None else [own])
        tracer = tracers.get_tracer(METER, library_version()) if tracers else None
        return cls(instruments, tallies, tracer, state, describe())

    def attempt(self, index: int, request: Described, url: str, result: Result) -> None:
        """One attempt of `index` ended (at the endpoint `url`) with `result`."""
        error = None if result.error is None else error_type(result.error)
        attributes = self._attributes_of(request, url, result.model or "", error)
        usage = result.usage
        tokens = None if usage is None else (usage.input_tokens, usage.output_tokens)
        for instruments in self._instruments:
            instruments.duration.record(result.latency_s, attributes.duration)
            if tokens is not None:
                for each, count in zip(attributes.tokens, tokens, strict=True):
                    instruments.tokens.record(count, each)
        for tally, series in attributes.series:
            tally.attempt(series, result.latency_s, tokens)
        if self._tracer is not None:
            event: dict[str, Any] = {"batch_stream_openai.duration_s": result.latency_s}
            if error is not None:
                event["error.type"] = error
            self._attempts.setdefault(index, []).append(("attempt", event, time.time_ns()))

    def finished(
        self,
        index: int,
        request: Described | None,
        url: str,
        since: float | None,
        tries: int,
        hedged: bool,
        result: Result,
    ) -> None:
        """`index` is done with `result` (`since`: when it was first sent, monotonic;
        `tries`: its attempts, hedges and failovers not counted; `hedged`: a copy of it
        was sent)."""
        cost = result.cost_usd if result.cost_usd and not result.cached else 0.0
        for tally in self._tallies:
            tally.finished(outcome_of(result), max(tries - 1, 0), hedged, cost)
        if self._tracer is not None:
            self._span(index, request, url, since, result)

    def close(self, summary: BatchSummary, error: BaseException | None) -> None:
        """The batch ended (`error`: what ended it early, if anything)."""
        for tally in self._tallies:
            tally.leave(self)
        if (span := self._batch) is None:
            return
        span.set_attributes(
            {
                "batch_stream_openai.batch.ok": summary.ok,
                "batch_stream_openai.batch.failed": summary.failed,
                "batch_stream_openai.batch.cost_usd": summary.cost_usd,
            }
        )
        if error is not None:
            _failed(span, type(error).__name__)
        span.end()

    def _attributes_of(
        self, request: Described, url: str, model: str, error: str | None
    ) -> _Attributes:
        """The attribute sets of an attempt (made once per distinct request kind, endpoint,
        answering model and error: a few per batch)."""
        key = (request.operation, request.model, request.routed, url, model, error)
        made = self._attributes.get(key)
        if made is None:
            duration = self._common(request, url)
            if model:
                duration["gen_ai.response.model"] = model
            if error is not None:
                duration["error.type"] = error
            made = _Attributes(duration, self._tallies)
            if len(self._attributes) < _DISTINCT:
                self._attributes[key] = made
        return made

    def _common(self, request: Described | None, url: str) -> dict[str, Any]:
        if request is None:  # answered without being sent (the cache)
            return {}
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": request.operation,
            "gen_ai.provider.name": provider_of(request.model, request.routed),
            "gen_ai.request.model": request.model,
        }
        if request.routed:
            attributes["server.address"], attributes["server.port"] = server_of(url)
        return attributes

    def _span(
        self, index: int, request: Described | None, url: str, since: float | None, result: Result
    ) -> None:
        """The request's CLIENT span, from its first send to now, its attempts as events."""
        from opentelemetry import trace

        attributes = self._common(request, url)
        attributes.update(_answer_attributes(index, result))
        if self._content and request is not None and not request.replay:
            attributes["gen_ai.input.messages"] = input_messages(request.payload)
            reasons = attributes.get("gen_ai.response.finish_reasons", [])
            attributes["gen_ai.output.messages"] = output_messages(result, reasons)
        now = time.time_ns()
        start = now if since is None else self._wall + int(since * 1e9)
        operation = attributes.get("gen_ai.operation.name", "chat")
        name = f"{operation} {attributes.get('gen_ai.request.model', '')}"
        span = self._tracer.start_span(
            name.strip(),
            context=trace.set_span_in_context(self._batch),
            kind=trace.SpanKind.CLIENT,
            start_time=start,
            attributes=attributes,
        )
        for event, fields, at in self._attempts.pop(index, ()):
            span.add_event(event, fields, at)
        if result.error is not None:
            _failed(span, error_type(result.error))
        span.end(now)


_DISTINCT = 10_000  # attribute sets kept per batch (past that, each is made anew)


class _Attributes:
    """An attempt's attribute sets, as the SDK takes them (its duration's, its input and
    output tokens'), and the histograms they name in each tally that keeps histograms."""

    __slots__ = ("duration", "series", "tokens")

    def __init__(self, duration: dict[str, Any], tallies: list[Tally]) -> None:
        self.duration = duration
        self.tokens = tuple({**duration, "gen_ai.token.type": kind} for kind in ("input", "output"))
        labels: Labels = tuple(sorted(duration.items()))
        token_labels = tuple(tuple(sorted(each.items())) for each in self.tokens)
        self.series: list[tuple[Tally, Series]] = [
            (tally, tally.series(labels, (token_labels[0], token_labels[1])))
            for tally in tallies
            if tally.histograms
        ]


def _answer_attributes(index: int, result: Result) -> dict[str, Any]:
    """What a request's span says of its answer (never its prompt or text)."""
    attributes: dict[str, Any] = {
        "batch_stream_openai.index": index,
        "batch_stream_openai.cached": result.cached,
        "batch_stream_openai.attempts": result.attempts,
    }
    if result.model:
        attributes["gen_ai.response.model"] = result.model
    if result.response_id:
        attributes["gen_ai.response.id"] = result.response_id
    if (usage := result.usage) is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
    if result.cost_usd is not None:
        attributes["batch_stream_openai.cost_usd"] = result.cost_usd
    if reasons := _finish_reasons(result.body):
        attributes["gen_ai.response.finish_reasons"] = reasons
    return attributes


def _finish_reasons(body: Mapping[str, Any] | None) -> list[str]:
    """Chat Completions' ``finish_reason`` of each choice (the Responses API has none)."""
    choices = body.get("choices") if body else None
    if not isinstance(choices, list):
        return []
    return [
        str(c["finish_reason"]) for c in choices if isinstance(c, dict) and c.get("finish_reason")
    ]


def _failed(span: Any, kind: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))
