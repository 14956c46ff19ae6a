"""Shared fixtures: the bundled fake server (one per session) and a leak check per test."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import psutil
import pytest

from batch_stream_openai.testing import FakeOpenAIServer

TEST_API_KEY = "sk-test-0123456789abcdef"
# Processes that outlive a test on purpose (the session's server), by pid.
_SESSION_PROCESSES: set[int] = set()


@pytest.fixture(scope="session")
def server() -> Iterator[FakeOpenAIServer]:
    """The bundled OpenAI-compatible server on 127.0.0.1, shared by the whole session."""
    with FakeOpenAIServer() as fake:
        _SESSION_PROCESSES.add(fake.pid)
        yield fake


@pytest.fixture
def fake(server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The session server, with counters, records and settings reset for this test."""
    server.reset()
    server.configure(latency=0.0, capacity=0, queue_limit=0)
    yield server


@pytest.fixture
def pool_options(fake: FakeOpenAIServer) -> dict[str, Any]:
    """Keyword arguments pointing a pool at the fake server."""
    return {"base_url": fake.base_url, "api_key": TEST_API_KEY}


def worker_children(exclude: set[int]) -> list[psutil.Process]:
    """Live child processes of this test process, except those in `exclude`.

    multiprocessing's own helpers (the resource tracker, the fork server) live as long as
    this process, by design; the workers the fork server forks are counted.
    """
    exclude = exclude | _SESSION_PROCESSES
    me = os.getpid()
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in exclude or child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(child.cmdline())
            helper = "resource_tracker" in command or "multiprocessing.forkserver" in command
            if helper and child.ppid() == me:
                continue
        except psutil.NoSuchProcess:
            continue
        children.append(child)
    return children


def signal_worker(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a worker process of this test run, and never anything else.

    A pid read from a pool may belong to a worker that just died; once reaped, the pid can
    be reused by any process on the machine. psutil checks the process is still the same
    one when it sends the signal; the parent check makes sure it is one of ours.
    """
    try:
        process = psutil.Process(pid)
        if os.getpid() not in {parent.pid for parent in process.parents()}:
            return False
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        return False
    return True


def wait_for_no_workers(exclude: set[int], timeout: float = 3.0) -> list[psutil.Process]:
    """Poll until no worker child is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while (alive := worker_children(exclude)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Every test must leave no worker process behind."""
    yield
    leaked = wait_for_no_workers({os.getpid(), *_SESSION_PROCESSES})
    described = [(p.pid, " ".join(p.cmdline())[:200]) for p in leaked]
    for process in leaked:
        process.kill()
    assert not leaked, f"worker processes left behind: {described}"
