"""The fake server's Gemini File API: resumable uploads, downloads (child side).

A batch whose requests are too many to go inline reads them from an uploaded JSONL file
(``{"key", "request"}`` lines) and writes its responses to another (``{"key",
"response"}`` or ``{"key", "error"}`` lines), downloaded by name. The upload is the
resumable protocol the google-genai SDK speaks (a download is
``GET /v1beta/files/{id}:download?alt=media``): a ``start`` call answers with an upload
URL (``X-Goog-Upload-URL``), chunks are posted to it with their offset, the last with
``upload, finalize``, which answers with the `File`. Every Gemini call's error is
made here too (`gemini_error`: a ``google.rpc.Status``).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .faults import JSON

__all__ = [
    "GeminiFiles",
    "gemini_error",
    "gemini_file_route",
    "gemini_json",
    "is_file_path",
    "rfc3339",
    "rpc_status",
]

UPLOAD_PREFIX = "/upload/v1beta/files"
_FILES_PREFIX = "/v1beta/files"
_DOWNLOAD = ":download"
_MAX_BYTES = 2 * 2**30  # the API's limit for one file
_MAX_CHUNK = 64 * 2**20
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class _File:
    name: str
    display_name: str
    mime_type: str
    data: bytearray
    created_at: float
    generated: bool = False  # made by the server (a batch's responses): downloadable

    def object(self) -> dict[str, Any]:
        stamp = rfc3339(self.created_at)
        return {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": stamp,
            "updateTime": stamp,
            "state": "ACTIVE",
            "source": "GENERATED" if self.generated else "UPLOADED",
        }


@dataclass
class GeminiFiles:
    """Every file of one fake server, and the uploads under way."""

    _files: dict[str, _File] = field(default_factory=dict)
    _uploads: dict[str, _File] = field(default_factory=dict)  # by upload id
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    deleted: list[str] = field(default_factory=list)  # for tests

    def start(self, metadata: dict[str, Any]) -> str:
        """A new resumable upload; its id."""
        upload_id = f"upload-{next(self._ids)}"
        self._uploads[upload_id] = _File(
            f"files/{next(self._ids):012x}",
            str(metadata.get("displayName") or metadata.get("display_name") or ""),
            str(metadata.get("mimeType") or metadata.get("mime_type") or "application/jsonl"),
            bytearray(),
            time.time(),
        )
        return upload_id

    def append(self, upload_id: str, offset: int, chunk: bytes, final: bool) -> _File | None:
        """Add a chunk at `offset`; the file once `final` (None: no such upload, or a gap)."""
        upload = self._uploads.get(upload_id)
        if upload is None or offset != len(upload.data) or offset + len(chunk) > _MAX_BYTES:
            return None
        upload.data += chunk
        if final:
            del self._uploads[upload_id]
            self._files[upload.name] = upload
        return upload

    def put(self, data: bytes, display_name: str) -> str:
        """Store a file the server made (a batch's responses); its name."""
        made = _File(f"files/{next(self._ids):012x}", display_name, "application/jsonl",
                     bytearray(data), time.time(), generated=True)  # fmt: skip
        self._files[made.name] = made
        return made.name

    def read(self, name: str, generated: bool = False) -> bytes | None:
        """A file's bytes (None: no such file, or `generated` and it was uploaded)."""
        found = self._files.get(name)
        if found is None or (generated and not found.generated):
            return None
        return bytes(found.data)

    def get(self, name: str) -> dict[str, Any] | None:
        found = self._files.get(name)
        return found.object() if found is not None else None

    def delete(self, name: str) -> dict[str, Any] | None:
        if self._files.pop(name, None) is None:
            return None
        self.deleted.append(name)
        return {}

    def names(self) -> list[str]:
        return list(self._files)


def is_file_path(path: str) -> bool:
    return path.startswith((UPLOAD_PREFIX, _FILES_PREFIX))


async def gemini_file_route(
    files: GeminiFiles, request: web.BaseRequest, path: str
) -> web.Response:
    """The File API's calls: upload (start, chunks), get, delete, download (of a file the
    server made: an uploaded one cannot be, as at the real API)."""
    method = request.method
    if path == UPLOAD_PREFIX and method == "POST":
        return await _upload(files, request)
    name = path.removeprefix("/v1beta/").removesuffix(_DOWNLOAD)
    if path.endswith(_DOWNLOAD) and method == "GET":
        data = files.read(name, generated=True)
        if data is not None:
            return web.Response(body=data, content_type="application/octet-stream")
        if files.get(name) is not None:
            return gemini_error(400, f"File {name} was uploaded: only generated files download.")
    found = files.get(name) if method == "GET" else None
    if method == "DELETE":
        found = files.delete(name)
    if found is not None:
        return gemini_json(found)
    return gemini_error(404, f"File {name} was not found.")


async def _upload(files: GeminiFiles, request: web.BaseRequest) -> web.Response:
    command = request.headers.get("X-Goog-Upload-Command", "")
    if command == "start":
        body = json.loads(await request.read() or b"{}")
        upload_id = files.start(body.get("file") or {})
        url = f"{request.scheme}://{request.host}{UPLOAD_PREFIX}?upload_id={upload_id}"
        headers = {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}
        return web.Response(body=b"{}", content_type=JSON, headers=headers)
    # aiohttp's own limit is 1 MB; the SDK sends chunks of 8 MB.
    chunk = await request.clone(client_max_size=_MAX_CHUNK).read()
    offset = int(request.headers.get("X-Goog-Upload-Offset", "-1"))
    final = "finalize" in command
    made = files.append(request.query.get("upload_id", ""), offset, chunk, final)
    if made is None:
        return gemini_error(400, "Unknown upload, or a chunk at the wrong offset.")
    status = {"X-Goog-Upload-Status": "final" if final else "active"}
    body = {"file": made.object()} if final else {}
    return web.Response(body=json.dumps(body).encode(), content_type=JSON, headers=status)


def rfc3339(epoch: float) -> str:
    """A timestamp as the API writes them (``2026-12-07T01:02:03.456Z``)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def gemini_error(status: int, message: str) -> web.Response:
    return gemini_json(rpc_status(status, message), status)


def rpc_status(code: int, message: str) -> dict[str, Any]:
    """A ``google.rpc.Status``, as the API's errors carry it."""
    name = _STATUS_NAMES.get(code, "UNKNOWN")
    return {"error": {"code": code, "message": message, "status": name}}


def gemini_json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type=JSON)
