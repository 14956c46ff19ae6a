"""Gemini's batch mode, through the google-genai SDK (a `BatchProvider`).

A job's input lines are ``{"key", "request"}`` (the request made from the chat body by
`inline_request`). A job of up to 20 MB and 20,000 lines goes inline: its requests sent
whole to ``batches.create``, each line's key in its ``metadata``, its answers inline in
the finished job. A larger one goes as a JSONL file (the requests in the API's own form,
`file_request`) uploaded through the File API, and its answers come back as a file,
downloaded to disk and read line by line, so neither is ever held whole in memory. The
job's key is its ``display_name`` (so a run that died before writing a job's id down
finds it again by name). States are read in OpenAI's words; a job still running past
its window (48 hours; python-genai #2974) is cancelled and read as ``expired``, so its
lines go again. Each response is written as an OpenAI output line: a response as the
Chat Completions answer LiteLLM would make of it, an error as its status.

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

from .._wire.gemini import GEMINI_PREFIX, chat_completion, file_request, inline_request
from ..errors import APIError, RequestError
from .provider import FINAL, JobState, chat_line, job_refusal, retrying

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
# A job goes inline up to these (the API takes 20 MB inline; the SDK holds inline requests
# and answers as pydantic objects, so fewer lines bound the parent's memory, BENCHMARKS K).
_INLINE_BYTES = 19 * 2**20
_INLINE_LINES = 20_000


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
    uploads = True  # a job larger than what goes inline
    max_lines = 50_000
    max_bytes = 190 * 2**20  # the API takes files up to 2 GB: smaller jobs run side by side

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

    def upload(self, path: Path) -> str | None:
        if _goes_inline(path):
            return None
        upload = path.with_name("upload.jsonl")
        with open(path, "rb") as lines, open(upload, "wb") as converted:
            for line in lines:
                request = json.loads(line)
                request["request"] = file_request(request["request"])
                converted.write(json.dumps(request).encode() + b"\n")
        key = path.parent.name  # the job's folder is named after its key
        config: types.UploadFileConfigDict = {"mime_type": "jsonl", "display_name": key}
        try:
            return self._call(lambda sdk: str(sdk.files.upload(file=upload, config=config).name))
        finally:
            upload.unlink()

    def create(self, record: JobRecord, path: Path) -> str:
        source: str | list[types.InlinedRequestDict] = str(record.file_id or "")
        if not record.file_id:
            with open(path, "rb") as lines:
                requests = [_with_key(json.loads(line)) for line in lines]
            source = cast("list[types.InlinedRequestDict]", requests)
        model = record.model.removeprefix(GEMINI_PREFIX)
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
        responses = job.dest.file_name if job.dest is not None else None
        return JobState(status, created_at=created, failure=failure, results=(responses,))

    def download(self, state: JobState, batch_id: str, folder: Path) -> None:
        job = self._ended.pop(batch_id, None) or self._call(
            lambda sdk: sdk.batches.get(name=batch_id)
        )
        model = str(job.model or "")
        with open(folder / "output.jsonl", "wb") as output:
            for answer in self._answers(job, folder):
                if (line := _output_line(answer, model)) is not None:
                    output.write(json.dumps(line).encode() + b"\n")

    def _answers(self, job: types.BatchJob, folder: Path) -> Iterator[dict[str, Any]]:
        """A final job's answers, each as an inline response's fields (a key, and a
        response or an error): from its responses file, downloaded and read line by line,
        or from the job itself."""
        from google.genai import types

        name = job.dest.file_name if job.dest is not None else None
        if name is None:
            for answer in (job.dest.inlined_responses if job.dest is not None else None) or []:
                yield answer.model_dump(mode="json", exclude_none=True)
            return
        responses = folder / "responses.jsonl"
        self._call(lambda sdk: sdk.files.download(file=name, destination=str(responses)))
        with open(responses, "rb") as lines:
            for line in lines:
                answer = json.loads(line)
                if "response" in answer:  # the API's camelCase, as the SDK reads it
                    parsed = types.GenerateContentResponse.model_validate(answer["response"])
                    answer["response"] = parsed.model_dump(mode="json", exclude_none=True)
                yield {**answer, "metadata": {"key": answer.get("key")}}
        responses.unlink()

    def clean_up(self, record: JobRecord, state: JobState) -> None:
        self._call(lambda sdk: sdk.batches.delete(name=str(record.batch_id)))
        for name in (record.file_id, *state.results):
            if name:
                self._delete_file(name)

    def _delete_file(self, name: str) -> None:
        self._call(lambda sdk: sdk.files.delete(name=name))

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


def _goes_inline(path: Path) -> bool:
    """Whether a job's input is small enough to go inline."""
    if path.stat().st_size > _INLINE_BYTES:
        return False
    with open(path, "rb") as lines:
        return sum(1 for _ in lines) <= _INLINE_LINES


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
