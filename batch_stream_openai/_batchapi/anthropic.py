"""Anthropic's Message Batches, through the anthropic SDK (a `BatchProvider`).

A job's input lines are Message Batches requests (``{"custom_id", "params"}``, the params
made from the chat body by `messages_params`), sent whole to
``POST /v1/messages/batches`` (no file to upload). Its states are read in OpenAI's words:
``in_progress``, ``cancelling``, and once ``ended``: ``cancelled`` if it was cancelled,
``expired`` if lines expired, else ``completed``. Its results stream (JSONL, in any
order) is read line by line and written as OpenAI output lines: a ``succeeded`` message
as the Chat Completions answer LiteLLM would make of it, an ``errored`` line as its
status and error; ``canceled`` and ``expired`` lines are left out, so the job's status
decides what becomes of them, as for OpenAI's.

The SDK reads its key (``ANTHROPIC_API_KEY``) and endpoint (``ANTHROPIC_BASE_URL``) from
the environment, and is imported when a batch first has an Anthropic job. Batches carry
no metadata: a run that died between creating a job and writing its id down finds it
again as the oldest batch created since the job was recorded with as many requests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._wire.anthropic import chat_completion, messages_params
from ..errors import RequestError
from .provider import JobState, chat_line, job_refusal, retrying, stainless_transient

if TYPE_CHECKING:
    from collections.abc import Callable

    import anthropic
    from anthropic.types.messages import MessageBatch

    from .journal import JobRecord

__all__ = ["AnthropicBatches"]

_T = TypeVar("_T")
# An errored line's error type, as the status it stands for (retryable or not).
_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# How far before its record a job found again may have been created (clocks differ).
_CLOCK_SLACK_S = 60.0


class AnthropicBatches:
    """Anthropic's Message Batches (see the module docstring).

    Parameters:
        timeout: seconds one call may take.
    """

    name = "anthropic"
    uploads = False
    # The API takes 100,000; the parent holds a job's requests while creating it, so
    # fewer bound its memory (BENCHMARKS K: RSS follows the size of the job being read).
    max_lines = 20_000
    max_bytes = 250 * 2**20  # the API takes 256 MB a batch; a margin for the framing

    def __init__(self, timeout: float = 600.0) -> None:
        self.secret = os.environ.get("ANTHROPIC_API_KEY")
        self._timeout = timeout
        self._sdk: anthropic.Anthropic | None = None
        self._retrying = retrying(stainless_transient("anthropic"))

    def __repr__(self) -> str:
        return "<AnthropicBatches>"

    @staticmethod
    def line(index: int, request: Any) -> tuple[str, str, bytes]:
        return chat_line(
            index,
            request,
            "Anthropic's Message Batches",
            lambda body: {"custom_id": str(index), "params": messages_params(body)},
        )

    def upload(self, path: Path) -> str:
        raise NotImplementedError("Message Batches take their requests inline")

    def create(self, record: JobRecord, path: Path) -> str:
        with open(path, "rb") as lines:
            requests = [json.loads(line) for line in lines]
        return self._call(lambda sdk: sdk.messages.batches.create(requests=requests).id)

    def find(self, record: JobRecord, lines: int) -> str | None:
        def oldest_match(sdk: anthropic.Anthropic) -> str | None:
            found = None
            for batch in sdk.messages.batches.list(limit=100):  # newest first, every page
                if batch.created_at.timestamp() < record.created - _CLOCK_SLACK_S:
                    break
                if _total(batch) == lines:
                    found = batch.id
            return found

        return self._call(oldest_match)

    def state(self, batch_id: str) -> JobState:
        batch = self._call(lambda sdk: sdk.messages.batches.retrieve(batch_id))
        counts = batch.request_counts
        return JobState(
            _status(batch),
            answered=counts.succeeded + counts.errored,
            total=_total(batch),
            created_at=batch.created_at.timestamp(),
        )

    def download(self, state: JobState, batch_id: str, folder: Path) -> None:
        def read(sdk: anthropic.Anthropic) -> None:
            results = sdk.messages.batches.with_streaming_response.results(batch_id)
            with results as response, open(folder / "output.jsonl", "wb") as output:
                for raw in response.iter_lines():
                    if raw.strip() and (line := _output_line(json.loads(raw))) is not None:
                        output.write(json.dumps(line).encode() + b"\n")

        self._call(read)

    def clean_up(self, record: JobRecord, state: JobState) -> None:
        self._call(lambda sdk: sdk.messages.batches.delete(str(record.batch_id)))

    def cancel(self, batch_id: str) -> None:
        self._call(lambda sdk: sdk.messages.batches.cancel(batch_id))

    def refusal(self, error: Exception) -> RequestError:
        import anthropic

        if not isinstance(error, anthropic.APIError):
            raise error
        return job_refusal(error, self.secret, "Anthropic's Message Batches API")

    def _call(self, call: Callable[[anthropic.Anthropic], _T]) -> _T:
        return self._retrying(call, self._client())

    def _client(self) -> anthropic.Anthropic:
        if self._sdk is None:
            import anthropic

            self._sdk = anthropic.Anthropic(max_retries=0, timeout=self._timeout)
        return self._sdk


def _total(batch: MessageBatch) -> int:
    counts = batch.request_counts
    return counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired


def _status(batch: MessageBatch) -> str:
    if batch.processing_status != "ended":
        return "cancelling" if batch.processing_status == "canceling" else "in_progress"
    if batch.cancel_initiated_at is not None:
        return "cancelled"
    return "expired" if batch.request_counts.expired else "completed"


def _output_line(line: dict[str, Any]) -> dict[str, Any] | None:
    """A results line as an OpenAI output line (None: canceled or expired)."""
    result = line.get("result") or {}
    if result.get("type") == "succeeded":
        message = result["message"]
        response = {
            "status_code": 200,
            "request_id": message.get("id"),
            "body": chat_completion(message),
        }
        return {"custom_id": line["custom_id"], "response": response, "error": None}
    if result.get("type") != "errored":
        return None
    error = (result.get("error") or {}).get("error") or {}
    kind = str(error.get("type") or "api_error")
    detail = {"message": error.get("message") or kind, "type": kind, "code": kind}
    response = {"status_code": _STATUSES.get(kind, 500), "body": {"error": detail}}
    return {"custom_id": line["custom_id"], "response": response, "error": None}
