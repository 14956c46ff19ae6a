"""The fake server's Batch API: files, jobs, and their life on a clock (child side).

Shapes follow the openai SDK's `FileObject` and `Batch` types. A job's status moves with
time since it was created, over `ServerSettings.batch_seconds`: ``validating`` (first
10%), ``in_progress`` (until 90%: its lines are answered in order, ``request_counts``
growing), ``finalizing``, then ``completed`` with an output file (status 200 lines) and
an error file (the other lines, their status and error body, like the real API's). Each
line is answered as the same request sent online would be, directives included.

Settings make jobs misbehave the ways real ones do: `batch_expire` (the next N expire
half way, with the lines done so far), `batch_refuse` (the next N jobs fail validation
with ``token_limit_exceeded``, as an enqueued-token limit does), `batch_fail_validation`
(the next N fail with ``invalid_request``), `batch_refuse_upload` (the next N uploads are
answered 413, as by a proxy's body size limit). A cancelled job keeps the lines it did. The
real limits are enforced: 50,000 lines and 200 MB per file, one model per file.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .answers import error_body
from .settings import ServerSettings

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_LINES", "BatchJobs", "batch_route"]

MAX_BATCH_LINES = 50_000
MAX_BATCH_BYTES = 200 * 2**20
_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
# Azure OpenAI's jobs name their endpoints without the version.
_AZURE_ENDPOINTS = {endpoint.removeprefix("/v1"): endpoint for endpoint in _ENDPOINTS}
# Offline answer of one line: (status, JSON body). The app provides it.
LineAnswer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


@dataclass
class _File:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Job:
    id: str
    input_file_id: str
    endpoint: str
    created: float  # monotonic
    created_at: int  # wall clock, for the API's timestamps
    lines: list[dict[str, Any]]
    metadata: dict[str, str] | None
    model: str | None
    fail_code: str | None = None  # fails validation with this code
    expires: bool = False
    cancelled: float | None = None  # monotonic time of the cancel request
    answers: list[dict[str, Any]] = field(default_factory=list)  # output/error lines so far
    output_file_id: str | None = None
    error_file_id: str | None = None
    final: str | None = None  # a status it has settled in for good


class BatchJobs:
    """Every file and job of one fake server, advanced lazily when they are read."""

    def __init__(self, settings: ServerSettings, answer: LineAnswer) -> None:
        self._settings = settings
        self.answer_line = answer
        self._files: dict[str, _File] = {}
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)
        self.calls: list[str] = []  # "POST /v1/batches", ... for tests
        self.deleted: list[str] = []  # file ids deleted, for tests

    # -- files ---------------------------------------------------------------------------

    def upload(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file = _File(f"file-{next(self._ids)}", data, filename, purpose, int(time.time()))
        self._files[file.id] = file
        return file.object()

    def file(self, file_id: str) -> dict[str, Any] | None:
        file = self._files.get(file_id)
        return file.object() if file is not None else None

    def content(self, file_id: str) -> bytes | None:
        file = self._files.get(file_id)
        return file.data if file is not None else None

    def delete(self, file_id: str) -> dict[str, Any] | None:
        if self._files.pop(file_id, None) is None:
            return None
        self.deleted.append(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- jobs ----------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /v1/batches: (status, the Batch or an error message)."""
        file = self._files.get(str(body.get("input_file_id")))
        endpoint = body.get("endpoint")
        if file is None:
            return 400, {"message": f"No such file: {body.get('input_file_id')!r}"}
        if endpoint not in _ENDPOINTS and endpoint not in _AZURE_ENDPOINTS:
            return 400, {"message": f"Invalid endpoint {endpoint!r}"}
        if body.get("completion_window") != "24h":
            return 400, {"message": "completion_window must be '24h'"}
        lines, problem = self._lines(file)
        job = _Job(
            f"batch_{next(self._ids)}",
            file.id,
            str(endpoint),
            time.monotonic(),
            int(time.time()),
            lines,
            body.get("metadata"),
            _model_of(lines),
        )
        job.fail_code = problem or self._next_failure()
        if self._settings.batch_expire >= 1:
            self._settings.batch_expire -= 1
            job.expires = True
        self._jobs[job.id] = job
        return 200, self.batch(job.id) or {}

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        self._advance(job)
        if job.final is None and job.cancelled is None:
            job.cancelled = time.monotonic()
        return self.batch(job_id)

    def batch(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        status = self._advance(job)
        return self._object(job, status)

    def listing(self) -> dict[str, Any]:
        data = [self.batch(job_id) for job_id in reversed(self._jobs)]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,  # type: ignore[index]
            "last_id": data[-1]["id"] if data else None,  # type: ignore[index]
            "has_more": False,
        }

    def records(self) -> list[dict[str, Any]]:
        """Every job as tests see it: its id, status, its first input line and every
        line's custom id, what it answered, the files deleted."""
        return [
            {
                "id": job.id,
                "status": self._advance(job),
                "model": job.model,
                "custom_ids": [line.get("custom_id") for line in job.lines],
                "first_line": job.lines[0] if job.lines else None,
                "answered": [answer["custom_id"] for answer in job.answers],
                "paid": [  # answered 200: billed
                    a["custom_id"] for a in job.answers if a["response"]["status_code"] == 200
                ],
                "input_file_id": job.input_file_id,
                "output_file_id": job.output_file_id,
                "error_file_id": job.error_file_id,
            }
            for job in self._jobs.values()
        ] + [{"deleted_files": list(self.deleted)}]

    def refuse_upload(self) -> bool:
        """Whether this upload is refused (`batch_refuse_upload`)."""
        if self._settings.batch_refuse_upload >= 1:
            self._settings.batch_refuse_upload -= 1
            return True
        return False

    def _next_failure(self) -> str | None:
        settings = self._settings
        if settings.batch_refuse >= 1:
            settings.batch_refuse -= 1
            return "token_limit_exceeded"
        if settings.batch_fail_validation >= 1:
            settings.batch_fail_validation -= 1
            return "invalid_request"
        return None

    def _lines(self, file: _File) -> tuple[list[dict[str, Any]], str | None]:
        """The file's request lines, and why the job must fail validation (or None)."""
        if len(file.data) > MAX_BATCH_BYTES:
            return [], "file_too_large"
        try:
            lines = [json.loads(raw) for raw in file.data.splitlines() if raw.strip()]
        except ValueError:
            return [], "invalid_json_line"
        if len(lines) > MAX_BATCH_LINES:
            return lines, "too_many_requests"
        models = {str((line.get("body") or {}).get("model")) for line in lines}
        if len(models) > 1:
            return lines, "mismatched_model"
        return lines, None

    def _advance(self, job: _Job) -> str:
        """Move `job` on to where its clock says it is; its status now."""
        if job.final is not None:
            return job.final
        duration = max(self._settings.batch_seconds, 0.001)
        elapsed = time.monotonic() - job.created
        if elapsed < 0.1 * duration:
            return "validating" if job.cancelled is None else self._settle(job, "cancelled")
        if job.fail_code is not None:
            return self._settle(job, "failed")
        done_by = min(elapsed, job.cancelled - job.created if job.cancelled else elapsed)
        expire_after = 0.5 * duration
        if job.expires and elapsed >= expire_after:
            done_by = min(done_by, expire_after)
        fraction = min(1.0, max(0.0, (done_by - 0.1 * duration) / (0.8 * duration)))
        self._answer_lines(job, math.floor(fraction * len(job.lines) + 1e-9))
        if job.cancelled is not None:
            return self._settle(job, "cancelled")
        if job.expires and elapsed >= expire_after:
            return self._settle(job, "expired")
        if elapsed < 0.9 * duration:
            return "in_progress"
        if elapsed < duration:
            return "finalizing"
        return self._settle(job, "completed")

    def _answer_lines(self, job: _Job, count: int) -> None:
        while len(job.answers) < count:
            line = job.lines[len(job.answers)]
            path = _AZURE_ENDPOINTS.get(job.endpoint, job.endpoint)
            status, body = self.answer_line(path, line.get("body") or {})
            job.answers.append(
                {
                    "id": f"batch_req_{next(self._ids)}",
                    "custom_id": line.get("custom_id"),
                    "response": {
                        "status_code": status,
                        "request_id": f"req_batch_{next(self._ids)}",
                        "body": body,
                    },
                    "error": None,
                }
            )

    def _settle(self, job: _Job, status: str) -> str:
        """Final: write the output and error files (what was answered) and stop."""
        job.final = status
        ok = [a for a in job.answers if a["response"]["status_code"] == 200]
        failed = [a for a in job.answers if a["response"]["status_code"] != 200]
        if ok:
            job.output_file_id = self._write(job, "output", ok)
        if failed:
            job.error_file_id = self._write(job, "error", failed)
        return status

    def _write(self, job: _Job, kind: str, answers: list[dict[str, Any]]) -> str:
        data = b"".join(json.dumps(a).encode() + b"\n" for a in answers)
        file = self.upload(data, f"{job.id}_{kind}.jsonl", "batch_output")
        return str(file["id"])

    def _object(self, job: _Job, status: str) -> dict[str, Any]:
        done = len(job.answers)
        failed = sum(1 for a in job.answers if a["response"]["status_code"] != 200)
        errors = None
        if status == "failed":
            message = {
                "token_limit_exceeded": "Enqueued token limit reached for this model.",
                "mismatched_model": "The provided model must be the same for all requests.",
                "too_many_requests": f"A batch may have at most {MAX_BATCH_LINES} requests.",
                "file_too_large": "The input file is larger than 200 MB.",
            }.get(job.fail_code or "", "The input file could not be validated.")
            errors = {
                "object": "list",
                "data": [{"code": job.fail_code, "message": message, "line": None, "param": None}],
            }
        stamp = job.created_at
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": job.endpoint,
            "model": job.model,
            "errors": errors,
            "input_file_id": job.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": stamp,
            "in_progress_at": stamp if status not in ("validating", "failed") else None,
            "expires_at": stamp + 86400,
            "finalizing_at": stamp if status in ("finalizing", "completed") else None,
            "completed_at": stamp if status == "completed" else None,
            "failed_at": stamp if status == "failed" else None,
            "expired_at": stamp if status == "expired" else None,
            "cancelling_at": stamp if job.cancelled is not None else None,
            "cancelled_at": stamp if status == "cancelled" else None,
            "request_counts": {
                "total": len(job.lines),
                "completed": done - failed,
                "failed": failed,
            },
            "metadata": job.metadata,
        }


def _model_of(lines: list[dict[str, Any]]) -> str | None:
    for line in lines:
        model = (line.get("body") or {}).get("model")
        if isinstance(model, str):
            return model
    return None


async def batch_route(jobs: BatchJobs, request: web.BaseRequest, path: str) -> web.Response:
    """The Batch API's routes: ``/v1/files[/{id}[/content]]`` and ``/v1/batches[...]``."""
    parts = path.strip("/").split("/")[1:]  # ["files", id, "content"], ["batches", id, ...]
    method = request.method
    found: Any = None
    if parts == ["files"] and method == "POST":
        found = await _upload(jobs, request)
        if jobs.refuse_upload():  # as a proxy in front of the API does past its body limit
            return web.Response(status=413, text=_TOO_LARGE, content_type="text/html")
        if found is None:
            return _json(400, json.loads(error_body(400, "'file' is required")))
    elif len(parts) == 2 and parts[0] == "files":
        found = jobs.file(parts[1]) if method == "GET" else jobs.delete(parts[1])
    elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
        content = jobs.content(parts[1])
        if content is not None:
            return web.Response(body=content, content_type="application/jsonl")
    elif parts == ["batches"] and method == "POST":
        status, answer = jobs.create(await request.json())
        if status != 200:
            return _json(status, json.loads(error_body(status, answer["message"])))
        found = answer
    elif parts == ["batches"] and method == "GET":
        found = jobs.listing()
    elif len(parts) == 2 and parts[0] == "batches" and method == "GET":
        found = jobs.batch(parts[1])
    elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel" and method == "POST":
        found = jobs.cancel(parts[1])
    if found is None:
        return _json(404, json.loads(error_body(404, f"No such object: {method} {path}")))
    return _json(200, found)


async def _upload(jobs: BatchJobs, request: web.BaseRequest) -> dict[str, Any] | None:
    """POST /v1/files: read the multipart form as a stream (files up to the API's 200 MB,
    past aiohttp's 1 MB limit for `post()`); the FileObject, or None without a file."""
    fields: dict[str, bytes] = {}
    filename = "upload.jsonl"
    # aiohttp's own limit is 1 MB; the file limit (`MAX_BATCH_BYTES`) is the API's to say.
    reader = await request.clone(client_max_size=2 * MAX_BATCH_BYTES).multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, aiohttp.BodyPartReader) and part.name:
            if part.name == "file" and part.filename:
                filename = part.filename
            fields[part.name] = await part.read()
    if "file" not in fields:
        return None
    return jobs.upload(fields["file"], filename, fields.get("purpose", b"").decode())


_TOO_LARGE = (
    "<html><head><title>413 Request Entity Too Large</title></head><body><center><h1>413 "
    "Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>"
)


def _json(status: int, data: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )
