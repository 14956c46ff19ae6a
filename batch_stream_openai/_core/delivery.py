"""What the caller gets of one batch: each index's result, once, as it finishes.

The dispatcher hands every finished index here; `Delivery` counts it in the batch's
`BatchSummary`, tells whoever listens (the Batch API route keeps answers in its journal),
and keeps the ``(index, value)`` pair the stream yields: the plain value (the text, what
`postprocess` returned, or the Exception), or the whole `Result` with what the ledger
knows of the request (attempts, latency, the endpoint that answered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from .._observe.telemetry import Telemetry
from ..results import BatchSummary, Result, ResultPair
from .ledger import Entry

__all__ = ["Delivery"]


class Delivery:
    """The results of one batch not yet taken by the caller, and its summary.

    Example:

    >>> delivery = Delivery(BatchSummary())
    >>> delivery.deliver(7, None, Result(7, text="Hi", output="Hi"))  # an index is done
    >>> delivery.take()
    [(7, 'Hi')]
    >>> delivery.summary.ok
    1

    Parameters:
        summary: the batch's live counts.
        rich: keep `Result` objects, not plain values.
        urls: the endpoints, by number (a rich result names the one that answered).
        on_finish: told each index's result as it is done, or None.
        telemetry: where each result is recorded (OpenTelemetry), or None.
        clock: monotonic seconds (a rich result's latency).
    """

    def __init__(
        self,
        summary: BatchSummary | None = None,
        *,
        rich: bool = False,
        urls: Sequence[str] = (),
        on_finish: Callable[[int, Result], None] | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.summary = summary if summary is not None else BatchSummary()
        self._rich = rich
        self._urls = urls
        self._on_finish = on_finish
        self._telemetry = telemetry
        self._traced = telemetry is not None and telemetry.traces  # spans want rich results
        self._clock = clock
        self._done: list[ResultPair] = []  # [(index, value)], not yet taken

    def __repr__(self) -> str:
        return f"<Delivery waiting={len(self._done)} {self.summary}>"

    @property
    def waiting(self) -> bool:
        """Results are waiting to be taken."""
        return bool(self._done)

    def deliver(self, index: int, entry: Entry | None, result: Result) -> None:
        """`index` is done with `result` (`entry`: its ledger entry, if it had one)."""
        attempts = entry.attempts if entry is not None else result.attempts
        # Retries as the summary counts them: hedges and failovers are none.
        tries = attempts - (entry.hedged + entry.retry.failovers if entry is not None else 0)
        self.summary.add(result, tries)
        if self._on_finish is not None:
            self._on_finish(index, result)
        rich = None
        if entry is not None and (self._rich or self._traced):
            rich = entry.rich(index, result, self._clock(), self._urls)
        if self._telemetry is not None:
            self._record(index, entry, tries, result if rich is None else rich)
        if not self._rich:
            self._done.append((index, result.value))
        elif rich is not None:
            self._done.append((index, rich))
        else:
            self._done.append((index, replace(result, index=index)))  # as it came

    def _record(self, index: int, entry: Entry | None, tries: int, result: Result) -> None:
        telemetry = self._telemetry
        assert telemetry is not None
        if entry is None:
            telemetry.finished(index, None, "", None, tries, False, result)
            return
        url = self._urls[entry.endpoint] if entry.endpoint is not None else ""
        since = entry.retry.first_sent_at
        telemetry.finished(index, entry, url, since, tries, bool(entry.hedged), result)

    def take(self) -> list[ResultPair]:
        """The results finished since the last call."""
        done, self._done = self._done, []
        return done
