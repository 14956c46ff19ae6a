"""Every exception batch-stream-openai raises or yields, in one place.

The hierarchy::

    BatchStreamError                 root of everything below
     +-- RequestError                one request failed; yielded for its index, never raised
     |    +-- APIError               the provider answered with an error status
     |    +-- APITimeoutError        no answer within `timeout` on the last attempt
     |    +-- APIConnectionError     the connection failed or was dropped
     |    +-- EmptyResponseError     the provider answered but with no text (tool call, ...)
     |    |    +-- RefusalError      the model refused; `refusal` holds its words
     |    +-- ParseError             the answer does not validate against the pydantic class
     |    +-- ProviderNotInstalledError   the model needs the `[litellm]` extra
     |    +-- PostprocessError       the caller's postprocess raised in the worker
     |    +-- ResultTransferError    the result could not cross the process boundary
     |    +-- WorkerCrashedError     the request's worker died again and again
     |    +-- BudgetExceededError    not sent: it could take spend past `max_cost`
     |    +-- DeadlineExceededError  not done by the batch's `deadline`
     +-- PoolError                   the pool itself cannot work; raised to the caller
     |    +-- WorkerStartupError     workers exit before they are ready
     |    +-- PoolClosedError        the pool was used after close()
     +-- BatchFileError              a Batch API JSONL file cannot be used as given (CLI)
     |    +-- InvalidInputError      input lines that cannot be sent (a `LineError` each)
     |    +-- ChangedRequestsError   done custom_ids whose request changed since
     +-- CacheError                  the response cache file cannot be used

Outside the tree: `DiskFullError`, an `OSError` with ``errno.ENOSPC`` (as code that
handles a full disk expects), when a file run's output has no room.

Every exception here survives pickling with all its fields, so a worker can send it to
the parent as plain data; SDK exceptions hold httpx objects and do not (openai#2629).
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "BatchFileError",
    "BatchStreamError",
    "BudgetExceededError",
    "CacheError",
    "ChangedRequestsError",
    "DeadlineExceededError",
    "DiskFullError",
    "EmptyResponseError",
    "InvalidInputError",
    "LineError",
    "ParseError",
    "PoolClosedError",
    "PoolError",
    "PostprocessError",
    "ProviderNotInstalledError",
    "RefusalError",
    "RemoteTraceback",
    "RequestError",
    "ResultTransferError",
    "WorkerCrashedError",
    "WorkerStartupError",
]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, shown as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    if state.get("remote_traceback"):
        exc.__cause__ = RemoteTraceback(state["remote_traceback"])
    return exc


class BatchStreamError(Exception):
    """Root of every exception of this library."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors break the default `cls(*args)` unpickling.
        return (_rebuild, (type(self), self.args, self.__dict__))


class RequestError(BatchStreamError):
    """One request failed; the pool yields it for that index and goes on.

    Parameters:
        message: what went wrong, safe to log (no API key).
        index: position of the request in the caller's iterable.
        attempts: how many times the request was sent.
        retryable: whether another attempt might have succeeded (e.g. 429, 503).
    """

    def __init__(
        self, message: str, *, index: int = -1, attempts: int = 0, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.attempts = attempts
        self.retryable = retryable

    def __str__(self) -> str:
        return f"request {self.index}: {self.message} (attempts: {self.attempts})"


class APIError(RequestError):
    """The provider answered with an error status.

    Parameters:
        status_code: the HTTP status (e.g. 400, 429, 503).
        code: the provider's error code when it gave one (e.g. ``"insufficient_quota"``).
        body: the error answer's JSON, e.g. ``{"error": {"message": ..., "type": ...}}``.
        request_id: the ``x-request-id`` of the failed HTTP request.
        retry_after_s: the wait the server asked for (``retry-after-ms``/``retry-after``).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        body: dict[str, Any] | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        index: int = -1,
        attempts: int = 0,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, index=index, attempts=attempts, retryable=retryable)
        self.status_code = status_code
        self.code = code
        self.body = body
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def for_index(self, index: int) -> APIError:
        """A copy of this error for request `index` (one error of a whole job, say)."""
        return APIError(
            self.message,
            status_code=self.status_code,
            code=self.code,
            body=self.body,
            request_id=self.request_id,
            index=index,
            attempts=max(1, self.attempts),
            retryable=self.retryable,
        )

    def __str__(self) -> str:
        return (
            f"request {self.index}: HTTP {self.status_code}: {self.message} "
            f"(attempts: {self.attempts})"
        )


class APIConnectionError(RequestError):
    """The connection to the provider failed or was dropped."""


class APITimeoutError(APIConnectionError):
    """The provider did not answer within the configured `timeout`."""


class EmptyResponseError(RequestError):
    """The provider answered without text (a refusal, a tool call, a filtered answer)."""


class RefusalError(EmptyResponseError):
    """The model refused to answer.

    Parameters:
        refusal: the refusal's text, as the model wrote it.
    """

    def __init__(self, message: str, *, refusal: str = "", index: int = -1, attempts: int = 0):
        super().__init__(message, index=index, attempts=attempts)
        self.refusal = refusal


class ParseError(RequestError):
    """The answer is not valid for the pydantic class in ``response_format``.

    Parameters:
        text: the answer's raw text.
        validation_error: pydantic's message saying what does not validate.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str = "",
        validation_error: str = "",
        index: int = -1,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, index=index, attempts=attempts)
        self.text = text
        self.validation_error = validation_error


class ProviderNotInstalledError(RequestError):
    """The model routes through LiteLLM, which is not installed."""


class PostprocessError(RequestError):
    """The `postprocess` callable raised; its traceback from the worker is the cause.

    Parameters:
        exception_type: the name of the exception `postprocess` raised.
        remote_traceback: its formatted traceback, as seen in the worker.
    """

    def __init__(
        self,
        message: str,
        *,
        exception_type: str,
        remote_traceback: str = "",
        index: int = -1,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, index=index, attempts=attempts, retryable=False)
        self.exception_type = exception_type
        self.remote_traceback = remote_traceback


class ResultTransferError(RequestError):
    """The result (or its exception) could not be pickled across the process boundary."""


class WorkerCrashedError(RequestError):
    """The worker running this request died, as did the workers it was re-sent to.

    Parameters:
        exitcode: the last worker's exit code; negative means killed by that signal.
    """

    def __init__(
        self, message: str, *, exitcode: int | None, index: int = -1, attempts: int = 0
    ) -> None:
        super().__init__(message, index=index, attempts=attempts, retryable=False)
        self.exitcode = exitcode

    @classmethod
    def describe(
        cls, index: int, exitcode: int | None, crashes: int, hung: str | None
    ) -> WorkerCrashedError:
        """The error for a request whose last worker ended so: what happened, likely why."""
        if hung is not None:
            how = f"stopped responding ({hung}) and was ended by the watchdog"
        elif exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode)
            how = f"was killed by signal {-exitcode} ({_SIGNAL_CAUSES.get(name, name.name)})"
        elif exitcode == 0:
            how = "exited with code 0 while it still owed results (sys.exit or os._exit?)"
        else:
            how = f"exited with code {exitcode}"
        return cls(
            f"the worker running this request {how}; {crashes} workers died running it",
            exitcode=exitcode,
            index=index,
            attempts=crashes,
        )


_SIGNAL_CAUSES = {
    signal.SIGKILL: "SIGKILL: often the out-of-memory killer, or an operator",
    signal.SIGSEGV: "SIGSEGV: a crash in native code, e.g. a C extension in postprocess",
    signal.SIGABRT: "SIGABRT: native code aborted",
    signal.SIGTERM: "SIGTERM",
    signal.SIGBUS: "SIGBUS: a bad memory access in native code",
}


class BudgetExceededError(RequestError):
    """The request was not sent: its worst-case cost could take spend past `max_cost`."""


class DeadlineExceededError(RequestError):
    """The request was not done by the batch's `deadline` (it was given up, or not sent)."""


class PoolError(BatchStreamError):
    """The pool cannot serve requests; raised to the caller, not yielded."""


class WorkerStartupError(PoolError):
    """Worker processes exit before they are ready; `cause` is what the last one said."""

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.args[0]}\n{self.cause}" if self.cause else str(self.args[0])


class PoolClosedError(PoolError):
    """The pool was used after it was closed."""


class BatchFileError(BatchStreamError):
    """The input or output file of `run_batch_file` cannot be used as given; nothing was sent."""


class CacheError(BatchStreamError):
    """The response cache file cannot be used (not a cache, corrupt, unreadable)."""


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one input line cannot be sent.

    Example:

    >>> str(LineError(3, "method must be 'POST', got 'GET'"))
    "line 3: method must be 'POST', got 'GET'"
    """

    number: int
    message: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.message}"


class InvalidInputError(BatchFileError):
    """Input lines that cannot be sent.

    Parameters:
        errors: the first invalid lines.
        count: how many lines are invalid in all.
    """

    def __init__(self, path: Path, errors: list[LineError], count: int) -> None:
        listed = "\n".join(f"  {path}:{error.number}: {error.message}" for error in errors)
        more = f"\n  ... and {count - len(errors)} more" if count > len(errors) else ""
        super().__init__(
            f"{count} invalid line(s) in {path}; nothing was sent (skip_invalid=True "
            f"sends the valid ones):\n{listed}{more}"
        )
        self.errors = errors
        self.count = count


class ChangedRequestsError(BatchFileError):
    """``custom_id``s already in the output whose request has changed since.

    Parameters:
        custom_ids: the first of them.
        count: how many in all.
    """

    def __init__(self, path: Path, custom_ids: list[str], count: int) -> None:
        more = f" and {count - len(custom_ids)} more" if count > len(custom_ids) else ""
        super().__init__(
            f"{count} custom_id(s) already in {path} were sent with a different request "
            f"({', '.join(map(repr, custom_ids))}{more}); nothing was sent. Use a new output "
            "file, or send them again with resend_changed=True: their new lines replace the old"
        )
        self.custom_ids = custom_ids
        self.count = count


class DiskFullError(OSError):
    """The output's file system has no room for what the run must write."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)
