"""A git revision checked out beside this tree, for benchmarks that compare the two."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ROOT", "checked_out"]

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def checked_out(revision: str) -> Iterator[Path]:
    """`revision` in a temporary git worktree (removed afterwards), as a folder to run."""
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), revision],
            check=True,
            capture_output=True,
        )
        try:
            yield worktree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )
