"""The messages parent and workers exchange; see the diagram at the top of `pool.py`.

Each message is a small frozen dataclass. Both directions send a list of messages per
pipe write, so that under load one system call and one pickle carry many items.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from .errors import ResultTransferError
from .request import AnyRequest
from .results import RateLimitHeaders, Usage

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "BatchOptions",
    "Cancel",
    "Heartbeat",
    "Outcome",
    "Ready",
    "StartupFailed",
    "Task",
    "Throttled",
]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """Parent -> worker, before the first task of a batch: how to treat its results.

    `postprocess` is the caller's callable, cloudpickled (so lambdas and closures work),
    or None to return the text as is.
    """

    batch: int
    postprocess: bytes | None
    rich: bool = False  # send `Result` objects instead of bare values


@dataclass(frozen=True, slots=True)
class Task:
    """Parent -> worker: run the request pickled in `payload`, the `index`-th of `batch`.

    The request travels pickled on its own, so that one which cannot be pickled (or
    unpickled in the worker) fails its own index, not the message carrying many tasks.
    """

    batch: int
    index: int
    payload: bytes

    @staticmethod
    def pickle_request(request: AnyRequest) -> bytes:
        """The payload of a request; raises ResultTransferError naming why it cannot go."""
        try:
            return pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise ResultTransferError(f"the request cannot be pickled: {exc!r}") from None

    def request(self) -> AnyRequest:
        """The request; raises ResultTransferError when it cannot be unpickled here."""
        try:
            request: AnyRequest = pickle.loads(self.payload)
        except Exception as exc:
            raise ResultTransferError(
                f"the request cannot be unpickled in the worker: {exc!r}", index=self.index
            ) from None
        return request


@dataclass(frozen=True, slots=True)
class Cancel:
    """Parent -> worker: drop every task of batch `batch`; the caller stopped listening."""

    batch: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> parent: imports done, client built; tasks are being served."""

    pid: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Worker -> parent, from the event loop every `HEARTBEAT_INTERVAL_S`: still alive.

    `postprocess_busy_s` is how long the running postprocess call has taken so far, so
    the parent can tell a stuck postprocess from a busy one.
    """

    postprocess_busy_s: float


HEARTBEAT_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class Throttled:
    """Worker -> parent, at once: a 429 arrived; `retry_after_s` is what the server asked."""

    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class StartupFailed:
    """Worker -> parent, just before exiting: why the worker could not start."""

    error: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Worker -> parent: the result of one task.

    The value travels pickled inside `payload`, so that a value which fails to unpickle
    in the parent costs that index an error, never the whole message.
    """

    batch: int
    index: int
    payload: bytes
    attempts: int = 1
    usage: Usage | None = None  # for the batch summary and the token budget
    rate_limits: RateLimitHeaders | None = None  # the answer's x-ratelimit-* headers

    @classmethod
    def of(
        cls,
        batch: int,
        index: int,
        value: Any,
        attempts: int = 1,
        usage: Usage | None = None,
        rate_limits: RateLimitHeaders | None = None,
    ) -> Outcome:
        """Pickle `value`; a value that cannot be pickled becomes a ResultTransferError."""
        try:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # any pickling failure, whatever its type
            error = ResultTransferError(
                f"the result ({type(value).__name__}) cannot be pickled: {exc!r}", index=index
            )
            payload = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(batch, index, payload, attempts, usage, rate_limits)

    def value(self) -> Any:
        """Unpickle the value; a failure becomes a ResultTransferError for this index."""
        try:
            return pickle.loads(self.payload)
        except Exception as exc:
            return ResultTransferError(f"the result cannot be unpickled: {exc!r}", index=self.index)
