"""`FakeOpenAIServer`: the fake server in its own process, driven from the caller's.

The server itself (`app.py`, an ``aiohttp`` low-level server) always runs in its own
process, started by `FakeOpenAIServer` (or ``python -m batch_stream_openai.testing``).
The parent talks to it over plain HTTP control endpoints under ``/_control/`` using only
the standard library, so no event loop is needed on the caller's side.

Answers are deterministic (see `expected_answer`) and faults are injected by ``[[...]]``
directives inside the user prompt (see `directives.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from .running import READY_PREFIX, base_url
from .settings import RecordedRequest, ServerSettings, ServerStats

__all__ = ["FakeOpenAIServer"]

_STOP_TIMEOUT = 3.0
_JSON = "application/json"

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeOpenAIServer:
    """Fake OpenAI-compatible server running in a subprocess on a free local port.

    Example:

    >>> import openai
    >>> with FakeOpenAIServer(latency=0.0) as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    ...     reply = client.chat.completions.create(
    ...         model="m", messages=[{"role": "user", "content": "Hi"}]
    ...     )
    ...     server.stats().requests
    1

    Parameters:
        latency: Seconds added before every API answer (changeable via ``configure``).
        host: Interface the server binds.
        port: TCP port; 0 (default) picks a free one.
        startup_timeout: Seconds to wait for the child to report it is listening.
        rpm: Requests per minute the server accepts, 0 for no limit (see `ServerSettings`).
        tpm: Tokens per minute the server accepts, 0 for no limit.
        settings: Any other field of `ServerSettings`, e.g. ``capacity=64``.
    """

    def __init__(
        self,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 15.0,
        rpm: float = 0.0,
        tpm: float = 0.0,
        **settings: float,
    ) -> None:
        self._settings = ServerSettings()
        self._settings.update({"latency": latency, "rpm": rpm, "tpm": tpm, **settings})
        self._host = host
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Start the server process and wait until it listens; returns ``self``.

        Raises:
            RuntimeError: Already started, or the child failed to start in time.
        """
        if self._process is not None:
            raise RuntimeError("FakeOpenAIServer already started")
        cmd = [
            sys.executable,
            "-m",
            "batch_stream_openai.testing",
            "--managed",
            "--host",
            self._host,
            "--port",
            str(self._requested_port),
        ]
        for name, value in dataclasses.asdict(self._settings).items():
            cmd += [f"--{name.replace('_', '-')}", repr(value)]
        env = dict(os.environ)
        # The child must import this very package even if only the parent's sys.path has it.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # Unbuffered pipes: a daemon thread blocked on a buffered reader can abort the
        # interpreter at exit ("could not acquire lock ... at interpreter shutdown").
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0
        )
        self._process = process
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(
            target=_drain_stdout, args=(process, lines), name="fake-openai-stdout", daemon=True
        ).start()
        try:
            line = lines.get(timeout=self._startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"fake OpenAI server did not start within {self._startup_timeout} s"
            ) from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(
                f"fake OpenAI server failed to start (exit code {process.poll()}, output {text!r})"
            )
        self._port = int(json.loads(text[len(READY_PREFIX) :])["port"])
        return self

    def stop(self) -> None:
        """Terminate the server process and wait for it (kill after 3 s); idempotent."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def kill(self) -> None:
        """End the server process at once (SIGKILL), as a crashed node; idempotent."""
        if self._process is not None:
            self._process.kill()
        self.stop()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort for a server that was never stopped; may run during interpreter exit.
        if getattr(self, "_process", None) is not None:
            with contextlib.suppress(Exception):
                self.stop()

    # -- properties --------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return base_url(self._host, self.port)

    @property
    def pid(self) -> int:
        """Process id of the server process."""
        if self._process is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return self._process.pid

    # -- control plane -----------------------------------------------------

    def stats(self) -> ServerStats:
        """Return the current request counters."""
        data = self._control("GET", "stats")
        return ServerStats(
            requests=int(data["requests"]),
            in_flight=int(data["in_flight"]),
            max_in_flight=int(data["max_in_flight"]),
            by_status={int(k): int(v) for k, v in data["by_status"].items()},
            queued=int(data["queued"]),
            max_queued=int(data["max_queued"]),
        )

    def requests(self) -> list[RecordedRequest]:
        """Return the recorded API requests (at most the last 100,000), oldest first."""
        return [RecordedRequest(**item) for item in self._control("GET", "requests")]

    def sdk_environment(self, api_key: str) -> dict[str, str]:
        """The environment variables that point Anthropic's and Gemini's SDKs, and
        LiteLLM (online, and its batch functions) for those providers, Azure OpenAI and
        ``hosted_vllm/``, at this server, with `api_key`: set them
        (``os.environ.update``) before the batch starts."""
        root = self.base_url.removesuffix("/v1")
        return {
            "ANTHROPIC_BASE_URL": root,
            "ANTHROPIC_API_KEY": api_key,
            "GOOGLE_GEMINI_BASE_URL": root,  # the google-genai SDK's
            "GEMINI_API_BASE": f"{root}/v1beta",  # LiteLLM's
            "GEMINI_API_KEY": api_key,
            "AZURE_API_BASE": root,  # LiteLLM's, for azure/ models (an Azure resource)
            "AZURE_API_KEY": api_key,
            "AZURE_API_VERSION": "2024-10-21",
            "HOSTED_VLLM_API_BASE": self.base_url,  # LiteLLM's, for hosted_vllm/ models
            "HOSTED_VLLM_API_KEY": api_key,
        }

    def batch_jobs(self) -> dict[str, Any]:
        """The Batch API's record: ``{"jobs": [...], "calls": ["POST /v1/batches", ...]}``.

        Each job has its id, status, model, the custom ids of its lines and those it
        answered, and its file ids; the last item of ``jobs`` lists the deleted files.
        """
        result: dict[str, Any] = self._control("GET", "batches")
        return result

    def reset(self) -> None:
        """Zero the counters, clear the records and the per-prompt ``times`` counters."""
        self._control("POST", "reset", {})

    def configure(self, **settings: float) -> None:
        """Change server-wide settings at run time, e.g. ``configure(latency=0.2)``.

        Parameters:
            settings: Any field of :class:`ServerSettings`.

        Raises:
            ValueError: Unknown setting or invalid value.
        """
        self._settings.update(settings)  # validates before the round trip
        self._control("POST", "config", settings)

    def _control(self, method: str, name: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        url = f"{self.base_url[: -len('/v1')]}/_control/{name}"
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": _JSON})
        try:
            with _NO_PROXY_OPENER.open(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code == 400:
                raise ValueError(detail) from None
            raise RuntimeError(f"control request {name} failed: {exc.code} {detail}") from None


def _drain_stdout(process: subprocess.Popen[bytes], lines: queue.Queue[bytes]) -> None:
    """Hand the first stdout line (or b"" at EOF) to ``lines``, then discard the rest."""
    assert process.stdout is not None
    try:
        lines.put(process.stdout.readline())
        while process.stdout.read(65536):
            pass
    except (OSError, ValueError):
        lines.put(b"")
