"""The Batch API route's journal: every job, every line's owner, what the caller has had.

A SQLite file (WAL) written before and after each API call that creates or ends
something, so a run that dies (``kill -9``, a reboot) and is started again with the same
requests and journal re-attaches to the jobs it had submitted instead of paying for them
again, and yields only the indices the caller has not had. Beside it, a directory holds
each job's input lines (what was uploaded), the pickled requests (to read their answers,
or to send them online) and the downloaded output, so nothing has to be asked of the
provider twice.

Without a path the journal lives in a temporary directory for the one run.

Tables::

    jobs(key, endpoint, model, state, file_id, batch_id, created)   -- one per job
    lines(idx, job, delivered, digest)        -- the job that owns idx, and what it sent

A job's state goes ``spooled -> uploaded -> submitted -> downloaded -> read``; an index
belongs to the last job it was put in (a line retried in a later job moves there).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BatchFileError

__all__ = ["JobRecord", "Journal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
    file_id TEXT, batch_id TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lines (
    idx INTEGER PRIMARY KEY, job TEXT NOT NULL, delivered INTEGER NOT NULL DEFAULT 0,
    digest BLOB
);
CREATE INDEX IF NOT EXISTS lines_by_job ON lines (job, delivered);
"""


@dataclass
class JobRecord:
    """One job as the journal has it."""

    key: str  # ours: names its files, and the job's metadata at the provider
    endpoint: str
    model: str
    state: str
    file_id: str | None = None
    batch_id: str | None = None


class Journal:
    """The jobs of one batch-mode run (thread-safe: the route and the caller share it).

    Parameters:
        path: the journal file (created if missing), or None for a temporary one.
    """

    def __init__(self, path: str | Path | None) -> None:
        self._temporary = path is None
        self.path = (
            Path(tempfile.mkdtemp(prefix="bso-jobs-")) / "journal" if path is None else Path(path)
        )
        self.files = self.path.with_name(self.path.name + ".d")  # the jobs' local files
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a kill -9 loses nothing
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise BatchFileError(f"{self.path} is not a batch journal ({error})") from None

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def job_dir(self, key: str) -> Path:
        """Where job `key` keeps its input lines, requests and downloaded output."""
        return self.files / key

    def add_job(self, job: JobRecord, lines: Iterable[tuple[int, bytes]]) -> None:
        """Record a spooled job and make it the owner of its ``(index, digest)`` lines
        (before its upload); a digest tells a re-run whether it sends the same request."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.key, job.endpoint, job.model, job.state, None, None, time.time()),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO lines (idx, job, digest) VALUES (?, ?, ?)",
                ((index, job.key, digest) for index, digest in lines),
            )

    def update(self, job: JobRecord) -> None:
        """Write `job`'s state and ids (after the API call that changed them)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, file_id = ?, batch_id = ? WHERE key = ?",
                (job.state, job.file_id, job.batch_id, job.key),
            )

    def open_jobs(self) -> list[JobRecord]:
        """The jobs with lines the caller has not had, oldest first (to re-attach to)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, endpoint, model, state, file_id, batch_id FROM jobs WHERE key IN "
                "(SELECT DISTINCT job FROM lines WHERE delivered = 0) ORDER BY created"
            ).fetchall()
        return [JobRecord(*row) for row in rows]

    def pending(self, key: str) -> set[int]:
        """The indices job `key` owns that the caller has not had."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx FROM lines WHERE job = ? AND delivered = 0", (key,)
            ).fetchall()
        return {row[0] for row in rows}

    def known(self, index: int) -> tuple[bool, bytes | None]:
        """Whether `index` is in a job already (or was delivered), not to be sent again;
        and the digest of the line it was sent as (None when it was not recorded)."""
        with self._lock:
            row = self._db.execute("SELECT digest FROM lines WHERE idx = ?", (index,)).fetchone()
        return (row is not None, row[0] if row is not None else None)

    def delivered(self, indices: Iterable[int]) -> None:
        """The caller has had these indices: a re-run does not yield them again."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO lines (idx, job, delivered) VALUES (?, '', 1) "
                "ON CONFLICT (idx) DO UPDATE SET delivered = 1",
                ((index,) for index in indices),
            )

    def select(self, indices: Iterable[tuple[int, bool]]) -> None:
        """For each ``(index, send)``: not to send is as good as delivered (a file run
        has it in its output already); to send, and delivered before, is sent anew."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for index, send in indices:
                if send:
                    self._db.execute("DELETE FROM lines WHERE idx = ? AND delivered = 1", (index,))
                else:
                    self._db.execute(
                        "INSERT INTO lines (idx, job, delivered) VALUES (?, '', 1) "
                        "ON CONFLICT (idx) DO UPDATE SET delivered = 1",
                        (index,),
                    )

    def prune(self) -> None:
        """Delete the local files of jobs the caller has had every line of."""
        for record in self._all_jobs():
            if not self.pending(record.key):
                shutil.rmtree(self.job_dir(record.key), ignore_errors=True)

    def _all_jobs(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, endpoint, model, state, file_id, batch_id FROM jobs"
            ).fetchall()
        return [JobRecord(*row) for row in rows]

    def close(self) -> None:
        """Close the file; a temporary journal is deleted with its jobs' files."""
        with self._lock:
            self._db.close()
        if self._temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)
