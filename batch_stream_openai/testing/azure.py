"""The fake server as an Azure OpenAI resource: its paths onto the OpenAI routes (child side).

Azure OpenAI serves the OpenAI API under ``/openai/`` with an ``api-version`` query
parameter and an ``api-key`` header: files and batches at ``/openai/files`` and
``/openai/batches`` (a job's lines name a deployment as their model, and its endpoint is
``/chat/completions``, without ``/v1``), and a deployment's online calls at
``/openai/deployments/{deployment}/chat/completions``. Each is answered by the route the
OpenAI path has; only the checks Azure makes first are Azure's own.
"""

from __future__ import annotations

import json

from aiohttp import web

from .faults import JSON

__all__ = ["AZURE_PREFIX", "azure_path"]

AZURE_PREFIX = "/openai/"
_DEPLOYMENT_CALLS = ("chat/completions", "embeddings", "responses")


def azure_path(request: web.BaseRequest, path: str) -> str | web.Response:
    """The OpenAI path that answers Azure's `path`, or the error Azure gives first (no
    ``api-version``, no key, a path it does not have)."""
    if not request.query.get("api-version"):
        return _error(404, "404", "Resource not found")
    if not (request.headers.get("api-key") or request.headers.get("Authorization")):
        message = (
            "Access denied due to missing subscription key. Make sure to include "
            "subscription key when making requests to an API."
        )
        return _error(401, "401", message)
    parts = path.removeprefix(AZURE_PREFIX).split("/")
    if parts[0] in ("files", "batches"):
        return "/v1/" + "/".join(parts)
    if len(parts) >= 3 and parts[0] == "deployments" and "/".join(parts[2:]) in _DEPLOYMENT_CALLS:
        return "/v1/" + "/".join(parts[2:])
    return _error(404, "404", "Resource not found")


def _error(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return web.Response(status=status, body=body, content_type=JSON)
