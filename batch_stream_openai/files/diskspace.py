"""Room on disk for a file run's output: checked before anything is sent, and as it goes.

A request whose answer cannot be written is paid for and lost, and an output rewrite
(``retry_failed``, ``resend_changed``) cut short by a full disk would leave two lines for
some ``custom_id``s. So `run_batch_file` asks `DiskSpace` first whether the output's file
system holds what the run may write (every answer in flight, and a copy of the output
when it will be rewritten), refuses to start when it does not, and stops sending new
requests as soon as it no longer does, letting what is in flight finish and be written.
`statvfs` costs a few microseconds; it is asked at most every `_CHECK_EVERY_S`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..errors import DiskFullError

__all__ = ["DiskFullError", "DiskSpace"]

# Bytes kept free per output line that may be in flight, at least (an answer's line is
# usually 1-4 KB; the largest seen so far counts when it is larger).
_LINE_ROOM = 8 * 1024
_MARGIN = 256 * 1024  # and this much besides: the file system's own needs
_CHECK_EVERY_S = 0.2


class DiskSpace:
    """The room a file run needs next to its output.

    Parameters:
        output: the output file.
        in_flight: lines that may be in flight at once (the run's concurrency).
        rewrite: the output will be rewritten at the end (a copy of it needs room too).
    """

    def __init__(self, output: Path, in_flight: int, rewrite: bool = False) -> None:
        self._output = output
        self._in_flight = in_flight
        self._rewrite = rewrite
        self._longest = _LINE_ROOM
        self._checked_at = -float("inf")
        self._low = False

    def __repr__(self) -> str:
        return f"<DiskSpace {self._output} needs {self.needed()} bytes>"

    def needed(self) -> int:
        """Bytes the run must still have free."""
        copy = self._output.stat().st_size if self._rewrite else 0
        return self._in_flight * self._longest + copy + _MARGIN

    def free(self) -> int:
        return shutil.disk_usage(self._output.parent).free

    def check_start(self) -> None:
        """Raise `DiskFullError` if the run could not write what it would send."""
        free, needed = self.free(), self.needed()
        if free < needed:
            raise DiskFullError(
                f"{self._output}: only {free:,} bytes free on its file system, and this run "
                f"needs about {needed:,} (the answers in flight"
                + (", and a copy of the output for its rewrite" if self._rewrite else "")
                + "); nothing was sent. Free some space, then run the same command again"
            )

    def wrote(self, size: int) -> None:
        """A line of `size` bytes was written (the longest one sets the room per line)."""
        self._longest = max(self._longest, size)

    def low(self) -> bool:
        """Whether the room is gone (then it stays gone: no new request is sent)."""
        now = time.monotonic()
        if not self._low and now - self._checked_at >= _CHECK_EVERY_S:
            self._checked_at = now
            self._low = self.free() < self.needed()
        return self._low

    def stopped(self) -> DiskFullError:
        """The error of a run that stopped sending for lack of room."""
        return DiskFullError(
            f"{self._output}: the disk is nearly full ({self.free():,} bytes free, the run "
            f"keeps {self.needed():,}): no new request was sent, those in flight were "
            "written. Free some space, then run the same command again to resume"
        )

    def failed(self, error: OSError) -> DiskFullError:
        """The error of a write that failed (``ENOSPC``, a quota, a file size limit)."""
        return DiskFullError(
            f"cannot write {self._output}: {error.strerror or error}; what was written is "
            "whole. Free some space, then run the same command again to resume"
        )
