"""Ctrl-C and SIGTERM belong to the caller's main thread: the signals the library keeps
away from its own threads (parent side) and from its workers while they start."""

from __future__ import annotations

import signal

__all__ = ["GROUP_SIGNALS", "block_group_signals"]

# What a terminal (Ctrl-C) or a scheduler (SIGTERM) sends the whole process group.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def block_group_signals() -> None:
    """Keep Ctrl-C and SIGTERM away from the calling thread (call it first in a thread the
    library starts in the parent): the main thread takes them, or they stay pending."""
    signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
