"""What one `run_batch_file` call did: counts of lines, and a report a person reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LineError
from ..results import BatchSummary

__all__ = ["FileRunReport"]


@dataclass
class FileRunReport:
    """What one `run_batch_file` call did.

    Parameters:
        input_path: the input file.
        output_path: the output file.
        lines: non-blank input lines.
        invalid: invalid lines (skipped with ``skip_invalid``).
        errors: the first invalid lines.
        other_shards: valid lines that belong to other shards.
        already_done: lines skipped because the output already holds them.
        already_failed: of those, the ones whose output line is an error.
        changed: the first done ``custom_id``s whose request changed (sent again with
            ``resend_changed``, else an error).
        changed_count: how many in all.
        to_send: lines this run had to send.
        written: output lines this run wrote.
        failed: of those, the errors.
        torn_bytes: bytes of a torn last output line cut away on start (0: none).
        superseded: output lines dropped at the end because a later line has the same
            ``custom_id`` (0: none).
        preempted: SIGTERM arrived.
        in_jobs: ``mode="batch"``: of the lines not written, those in Batch API jobs that
            go on at the provider (a re-run collects them without paying again).
        summary: the stream's `BatchSummary` (retries, tokens, wall time).
    """

    input_path: Path
    output_path: Path
    lines: int = 0
    invalid: int = 0
    errors: list[LineError] = field(default_factory=list)
    other_shards: int = 0
    already_done: int = 0
    already_failed: int = 0
    changed: list[str] = field(default_factory=list)
    changed_count: int = 0
    to_send: int = 0
    written: int = 0
    failed: int = 0
    torn_bytes: int = 0
    superseded: int = 0
    preempted: bool = False
    in_jobs: int = 0
    summary: BatchSummary | None = None
    to_openai: int = field(default=0, repr=False)  # lines to send that need an OpenAI key
    resent: int = field(default=0, repr=False)  # lines to send that have an output line

    @property
    def complete(self) -> bool:
        """Every line this run had to send has its output line."""
        return self.written == self.to_send

    @property
    def failed_in_output(self) -> int:
        """Error lines the output holds for this run's lines: earlier runs' and this one's."""
        return self.already_failed + self.failed

    def __str__(self) -> str:
        if not self.lines:
            return f"{self.input_path}: no lines (the file is empty); nothing to send"
        done = f"{self.already_done} already done"
        if self.already_failed:
            done += f" ({self.already_failed} of them errors)"
        counts = [
            (self.invalid, f"{self.invalid} invalid (skipped)"),
            (self.other_shards, f"{self.other_shards} in other shards"),
            (self.already_done, done),
            (True, f"{self.to_send} to send"),
        ]
        notes = [f"{self.input_path}: {self.lines} lines; " + ", ".join(t for n, t in counts if n)]
        if self.torn_bytes:
            notes.append(f"{self.output_path}: cut a torn last line away ({self.torn_bytes} bytes)")
        if self.summary is not None:
            notes.append(f"sent {self.summary}")
        notes.append(f"{self.output_path}: {self.written} new lines, {self.failed} of them errors")
        if self.superseded:
            notes.append(
                f"{self.output_path}: rewritten with one line per custom_id "
                f"({self.superseded} superseded lines dropped)"
            )
        if not self.complete:
            notes.append(self._partial())
        return "\n".join(notes)

    def _partial(self) -> str:
        """What a partial run left: lines still to send, and lines in running jobs."""
        parts = []
        if unsent := self.to_send - self.written - self.in_jobs:
            parts.append(f"{unsent} lines still to send")
        if self.in_jobs:
            parts.append(
                f"{self.in_jobs} lines in Batch API jobs that go on at the provider (a re-run "
                "collects their answers without paying again)"
            )
        return "partial: " + ", ".join(parts)
