"""The Batch API route's journal: every job, every line's owner and answer, what was yielded.

A SQLite file (WAL) written before and after each API call that creates or ends
something, and as the caller takes each result, so that a run that dies (``kill -9``, a
reboot, Ctrl-C) and is started again with the same requests and journal re-attaches to
the jobs it had submitted instead of paying for them again. Each answer is kept in it
(`StoredAnswer`: the provider's JSON, re-read with the request), so nothing is asked of
the provider twice, and a re-run can give back answers the caller already had (with
``Result.replayed``). Beside it, a directory holds each open job's input lines (what was
uploaded) and its pickled requests, deleted once the job's answers are in the journal.

Tables::

    jobs(key, endpoint, model, state, file_id, batch_id, created)   -- one per job
    lines(idx, job, delivered, digest, answer)  -- who owns idx, what it sent and got

A job's state goes ``spooled -> uploaded -> submitted -> downloaded -> read``; an index
belongs to the last job it was put in (a line retried in a later job moves there; ``''``:
in no job, as a cache hit or a request sent online). ``delivered`` is `NOT_YIELDED`,
`YIELDED` (the caller was handed it and had not asked for the next one yet: it may not
have been processed) or `CONFIRMED` (the caller asked for the next result, or the stream
ended). At most one index is `YIELDED` at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import BatchFileError

__all__ = [
    "CONFIRMED",
    "NOT_YIELDED",
    "YIELDED",
    "JobRecord",
    "Journal",
    "Line",
    "auto_journal",
    "owed_by",
]

NOT_YIELDED, YIELDED, CONFIRMED = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
    file_id TEXT, batch_id TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lines (
    idx INTEGER PRIMARY KEY, job TEXT NOT NULL, delivered INTEGER NOT NULL DEFAULT 0,
    digest BLOB, answer TEXT
);
CREATE INDEX IF NOT EXISTS lines_by_job ON lines (job, delivered);
"""
_OWED = "SELECT COUNT(*) FROM lines WHERE delivered = 0 AND (job != '' OR answer IS NOT NULL)"
_UPSERT_DELIVERED = (
    "INSERT INTO lines (idx, job, delivered) VALUES (?, '', ?) "
    "ON CONFLICT (idx) DO UPDATE SET delivered = excluded.delivered"
)


@dataclass
class JobRecord:
    """One job as the journal has it."""

    key: str  # ours: names its files (and, at OpenAI, the job's metadata)
    endpoint: str
    model: str
    state: str
    file_id: str | None = None
    batch_id: str | None = None
    created: float = 0.0  # when it was recorded (epoch seconds)


@dataclass(frozen=True)
class Line:
    """What the journal knows of one index."""

    job: str  # the job that owns it ('' for none)
    delivered: int  # NOT_YIELDED, YIELDED or CONFIRMED
    digest: bytes | None  # of the line it was sent as (None: not recorded)
    answer: str | None  # its StoredAnswer, as JSON


def auto_journal(base_url: str, first_line: bytes) -> Path:
    """Where a batch with no ``journal=`` keeps its jobs: the user's cache directory, named
    after its endpoint and first request, so that a re-run of the same batch finds it."""
    import platformdirs

    digest = hashlib.sha256(base_url.encode() + b"\0" + first_line).hexdigest()[:24]
    return platformdirs.user_cache_path("batch-stream-openai") / "journals" / digest


def owed_by(path: Path) -> int:
    """Lines the journal at `path` has in jobs, or answered, not yet yielded (read only)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute(_OWED).fetchone()[0])
    finally:
        db.close()


class Journal:
    """The jobs of one batch-mode run (thread-safe: the route and the caller share it).

    Parameters:
        path: the journal file (created if missing), or None for a temporary one.

    Raises `BatchFileError` for a file that is not a journal, or one another run uses.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.temporary = path is None
        self.path = (
            Path(tempfile.mkdtemp(prefix="bso-jobs-")) / "journal" if path is None else Path(path)
        )
        self.files = self.path.with_name(self.path.name + ".d")  # the jobs' local files
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._yielded: int | None = None  # the index handed to the caller, unconfirmed
        self._owner = self._claim()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a kill -9 loses nothing
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(lines)")}
            if "answer" not in columns:  # a journal written before answers were kept
                self._db.execute("ALTER TABLE lines ADD COLUMN answer TEXT")
        except sqlite3.DatabaseError as error:
            self._owner.close()
            raise BatchFileError(f"{self.path} is not a batch journal ({error})") from None

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def _claim(self) -> IO[bytes]:
        """Lock the journal for this run: two runs on one journal would pay twice."""
        owner = self.path.with_name(self.path.name + ".lock").open("wb")
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner.close()
            raise BatchFileError(f"the journal {self.path} is used by another run") from None
        except OSError:
            pass  # a file system without locks: go on
        return owner

    def job_dir(self, key: str) -> Path:
        """Where job `key` keeps its input lines and requests until its answers are kept."""
        return self.files / key

    def add_job(self, job: JobRecord, lines: Iterable[tuple[int, bytes]]) -> None:
        """Record a spooled job and make it the owner of its ``(index, digest)`` lines
        (before its upload); a digest tells a re-run whether it sends the same request."""
        job.created = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.key, job.endpoint, job.model, job.state, None, None, job.created),
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
        """The jobs not read yet that still owe answers, oldest first (to re-attach to)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, endpoint, model, state, file_id, batch_id, created FROM jobs "
                "WHERE state != 'read' AND key IN (SELECT DISTINCT job FROM lines "
                "WHERE answer IS NULL AND delivered = 0) ORDER BY created"
            ).fetchall()
        return [JobRecord(*row) for row in rows]

    def pending(self, key: str) -> set[int]:
        """The indices job `key` owns that have no answer and were not yielded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx FROM lines WHERE job = ? AND answer IS NULL AND delivered = 0",
                (key,),
            ).fetchall()
        return {row[0] for row in rows}

    def line(self, index: int) -> Line | None:
        """What the journal knows of `index` (None: nothing)."""
        with self._lock:
            row = self._db.execute(
                "SELECT job, delivered, digest, answer FROM lines WHERE idx = ?", (index,)
            ).fetchone()
        return Line(*row) if row is not None else None

    def forget(self, index: int) -> None:
        """`index` is another request now (an automatic journal's re-run of another batch)."""
        with self._lock:
            self._db.execute("DELETE FROM lines WHERE idx = ?", (index,))

    def sent_alone(self, index: int, digest: bytes) -> None:
        """`index` goes online (past a deadline's switch): in no job from now on."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO lines (idx, job, digest) VALUES (?, '', ?)",
                (index, digest),
            )

    def keep_answers(self, answers: Iterable[tuple[int, str]], done: JobRecord | None) -> None:
        """Keep ``(index, StoredAnswer JSON)`` answers, and mark `done` read, at once."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO lines (idx, job, answer) VALUES (?, '', ?) "
                "ON CONFLICT (idx) DO UPDATE SET answer = excluded.answer",
                answers,
            )
            if done is not None:
                self._db.execute("UPDATE jobs SET state = 'read' WHERE key = ?", (done.key,))

    def taken(self, index: int) -> None:
        """The caller was handed `index`: the one before it is confirmed (it asked for
        the next, so it is done with it)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if self._yielded is not None:
                self._db.execute(_UPSERT_DELIVERED, (self._yielded, CONFIRMED))
            self._db.execute(_UPSERT_DELIVERED, (index, YIELDED))
            self._yielded = index

    def confirm(self) -> None:
        """The stream ended: the caller is done with the last index it was handed."""
        with self._lock:
            if self._yielded is not None:
                self._db.execute(_UPSERT_DELIVERED, (self._yielded, CONFIRMED))
                self._yielded = None

    def select(self, indices: Iterable[tuple[int, bool]]) -> None:
        """For each ``(index, send)``: not to send is as good as delivered (a file run
        has it in its output already); to send, and delivered before, is sent anew."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for index, send in indices:
                if send:
                    self._db.execute("DELETE FROM lines WHERE idx = ? AND delivered > 0", (index,))
                else:
                    self._db.execute(_UPSERT_DELIVERED, (index, CONFIRMED))

    def owed(self) -> int:
        """Lines in open jobs, or answered, that the caller has not been handed."""
        with self._lock:
            row = self._db.execute(_OWED).fetchone()
        return int(row[0])

    def close(self, delete: bool = False) -> None:
        """Close the file; a temporary journal (or, `delete`, this one) is deleted with its
        jobs' files."""
        with self._lock:
            self._db.close()
        self._owner.close()
        if self.temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)
        elif delete:
            shutil.rmtree(self.files, ignore_errors=True)
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
