"""What the fork server imports once, so that each worker forked from it starts fast.

Importing the worker brings in the SDK; building one SDK client (never used) also loads
what the SDK imports only then (its HTTP transport and TLS modules, ~0.12 s), so a
respawned worker is ready in a few tens of milliseconds instead of a few hundred.
"""

from __future__ import annotations

import openai

from .._worker.main import main  # noqa: F401 (imported for the fork server to hold)

openai.AsyncOpenAI(api_key="preload", base_url="http://127.0.0.1/v1", max_retries=0)
