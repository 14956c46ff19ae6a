"""The messages parent and workers exchange, and the constants both sides agree on.

See the diagram at the top of `pool.py`. Each message is a small frozen dataclass. Both
directions send a list of messages per pipe write, so that under load one system call and
one pickle carry many items. One `Task` is one attempt: the parent decides about retries.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle

from .._pickling import pickles_fast
from ..errors import ResultTransferError
from ..request import AnyRequest
from ..results import Result

__all__ = [
    "EXIT_OK",
    "EXIT_STARTUP_FAILED",
    "HEARTBEAT_INTERVAL_S",
    "BatchOptions",
    "Cancel",
    "Exit",
    "Heartbeat",
    "Outcome",
    "Postprocess",
    "Ready",
    "StartupFailed",
    "Task",
]

# A worker's exit codes: served until told to stop / could not start (after StartupFailed).
EXIT_OK = 0
EXIT_STARTUP_FAILED = 3
# How often a busy worker tells the parent it is alive (the watchdog allows `hang_timeout`).
HEARTBEAT_INTERVAL_S = 0.5

# What `postprocess` is: the answer's text (an embedding's vector) in, anything picklable
# out (run in a worker).
Postprocess = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """Parent -> worker, before the first task of a batch: how to treat its results.

    Parameters:
        batch_id: the batch the following tasks belong to.
        postprocess: the caller's callable, cloudpickled (lambdas and closures work), or
            None to return the text as is.
        with_body: send the whole answer body back (rich results need it); else only
            what the plain value and the accounting need.
        service_tier: sent in every body (``"flex"``), unless a task says `standard`.
        timeout: seconds an attempt may take, instead of the pool's `timeout`.
        prompt_cache_key: give each OpenAI-routed request a ``prompt_cache_key`` of its
            prefix (`prefixes.py`), unless its body has one.
    """

    batch_id: int
    postprocess: bytes | None
    with_body: bool = False
    service_tier: str | None = None
    timeout: float | None = None
    prompt_cache_key: bool = False


@pickles_fast
@dataclass(frozen=True, slots=True)
class Task:
    """Parent -> worker: make attempt `attempt` of request `index` of batch `batch_id`.

    The request travels pickled on its own, so that one which cannot be pickled (or
    unpickled in the worker) fails its own index, not the message carrying many tasks.
    A `replay` task carries an answer from the response cache instead (a `Result`): the
    worker only runs the batch's postprocess on it. A `standard` task goes at the
    standard tier whatever the batch's `service_tier` (flex gave up on it). `endpoint`
    is the number of the pool's ``base_url`` the attempt goes to.
    """

    batch_id: int
    index: int
    attempt: int
    payload: bytes
    replay: bool = False
    standard: bool = False
    endpoint: int = 0

    @staticmethod
    def pickle_payload(value: AnyRequest | Result, index: int = -1) -> bytes:
        """The payload of a request (or replay); raises ResultTransferError (for `index`) if
        it cannot go.

        A request that carries a class (a pydantic ``response_format``) goes by
        cloudpickle, which sends a class defined in ``__main__`` or a notebook by value;
        everything else by plain pickle, which is faster.
        """
        if isinstance(getattr(value, "response_format", None), type):
            try:
                return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as exc:
                raise ResultTransferError(
                    f"the request cannot be pickled: {exc!r}", index=index
                ) from None
        return _dumps(value, "the request", index)

    def request(self) -> Any:
        """The request (or, for a replay, the `Result`); raises ResultTransferError when
        it cannot be unpickled here."""
        try:
            return pickle.loads(self.payload)
        except Exception as exc:
            raise ResultTransferError(
                f"the request cannot be unpickled in the worker: {exc!r}", index=self.index
            ) from None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Parent -> worker: drop every task of batch `batch_id` (the caller stopped
    listening), or only attempt `attempt` of request `index` (its duplicate answered)."""

    batch_id: int
    index: int | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> parent: imports done, client built; tasks are being served."""

    pid: int


@dataclass(frozen=True, slots=True)
class Exit:
    """How a worker ended: its exit code, whether it had started, why it was ended."""

    exitcode: int | None
    was_ready: bool
    hung: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Worker -> parent, every `HEARTBEAT_INTERVAL_S` while it has tasks: still alive.

    `postprocess_busy_s` is how long the running postprocess call has taken so far, so
    the parent can tell a stuck postprocess from a busy one.
    """

    postprocess_busy_s: float


@dataclass(frozen=True, slots=True)
class StartupFailed:
    """Worker -> parent, just before exiting: why the worker could not start."""

    error: str


@pickles_fast
@dataclass(frozen=True, slots=True)
class Outcome:
    """Worker -> parent: how one attempt ended, as a `Result`.

    What the caller's code made (what `postprocess` returned, an instance of a pydantic
    ``response_format``) travels pickled on its own in `output_payload`, so that a value
    which fails to unpickle in the parent costs that index an error, never the whole
    message; everything else in a `Result` is plain data and our own exceptions.

    Parameters:
        batch_id, index, attempt: the `Task` this answers.
        result: how the attempt ended (its text or error, usage, ids, latency).
        pause_s: how long the answer's ``x-ratelimit-*`` headers ask the pool to hold
            new requests (0: they do not).
        output_payload: the pickled ``(output, parsed)`` of the caller's code, or None.
    """

    batch_id: int
    index: int
    attempt: int
    result: Result
    pause_s: float = 0.0
    output_payload: bytes | None = None

    @classmethod
    def of(
        cls, task: Task, result: Result, pause_s: float = 0.0, postprocessed: bool = False
    ) -> Outcome:
        """The outcome of `task`; the caller's objects are pickled apart (see above)."""
        theirs = postprocessed or not isinstance(result.parsed, _PLAIN)
        if not theirs or result.error is not None:
            return cls(task.batch_id, task.index, task.attempt, result, pause_s)
        what = f"the result ({type(result.output).__name__})"
        try:
            payload = _dumps((result.output, result.parsed), what)
        except ResultTransferError as error:
            error.index = task.index
            failed = replace(result, output=None, parsed=None, error=error)
            return cls(task.batch_id, task.index, task.attempt, failed, pause_s)
        without = replace(result, output=None, parsed=None)
        return cls(task.batch_id, task.index, task.attempt, without, pause_s, payload)

    def value(self) -> Result:
        """The attempt's `Result`, the caller's objects unpickled here.

        An object that cannot be unpickled becomes a ResultTransferError for this index.
        """
        if self.output_payload is None:
            return self.result
        try:
            output, parsed = pickle.loads(self.output_payload)
        except Exception as exc:
            error = ResultTransferError(
                f"the result cannot be unpickled: {exc!r}", index=self.index
            )
            return replace(self.result, error=error)
        return replace(self.result, output=output, parsed=parsed)


# What JSON parses to: values that pickle and unpickle anywhere.
_PLAIN = (dict, list, str, int, float, bool, type(None))


def _dumps(value: object, what: str, index: int = -1) -> bytes:
    """Pickle `value`, falling back to cloudpickle for what plain pickle cannot name.

    A class defined in ``__main__`` or a notebook reaches a worker by value (cloudpickle);
    its instances then only pickle the same way, and cloudpickle's class tracking gives
    the parent back its own class.
    """
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    try:
        return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:  # any pickling failure, whatever its type
        raise ResultTransferError(f"{what} cannot be pickled: {exc!r}", index=index) from None
