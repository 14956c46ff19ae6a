"""Shared fixtures: the bundled fake server (one per session), a leak check per test, and
the check that a test marked `fast` starts no process. Shared helpers are in `helpers.py`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import psutil
import pytest

from batch_stream_openai.testing import FakeOpenAIServer

from .helpers import SESSION_PROCESSES, TEST_API_KEY, wait_for_no_workers


@pytest.fixture(scope="session")
def server() -> Iterator[FakeOpenAIServer]:
    """The bundled OpenAI-compatible server on 127.0.0.1, shared by the whole session."""
    with FakeOpenAIServer() as fake:
        SESSION_PROCESSES.add(fake.pid)
        yield fake


@pytest.fixture
def fake(server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The session server, with counters, records and settings reset for this test."""
    server.reset()
    server.configure(latency=0.0, capacity=0, queue_limit=0, prefix_cache=0, prefill_rate=0)
    yield server


@pytest.fixture
def pool_options(fake: FakeOpenAIServer) -> dict[str, Any]:
    """Keyword arguments pointing a pool at the fake server."""
    return {"base_url": fake.base_url, "api_key": TEST_API_KEY}


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Every test must leave no worker process behind."""
    yield
    leaked = wait_for_no_workers({os.getpid(), *SESSION_PROCESSES})
    described = [(p.pid, " ".join(p.cmdline())[:200]) for p in leaked]
    for process in leaked:
        process.kill()
    assert not leaked, f"worker processes left behind: {described}"


_PROCESS_FIXTURES = {"server", "fake", "pool_options"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked `fast` may not ask for the bundled server (a process)."""
    for item in items:
        used = _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("fast") is not None and used:
            raise pytest.UsageError(f"{item.nodeid} is marked fast but uses {sorted(used)}")


@pytest.fixture(autouse=True)
def fast_means_no_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `fast` starts no process (else it belongs with the process tests)."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    started = [
        " ".join(child.cmdline())[:120]
        for child in psutil.Process().children(recursive=True)
        if child.pid not in before
    ]
    assert not started, f"a fast test started processes: {started}"
