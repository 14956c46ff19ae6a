"""SIGTERM during a file run: send nothing new, give what is in flight `grace` seconds.

A scheduler's SIGTERM (Slurm, Kubernetes) sets `Preemption.requested`: the input stops
being read and what is in flight may finish and be written. After ``grace`` seconds a
SIGALRM raises `GraceExpired` in the main thread, never while a line is half written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import IO

__all__ = ["GraceExpired", "Preemption"]


class GraceExpired(BaseException):
    """Raised by SIGALRM when the grace period is over (a BaseException: never swallowed)."""


class Preemption:
    """SIGTERM stops new requests; after ``grace`` seconds, SIGALRM cuts the stream short."""

    def __init__(self, grace: float | None) -> None:
        self.grace = grace
        self.requested = False  # SIGTERM arrived: send nothing new
        self.expired = False
        self.holding = False  # writing a line: the alarm must not tear it
        self._sending = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGTERM (main thread only; ``grace=None``: leave it alone)."""
        if self.grace is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous_term = signal.signal(signal.SIGTERM, self._on_term)
        previous_alarm = signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGALRM, previous_alarm)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """The stretch where the grace period runs and may end in `GraceExpired`."""
        self._sending = True
        self._arm()
        try:
            yield
        finally:
            self._sending = False
            if self.requested:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _arm(self) -> None:
        if self.requested and self._sending and self.grace is not None:
            signal.setitimer(signal.ITIMER_REAL, max(self.grace, 0.001))

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            self._arm()

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self.expired = True
        if not self.holding:
            raise GraceExpired

    def write(self, output: IO[bytes], data: bytes) -> None:
        """Append one line whole, even if the grace period ends meanwhile.

        Written to the file descriptor itself: a buffer would keep the part of a line
        that a full disk refused, and write it later past a truncation."""
        self.holding = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(output.fileno(), view) :]
        finally:
            self.holding = False
        if self.expired:
            raise GraceExpired
