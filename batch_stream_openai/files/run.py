"""`run_batch_file`: an OpenAI Batch API JSONL file through the worker pool, resumable.

One run makes two passes over the input, streaming it (what it keeps per line, digests of
``custom_id``s and of requests, takes about 300 bytes):

1. **Check**: every line is parsed and validated, and ``custom_id``s are checked for
   duplicates, before any request is sent. The output file (append-only) says which
   ``custom_id``s are done; a done line whose request changed since is an error.
2. **Send**: the lines still to do go to `stream_batch`, read lazily, one per free slot;
   each result is appended as one Batch API output line as soon as it arrives.

A torn last output line (a write cut short by ``kill -9``) is cut away on start. SIGTERM
stops reading new lines; requests in flight get ``grace`` seconds to finish. When a run
ends, however it ends, the output holds each ``custom_id`` once: lines superseded by a
later one (``retry_failed``, ``resend_changed``) are dropped by an atomic rewrite.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from typing_extensions import Unpack

from .._batchapi.journal import Journal, owed_by
from ..api import BatchArguments, stream_batch
from ..errors import (
    BatchFileError,
    ChangedRequestsError,
    DiskFullError,
    InvalidInputError,
    LineError,
)
from ..request import AnyRequest
from .diskspace import DiskSpace
from .jsonl import (
    InputLine,
    OutputState,
    compact_output,
    custom_id_digest,
    id_key,
    output_line,
    read_input,
    recover_output,
)
from .preemption import GraceExpired, Preemption
from .report import FileRunReport
from .stats import note_run

__all__ = [
    "BatchFileError",
    "ChangedRequestsError",
    "FileRunReport",
    "InvalidInputError",
    "run_batch_file",
]

_LISTED = 20  # invalid lines and changed ids kept for messages
# Lines that may be in flight with max_concurrency="auto" (its default cap).
_AUTO_IN_FLIGHT = 1024


class _Decision(enum.Enum):
    SEND = "send"
    DONE = "done"
    CHANGED = "changed"
    OTHER_SHARD = "other shard"


@dataclass(frozen=True)
class _Selection:
    """Which valid lines this run sends."""

    state: OutputState
    shard: tuple[int, int] | None
    retry_failed: bool
    resend_changed: bool

    def failed(self, custom_id: str) -> bool:
        """Whether the output's line for `custom_id` is an error."""
        return id_key(custom_id_digest(custom_id)) in self.state.failed

    def has_line(self, custom_id: str) -> bool:
        """Whether the output holds a line for `custom_id` already."""
        return id_key(custom_id_digest(custom_id)) in self.state.done

    def decide(self, line: InputLine) -> _Decision:
        digest = custom_id_digest(line.custom_id)
        if self.shard is not None and digest % self.shard[1] != self.shard[0]:
            return _Decision.OTHER_SHARD
        key = id_key(digest)
        previous = self.state.done.get(key)
        if previous is None or (self.retry_failed and key in self.state.failed):
            return _Decision.SEND
        if previous == line.request_sha256:
            return _Decision.DONE
        return _Decision.SEND if self.resend_changed else _Decision.CHANGED


def run_batch_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    model: str | None = None,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    resend_changed: bool = False,
    skip_invalid: bool = False,
    grace: float | None = 30.0,
    max_concurrency: int | Literal["auto"] = 50,
    **options: Unpack[BatchArguments],
) -> FileRunReport:
    """Send every line of a Batch API JSONL file not yet in the output; append the results.

    Example:

    >>> line = '{"custom_id": "q1", "system_prompt": "Be brief.", "user_prompt": "Hi"}'
    >>> _ = Path("in.jsonl").write_text(line + '\\n')
    >>> report = run_batch_file("in.jsonl", "out.jsonl", model="gpt-4o-mini", rpm=500)
    >>> report.complete, report.written  # not complete after SIGTERM: run it again
    (True, 1)
    >>> run_batch_file("in.jsonl", "out.jsonl", model="gpt-4o-mini").already_done  # not twice
    1

    Re-running with the same output file sends only what it lacks. Output lines follow
    the Batch API output format, one per ``custom_id``: when a line is sent again
    (``retry_failed``, ``resend_changed``), its new line replaces the old one when the run
    ends (the file is rewritten atomically; until then the new line is appended).

    Parameters:
        input_path: Batch API input lines, or prompt lines (`OpenAIRequest` fields).
        output_path: the output JSONL file; created, or appended to.
        model: the model of lines that name none.
        shard: ``(i, n)``: only the lines whose ``sha256(custom_id) % n == i``.
        retry_failed: send again the ``custom_id``s whose latest output line is an error.
        resend_changed: send again done ``custom_id``s whose request changed (else
            `ChangedRequestsError`).
        skip_invalid: skip invalid lines (listed in the report) instead of raising
            `InvalidInputError`.
        grace: seconds requests in flight get after SIGTERM, which stops new ones
            (main thread only); None leaves SIGTERM alone.
        max_concurrency: requests in flight at most, or ``"auto"`` (see `BatchPool`).
        options: the other keyword arguments of `stream_batch` (``workers``, ``rpm``,
            ``base_url``, ``progress``, ...).

    Raises:
        BatchFileError: the files cannot be used as given (nothing was sent); its
            subclasses `InvalidInputError` and `ChangedRequestsError` list the lines.
    """
    report = FileRunReport(Path(input_path), Path(output_path))
    _check_arguments(report.input_path, report.output_path, shard)
    preemption = Preemption(grace)
    with preemption.installed(), _locked(report.output_path) as output:
        for stale in report.output_path.parent.glob(f".{report.output_path.name}.*.compacting"):
            stale.unlink(missing_ok=True)  # a rewrite cut short: the output itself is whole
        try:
            state = recover_output(output, str(report.output_path))
        except ValueError as exc:
            raise BatchFileError(str(exc)) from None
        report.torn_bytes = state.torn_bytes
        selection = _Selection(state, shard, retry_failed, resend_changed)
        try:
            invalid = _check_input(report, model, selection, skip_invalid)
            _check_key(report, options.get("api_key"))

            def lines() -> Iterator[tuple[InputLine, bool]]:
                return _lines_to_send(report.input_path, model, selection, invalid)

            space = DiskSpace(
                report.output_path,
                max_concurrency if isinstance(max_concurrency, int) else _AUTO_IN_FLIGHT,
                rewrite=bool(state.superseded or report.resent),
            )
            if report.to_send and not preemption.requested:
                space.check_start()
                with contextlib.suppress(GraceExpired), preemption.sending():
                    _send(lines, output, preemption, report, state, space, max_concurrency, options)
        finally:
            if state.superseded:
                report.superseded = _compact(output, report.output_path, state)
        report.preempted = preemption.requested
    return report


def _compact(output: IO[bytes], path: Path, state: OutputState) -> int:
    """`compact_output`; cut short (a full disk), its temporary copy is removed."""
    try:
        return compact_output(output, path, state)
    except OSError as error:
        for temporary in path.parent.glob(f".{path.name}.*.compacting"):
            temporary.unlink(missing_ok=True)
        raise DiskFullError(
            f"cannot rewrite {path} with one line per custom_id ({error.strerror or error}): "
            "it holds every answer, the latest line of a custom_id last. Free some space, "
            "then run the same command again: it rewrites the file"
        ) from error


def _check_arguments(input_path: Path, output_path: Path, shard: tuple[int, int] | None) -> None:
    if input_path.is_dir():
        raise BatchFileError(f"{input_path} is a directory, not a JSONL file")
    if not input_path.is_file():
        raise BatchFileError(f"{input_path}: no such file")
    if output_path.is_dir():
        raise BatchFileError(f"{output_path} is a directory, not a JSONL file")
    if output_path.exists() and output_path.samefile(input_path):
        raise BatchFileError("the output file must not be the input file")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise BatchFileError(f"shard must be (i, n) with 0 <= i < n, got {shard}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """The output file, opened to read and append, locked against a second run; one this
    created is removed again if the run fails before it holds anything."""
    created = not path.exists()
    try:
        with _opened(path) as output:
            yield output
    except BaseException:
        if created and path.exists() and path.stat().st_size == 0:
            path.unlink()
        raise


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    with path.open("a+b") as output:
        try:
            fcntl.flock(output.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchFileError(f"{path} is being written by another run") from None
        except OSError:
            pass  # a file system without locks (Lustre mounted without `flock`): go on
        try:
            yield output
        finally:
            output.flush()
            os.fsync(output.fileno())


def _check_input(
    report: FileRunReport, model: str | None, selection: _Selection, skip_invalid: bool
) -> set[int]:
    """First pass: validate every line and count what to send; the invalid line numbers."""
    seen: set[int] = set()
    invalid: set[int] = set()
    for item in read_input(report.input_path, model):
        report.lines += 1
        if isinstance(item, InputLine) and not _first_use(item.custom_id, seen):
            item = LineError(item.number, f"duplicate custom_id {item.custom_id!r}")
        if isinstance(item, LineError):
            invalid.add(item.number)
            report.invalid += 1
            if len(report.errors) < _LISTED:
                report.errors.append(item)
        else:
            decision = selection.decide(item)
            _count(report, decision, item.custom_id)
            if decision is _Decision.DONE and selection.failed(item.custom_id):
                report.already_failed += 1
            if decision is _Decision.SEND and item.request.uses_openai_sdk:
                report.to_openai += 1
            if decision is _Decision.SEND and selection.has_line(item.custom_id):
                report.resent += 1
    if report.invalid and not skip_invalid:
        raise InvalidInputError(report.input_path, report.errors, report.invalid)
    if report.changed_count:
        raise ChangedRequestsError(report.output_path, report.changed, report.changed_count)
    return invalid


def _check_key(report: FileRunReport, api_key: str | None) -> None:
    """Lines for OpenAI models need a key: fail before anything is sent, not per line."""
    if report.to_openai and not api_key and not os.environ.get("OPENAI_API_KEY"):
        raise BatchFileError(
            f"{report.to_openai} line(s) to send go to the OpenAI API, which needs a key: "
            "set OPENAI_API_KEY (any non-empty value for a local server that checks none)"
        )


def _first_use(custom_id: str, seen: set[int]) -> bool:
    key = id_key(custom_id_digest(custom_id))
    if key in seen:
        return False
    seen.add(key)
    return True


def _count(report: FileRunReport, decision: _Decision, custom_id: str) -> None:
    if decision is _Decision.SEND:
        report.to_send += 1
    elif decision is _Decision.DONE:
        report.already_done += 1
    elif decision is _Decision.OTHER_SHARD:
        report.other_shards += 1
    else:
        report.changed_count += 1
        if len(report.changed) < _LISTED:
            report.changed.append(custom_id)


def _lines_to_send(
    input_path: Path, model: str | None, selection: _Selection, invalid: set[int]
) -> Iterator[tuple[InputLine, bool]]:
    """Second pass: each valid line read again, and whether this run sends it."""
    for item in read_input(input_path, model):
        if item.number in invalid:
            continue
        if isinstance(item, LineError):
            raise BatchFileError(f"{input_path} changed during the run: {item}")
        yield item, selection.decide(item) is _Decision.SEND


def _journal_beside(output_path: Path, lines: Iterator[tuple[InputLine, bool]]) -> Path:
    """The Batch API journal kept beside the output (``mode="batch"``), told what this
    run does not send (in the output already) and sends again (``--retry-failed``).

    Its indices are the input's valid lines in order, the same in every run of the same
    input, so a re-run after a crash or a SIGTERM re-attaches to the jobs it submitted.
    """
    path = output_path.with_name(output_path.name + ".jobs")
    journal = Journal(path)
    try:
        journal.select((index, send) for index, (_, send) in enumerate(lines))
    finally:
        journal.close()
    return path


class _Sized(Iterable[AnyRequest]):
    """A lazy iterable that knows its length (what a progress bar shows as the total)."""

    def __init__(self, items: Iterator[AnyRequest], length: int) -> None:
        self._items = items
        self._length = length

    def __iter__(self) -> Iterator[AnyRequest]:
        return self._items

    def __len__(self) -> int:
        return self._length


def _send(
    lines: Callable[[], Iterator[tuple[InputLine, bool]]],
    output: IO[bytes],
    preemption: Preemption,
    report: FileRunReport,
    state: OutputState,
    space: DiskSpace,
    max_concurrency: int | Literal["auto"],
    options: BatchArguments,
) -> None:
    """Stream the lines through the pool; append each result as it arrives.

    Online, only the lines to send are requests; by the Batch API, every valid line is
    (its journal skips those not to send), so that a line's index never changes.
    """
    in_flight: dict[int, InputLine] = {}
    journal = None
    if options.get("mode") == "batch":
        journal = _journal_beside(report.output_path, lines())
        options = {**options, "journal": journal}
    by_jobs = journal is not None

    def requests() -> Iterator[AnyRequest]:
        index = -1
        for line, send in lines():
            if preemption.requested or space.low():
                return
            if send or by_jobs:
                index += 1
                if send:
                    in_flight[index] = line
                yield line.request

    stream = stream_batch(
        _Sized(requests(), report.to_send),  # the progress bar's total
        max_concurrency=max_concurrency,
        return_results=True,
        **options,
    )
    report.summary = stream.summary
    started_at = time.time()
    try:
        with stream:
            for index, result in stream:
                line = in_flight.pop(index)
                written = output_line(line.custom_id, line.request_sha256, result)
                _write(output, written, preemption, space)
                state.note_written(line.custom_id)
                report.written += 1
                report.failed += result.error is not None
    finally:
        if journal is not None:
            report.in_jobs = owed_by(journal)
        with contextlib.suppress(OSError):  # a full disk: the run's own error comes first
            note_run(report.output_path, started_at, stream.summary)
    if space.low() and report.written < report.to_send and not preemption.requested:
        raise space.stopped()


def _write(output: IO[bytes], line: bytes, preemption: Preemption, space: DiskSpace) -> None:
    """Append one output line whole; a failed write (a full disk) leaves no part of it."""
    end = os.lseek(output.fileno(), 0, os.SEEK_END)
    try:
        preemption.write(output, line)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.ftruncate(output.fileno(), end)
        raise space.failed(error) from error
    space.wrote(len(line))
