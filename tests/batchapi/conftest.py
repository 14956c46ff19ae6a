"""Fixtures of the Batch API tests: quick jobs on the bundled server, Anthropic's SDK
pointed at it, a private user cache directory (where automatic journals live)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY

_BATCH_DEFAULTS = {
    "batch_seconds": 1.0,
    "batch_expire": 0.0,
    "batch_refuse": 0.0,
    "batch_fail_validation": 0.0,
    "batch_refuse_upload": 0.0,
    "batch_stuck": 0.0,
}


@pytest.fixture
def jobs_fake(fake: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The server with quick jobs (0.3 s); its Batch API settings restored afterwards."""
    fake.configure(batch_seconds=0.3)
    yield fake
    fake.configure(**_BATCH_DEFAULTS)


@pytest.fixture
def own_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user cache directory (where automatic journals live), private to the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "batch-stream-openai" / "journals"


@pytest.fixture
def providers(jobs_fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAIServer:
    """Quick jobs, with Anthropic's and Gemini's SDKs (the job route's, and LiteLLM's
    online) on the bundled server through the environment, as a user points them at a
    proxy."""
    pytest.importorskip("anthropic", reason="the [anthropic] extra is not installed")
    pytest.importorskip("google.genai", reason="the [gemini] extra is not installed")
    for name, value in jobs_fake.sdk_environment(TEST_API_KEY).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # the SDK would prefer it
    return jobs_fake
