"""Gemini's batch mode, through the google-genai SDK (a `BatchProvider`).

A job's input lines are inline requests (``{"key", "request"}``, the request made from
the chat body by `inline_request`), sent whole to ``batches.create`` with each line's key
in its ``metadata`` and the job's key as its ``display_name`` (so a run that died before
writing a job's id down finds it again by name). Inline requests take up to 20 MB a
batch, so a job is cut there (more jobs, no file to upload). States are read in OpenAI's
words; a job still running past its window (48 hours; python-genai #2974) is cancelled
and read as ``expired``, so its lines go again. Each inline response is written as an
OpenAI output line: a response as the Chat Completions answer LiteLLM would make of it,
an error as its status.

The SDK reads its key (``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``) and endpoint
(``GOOGLE_GEMINI_BASE_URL``) from the environment, and is imported when a batch first has
a Gemini job. Batch mode is a ``v1beta`` API: the client is pinned to it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._wire.gemini import GEMINI_PREFIX, chat_completion, inline_request
from ..errors import APIError, RequestError
from .provider import FINAL, JobState, chat_line, job_refusal, retrying

if TYPE_CHECKING:
    from collections.abc import Callable

    from google import genai
    from google.genai import types

    from .journal import JobRecord

__all__ = ["GeminiBatches"]

_T = TypeVar("_T")
_STATES = {
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
    "JOB_STATE_CANCELLING": "cancelling",
}
# An inline error's google.rpc code (a gRPC code: the JobError the SDK gives keeps no
# status name), as its name and the HTTP status it stands for.
_CODES = {3: ("INVALID_ARGUMENT", 400), 9: ("FAILED_PRECONDITION", 400),
          11: ("OUT_OF_RANGE", 400), 16: ("UNAUTHENTICATED", 401),
          7: ("PERMISSION_DENIED", 403), 5: ("NOT_FOUND", 404),
          8: ("RESOURCE_EXHAUSTED", 429), 2: ("UNKNOWN", 500), 13: ("INTERNAL", 500),
          14: ("UNAVAILABLE", 503), 4: ("DEADLINE_EXCEEDED", 504)}  # fmt: skip
_WINDOW_S = 48 * 3600.0


def _transient(error: BaseException) -> bool:
    import httpx
    from google.genai import errors

    if isinstance(error, httpx.TransportError):  # a lost connection, a timeout
        return True
    return isinstance(error, errors.APIError) and (error.code == 429 or error.code >= 500)


class GeminiBatches:
    """Gemini's batch mode (see the module docstring).

    Parameters:
        timeout: seconds one call may take.
    """

    name = "gemini"
    uploads = False
    # The SDK holds a job's requests (and then its answers) as pydantic objects while it
    # sends (reads) them: fewer lines bound the parent's memory (BENCHMARKS K).
    max_lines = 20_000
    max_bytes = 19 * 2**20  # inline requests: 20 MB a batch, with a margin

    def __init__(self, timeout: float = 600.0) -> None:
        self.secret = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        self._timeout = timeout
        self._sdk: genai.Client | None = None
        self._retrying = retrying(_transient)
        self._ended: dict[str, types.BatchJob] = {}  # final jobs, until downloaded

    def __repr__(self) -> str:
        return "<GeminiBatches>"

    @staticmethod
    def line(index: int, request: Any) -> tuple[str, str, bytes]:
        return chat_line(
            index,
            request,
            "Gemini's batch mode",
            lambda body: {"key": str(index), "request": inline_request(body)},
        )

    def upload(self, path: Path) -> str:
        raise NotImplementedError("batch mode's requests go inline")

    def create(self, record: JobRecord, path: Path) -> str:
        with open(path, "rb") as lines:
            requests = [_with_key(json.loads(line)) for line in lines]
        model = record.model.removeprefix(GEMINI_PREFIX)
        source = cast("list[types.InlinedRequestDict]", requests)
        config: types.CreateBatchJobConfigDict = {"display_name": record.key}
        return self._call(
            lambda sdk: str(sdk.batches.create(model=model, src=source, config=config).name)
        )

    def find(self, record: JobRecord, lines: int) -> str | None:
        def named(sdk: genai.Client) -> str | None:
            for job in sdk.batches.list(config={"page_size": 100}):
                if job.display_name == record.key:
                    return str(job.name)
            return None

        return self._call(named)

    def state(self, batch_id: str) -> JobState:
        job = self._call(lambda sdk: sdk.batches.get(name=batch_id))
        state = str(getattr(job.state, "value", job.state))
        created = job.create_time.timestamp() if job.create_time else time.time()
        status = _STATES.get(state, "in_progress")
        if status == "in_progress" and time.time() - created > _WINDOW_S:
            self.cancel(batch_id)  # past its window: its lines go again
            status = "expired"
        if status in FINAL:  # its answers came with it: `download` reads them from here
            self._ended[batch_id] = job
        failure = None
        if status == "failed":
            message = f"the batch job {batch_id} failed ({job.error or 'no reason given'})"
            failure = APIError(message, status_code=500)
        return JobState(status, created_at=created, failure=failure)

    def download(self, state: JobState, batch_id: str, folder: Path) -> None:
        job = self._ended.pop(batch_id, None) or self._call(
            lambda sdk: sdk.batches.get(name=batch_id)
        )
        answers = (job.dest.inlined_responses if job.dest is not None else None) or []
        model = str(job.model or "")
        with open(folder / "output.jsonl", "wb") as output:
            for answer in answers:
                line = _output_line(answer.model_dump(mode="json", exclude_none=True), model)
                if line is not None:
                    output.write(json.dumps(line).encode() + b"\n")

    def clean_up(self, record: JobRecord, state: JobState) -> None:
        self._call(lambda sdk: sdk.batches.delete(name=str(record.batch_id)))

    def cancel(self, batch_id: str) -> None:
        self._call(lambda sdk: sdk.batches.cancel(name=batch_id))

    def refusal(self, error: Exception) -> RequestError:
        import httpx
        from google.genai import errors

        if not isinstance(error, (errors.APIError, httpx.HTTPError)):
            raise error
        return job_refusal(error, self.secret, "Gemini's batch mode")

    def _call(self, call: Callable[[genai.Client], _T]) -> _T:
        return self._retrying(call, self._client())

    def _client(self) -> genai.Client:
        if self._sdk is None:
            from google import genai
            from google.genai import types

            options = types.HttpOptions(api_version="v1beta", timeout=int(self._timeout * 1000))
            self._sdk = genai.Client(api_key=self.secret, http_options=options)
        return self._sdk


def _with_key(line: dict[str, Any]) -> dict[str, Any]:
    """An input line as the SDK's inline request: its key in the metadata, inline images
    as bytes (the SDK encodes them again)."""
    request = line["request"]
    for content in request["contents"]:
        for part in content["parts"]:
            if "inline_data" in part:
                data = part["inline_data"]
                part["inline_data"] = {**data, "data": base64.b64decode(data["data"])}
    return {**request, "metadata": {"key": line["key"]}}


def _output_line(answer: dict[str, Any], model: str) -> dict[str, Any] | None:
    """An inline response as an OpenAI output line (None: it names no line)."""
    key = (answer.get("metadata") or {}).get("key")
    if key is None:
        return None
    if (error := answer.get("error")) is not None:
        kind, status = _CODES.get(int(error.get("code") or 2), ("UNKNOWN", 500))
        detail = {"message": error.get("message") or kind, "type": kind, "code": kind}
        return {"custom_id": key, "response": {"status_code": status, "body": {"error": detail}}}
    body = chat_completion(answer.get("response") or {}, model.removeprefix("models/"))
    response = {"status_code": 200, "request_id": body.get("id"), "body": body}
    return {"custom_id": key, "response": response, "error": None}
