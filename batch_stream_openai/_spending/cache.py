"""The response cache: the provider's answers on disk, keyed by exactly what was sent.

``cache=PATH`` (or ``True``: ``<user cache dir>/batch-stream-openai/responses.sqlite``)
keeps every answer in a SQLite file owned by the parent process (WAL mode, one writer;
workers never touch it). Before a request is sent, online or by the Batch API, its key is
looked up:

- **Key**: SHA-256 of the canonical JSON (sorted keys) of the endpoint, the full request
  body as it would be sent (model name resolved, every parameter: no allow-list of
  fields) and where it goes (the base URL without a trailing ``/``, or LiteLLM). The API
  key, timeout and retry settings are not in it.
- **What is kept**: every answer the provider gave with status 200, with its JSON, ids
  and cost (`StoredAnswer`): a text, an embedding, tool calls, a refusal, an answer that
  does not parse. Errors without an answer (statuses, timeouts) are never kept.
- **Hit**: the stored answer is read again with the request, exactly as its first answer
  was read, so a hit yields what the miss yielded (``Result.cached`` set, ``cost_usd``
  0; the summary's ``saved_usd`` adds up what the hits cost when they were paid for). It
  counts against no rate, concurrency or cost budget. `postprocess` is never stored: a
  hit goes through the current one, in a worker.
- **In flight**: a request identical to one already sent waits for that one's answer
  instead of being sent again (``deduplicated``); if that one fails without an answer, it
  is sent itself (online; the Batch API route looks the cache up and fills it, but sends
  identical requests of one batch each in its job).

Writes are batched (every `_COMMIT_EVERY` answers or `_COMMIT_AFTER_S` seconds), so a
``kill -9`` loses at most the last second of answers and never corrupts the file. Several
runs may share one file at a time; in one run, the batch loop and the Batch API route's
thread share it (a lock).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random

from .._wire.answers import StoredAnswer
from .._wire.bodies import http_call
from ..errors import CacheError
from ..request import AnyRequest, openai_model_name

__all__ = ["ResponseCache", "cache_key", "default_cache_path"]

_FORMAT = "batch-stream-openai responses 1"
_COMMIT_EVERY = 500
_COMMIT_AFTER_S = 1.0
# How long a writer waits for another run holding the file's write lock.
_BUSY_TIMEOUT_S = 30.0


def default_cache_path() -> Path:
    """``responses.sqlite`` in the user's cache directory (platformdirs)."""
    import platformdirs

    return platformdirs.user_cache_path("batch-stream-openai") / "responses.sqlite"


def cache_key(request: AnyRequest, base_url: str) -> bytes:
    """The digest of what `request` sends, and to where: equal requests, equal keys."""
    endpoint, body = http_call(request)
    sdk_model = openai_model_name(body["model"])
    route = base_url.rstrip("/") if sdk_model is not None else "litellm"
    if sdk_model is not None and sdk_model != body["model"]:
        body = {**body, "model": sdk_model}
    canonical = json.dumps(
        [endpoint, body, route], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).digest()


class ResponseCache:
    """Successful answers in a SQLite file; see the module docstring.

    Example:

    >>> cache = ResponseCache(Path("answers.sqlite"))
    >>> cache.get(b"key") is None  # a StoredAnswer, or None
    True
    >>> cache.put(b"key", StoredAnswer({"id": "a"}, "req_1", 0.001))  # committed in batches
    >>> cache.get(b"key").request_id
    'req_1'
    >>> cache.close()

    Raises `CacheError` (naming the path) for a file that is not a cache, or is corrupt.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: dict[bytes, tuple[bytes, str, float]] = {}  # {key: row}, not committed
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()  # the batch loop and the Batch API route share it
        self._db = self._open(path)

    def __repr__(self) -> str:
        return f"<ResponseCache {self.path} pending={len(self._pending)}>"

    def get(self, key: bytes) -> StoredAnswer | None:
        """The answer stored for `key`, or None."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return StoredAnswer.from_json(pending[1])
            row = self._query("SELECT answer FROM responses WHERE key = ?", (key,))
        return StoredAnswer.from_json(row[0]) if row is not None else None

    def put(self, key: bytes, answer: StoredAnswer) -> None:
        """Store an answer (committed with the next batch of writes)."""
        with self._lock:
            self._pending[key] = (key, answer.to_json(), time.time())
        self.commit_if_due()

    def commit_if_due(self) -> None:
        """Commit the pending writes when enough have piled up, or enough time passed."""
        if len(self._pending) >= _COMMIT_EVERY or (
            self._pending and time.monotonic() - self._last_commit >= _COMMIT_AFTER_S
        ):
            self.commit()

    def commit(self) -> None:
        """Write every pending answer now, in one transaction."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        if not self._pending:
            return
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO responses (key, answer, created) VALUES (?, ?, ?)",
                    self._pending.values(),
                )
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"cannot write the cache {self.path}: {exc}") from None
        self._pending.clear()

    def _query(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        try:
            return self._db.execute(sql, parameters).fetchone()
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"cannot read the cache {self.path}: {exc}") from None

    def close(self) -> None:
        """Commit what is pending and close the file."""
        try:
            self.commit()
        finally:
            with self._lock:
                self._db.close()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if path.is_dir():
            raise CacheError(f"cache {path} is a directory, not a cache file")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the cache {path}: {exc}") from None
        # Two runs opening one new file at once: switching it to WAL answers "database is
        # locked" at once (SQLite's busy timeout does not wait for that): wait and retry.
        retrying = Retrying(
            retry=retry_if_exception(_locked),
            wait=wait_random(0.01, 0.1),
            stop=stop_after_delay(_BUSY_TIMEOUT_S),
            reraise=True,
        )
        try:
            retrying(_prepare, db, path)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CacheError(
                f"{path} is not a batch-stream-openai response cache (or it is corrupt): {exc}"
            ) from None
        db.isolation_level = "DEFERRED"  # transactions again, for the batched writes
        return db


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Check the file is a cache of ours (an empty file becomes one); WAL mode."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(key BLOB PRIMARY KEY, answer TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
        )
        db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (_FORMAT,))
        db.execute("COMMIT")
        return
    row = None
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
    if row is None or row[0] != _FORMAT or "responses" not in tables:
        raise CacheError(
            f"{path} is a SQLite file but not a batch-stream-openai response cache "
            f"(tables: {', '.join(sorted(tables))}); pass another path"
        )
    db.execute("PRAGMA journal_mode=WAL")
