"""What the fork server imports once, so that each worker forked from it starts fast.

The worker's modules (aiohttp, the task server) and no more: the `openai` SDK is not on
a worker's hot path (`_worker/sdk_headers.py`), and the package's public face (the pool,
the Batch API route) is the parent's. A worker forked from here is ready in a few tens
of milliseconds.
"""

from __future__ import annotations

import ssl  # noqa: F401 (what aiohttp loads only when it first connects)

from .._worker.main import main  # noqa: F401 (imported for the fork server to hold)
