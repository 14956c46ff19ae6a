"""The endpoint and headers the `openai` SDK would send with, without importing it each time.

``import openai`` costs ~0.5 s (``openai.types`` most of it), and a worker needs nothing
of the SDK on its hot path but the headers it sends and the endpoint it posts to. The SDK
works out the headers that do not depend on the caller (its user agent, version, the
platform's ``X-Stainless-*``) itself, once per SDK release and machine: they are kept in
the user's cache directory, and a worker that finds them never imports the SDK. Added to
them, as the SDK adds them: the key (``Authorization``), ``OPENAI_ORG_ID`` and
``OPENAI_PROJECT_ID``; the endpoint is the argument, else ``OPENAI_BASE_URL``, else
OpenAI's. ``tests/test_sdk_contract.py`` checks, against every new SDK release, that the
result is exactly what an SDK client has.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

__all__ = ["sdk_base_url", "sdk_headers"]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The headers the SDK derives from the caller's setup, not from itself or the machine.
_CALLERS = ("Authorization", "OpenAI-Organization", "OpenAI-Project")
# Stands in for the key while the SDK's own headers are taken (never written anywhere).
_PLACEHOLDER_KEY = "sk-placeholder"


def sdk_base_url(base_url: str | None) -> str:
    """Where the SDK posts: `base_url`, else ``OPENAI_BASE_URL``, else OpenAI's; with the
    trailing ``/`` the SDK gives it."""
    chosen = base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL
    return chosen.rstrip("/") + "/"


def sdk_headers(api_key: str) -> dict[str, str]:
    """The headers an ``openai.AsyncOpenAI(api_key=api_key)`` client sends every request."""
    headers = dict(_own_headers())
    if organization := os.environ.get("OPENAI_ORG_ID"):
        headers["OpenAI-Organization"] = organization
    if project := os.environ.get("OPENAI_PROJECT_ID"):
        headers["OpenAI-Project"] = project
    headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _own_headers() -> dict[str, str]:
    """The SDK's headers that depend only on its release and the machine: kept on disk,
    or taken from an SDK client (and kept) the first time."""
    path = _snapshot_path()
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text())
        if isinstance(kept, dict) and all(isinstance(v, str) for v in kept.values()):
            return kept
    own = _from_the_sdk()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(own))
        partial.replace(path)  # whole or absent, whoever reads it meanwhile
    return own


def _from_the_sdk() -> dict[str, str]:
    import openai

    client = openai.AsyncOpenAI(api_key=_PLACEHOLDER_KEY, base_url=_DEFAULT_BASE_URL)
    headers = {**client.default_headers, **client.auth_headers}
    return {k: v for k, v in headers.items() if isinstance(v, str) and k not in _CALLERS}


def _snapshot_path() -> Path:
    """One file per SDK release, Python and machine (a home shared by several kinds of
    nodes holds one for each)."""
    import platformdirs

    release = importlib.metadata.version("openai")
    python = platform.python_implementation() + ".".join(map(str, sys.version_info[:3]))
    name = f"openai-{release}-{python}-{sys.platform}-{platform.machine()}.json"
    return platformdirs.user_cache_path("batch-stream-openai") / "sdk-headers" / name
