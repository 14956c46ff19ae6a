"""Helpers shared by the test modules: requests, expected answers, waiting, scripts, and
the worker processes a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from batch_stream_openai import OpenAIRequest
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

SYSTEM = "You are terse."
TEST_API_KEY = "sk-test-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
# Processes that outlive a test on purpose (the session's server), by pid.
SESSION_PROCESSES: set[int] = set()


class FakeClock:
    """Monotonic seconds that move only when a test says: ``clock.now += 1.5``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ask(
    user: str, api: str = "chat", model: str = "gpt-4o-mini", **options: Any
) -> OpenAIRequest:
    """A request for the bundled server, with the tests' system prompt."""
    return OpenAIRequest(SYSTEM, user, model=model, api=api, **options)  # type: ignore[arg-type]


def answers(users: list[str]) -> list[str]:
    """What the bundled server answers each of `users` (asked with `ask`)."""
    return [expected_answer(SYSTEM, user) for user in users]


def die_on_poison(text: str) -> str:
    """A postprocess that ends its worker process on answers that mention "poison"."""
    if "poison" in text:
        os._exit(7)
    return text


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or condition}"
        time.sleep(0.01)


def run_script(
    code: str, timeout: float = 60, *, from_stdin: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter: ``python -c CODE``, or ``python -`` reading it."""
    code = textwrap.dedent(code)
    command = [sys.executable, "-"] if from_stdin else [sys.executable, "-c", code]
    return subprocess.run(
        command,
        input=code if from_stdin else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def sdk_error(
    server: FakeOpenAIServer, user: str, *, timeout: float = 10.0, api_key: str = "sk-test"
) -> openai.APIError:
    """The exception the openai SDK itself raises for a chat request to `server` (the
    directives in `user` choose it): SDK objects are never built from their constructors."""
    client = openai.OpenAI(
        api_key=api_key, base_url=server.base_url, max_retries=0, timeout=timeout
    )
    with client, pytest.raises(openai.APIError) as raised:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": user}]
        )
    return raised.value


def closed_port() -> int:
    """A local port nothing listens on (a probe bound it, then let it go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_children(exclude: set[int]) -> list[psutil.Process]:
    """Live child processes of this test process, except those in `exclude`.

    multiprocessing's own helpers (the resource tracker, the fork server) live as long as
    this process, by design; the workers the fork server forks are counted.
    """
    exclude = exclude | SESSION_PROCESSES
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


# mode="batch" with quick looks at the jobs.
FAST = {"mode": "batch", "poll_interval": 0.05}


def jobs_of(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The Batch API jobs the server was asked to create."""
    return [job for job in fake.batch_jobs()["jobs"] if "id" in job]


def answered_by_jobs(fake: FakeOpenAIServer) -> Counter[str]:
    """How many times the server answered each custom id, over all jobs."""
    return Counter(cid for job in jobs_of(fake) for cid in job["answered"])


def gemini_batches_of(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The Gemini batches the server was asked to create."""
    return list(fake.batch_jobs()["gemini_batches"])


def message_batches_of(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The Anthropic Message Batches the server was asked to create."""
    return list(fake.batch_jobs()["message_batches"])


def creates(fake: FakeOpenAIServer) -> int:
    """How many times the server was asked to create a Batch API job."""
    return int(fake.batch_jobs()["calls"].count("POST /v1/batches"))


RERUN_SCRIPT = """
import os, signal, sys
from batch_stream_openai import OpenAIRequest, stream_batch
if __name__ == "__main__":
    # Ctrl-C raises, as in a terminal, even when the tests run as a background job (which
    # starts with it ignored: Python then installs no handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    requests = [OpenAIRequest({system!r}, f"{prefix}{{i}}", model="gpt-4o-mini", api="chat")
                for i in range({count})]
    stream = stream_batch(requests, max_concurrency=4, workers=1, base_url={base_url!r},
                          api_key={api_key!r}, mode="batch", batch_size={batch_size},
                          poll_interval=0.05{journal})
    for index, value in stream:
        print(index, flush=True)
"""


def rerun_script(fake: FakeOpenAIServer, prefix: str, count: int, **extra: Any) -> str:
    """A script that streams `count` requests in batch mode and prints each index."""
    journal = f", journal={str(extra['journal'])!r}" if "journal" in extra else ""
    return textwrap.dedent(
        RERUN_SCRIPT.format(
            system=SYSTEM,
            prefix=prefix,
            count=count,
            base_url=fake.base_url,
            api_key=TEST_API_KEY,
            batch_size=extra.get("batch_size", 10),
            journal=journal,
        )
    )


def each_once(pairs: Iterable[tuple[int, Any]]) -> dict[int, Any]:
    """A stream's ``(index, value)`` pairs as a dict, failing on an index yielded twice."""
    seen: dict[int, Any] = {}
    for index, value in pairs:
        assert index not in seen, f"index {index} yielded twice"
        seen[index] = value
    return seen


@contextlib.contextmanager
def servers(count: int, **settings: float) -> Iterator[list[FakeOpenAIServer]]:
    """`count` bundled servers, stopped (or the ones that replaced them) at the end."""
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(FakeOpenAIServer(**settings)) for _ in range(count)]
        yield started
        for server in started:
            server.stop()
