"""Running the fake server: in this process until a signal (``python -m
batch_stream_openai.testing``, ``batch-stream-openai serve``), or as the managed child
of a `FakeOpenAIServer` (a ready line on stdout; it exits when stdin closes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from .app import make_handler
from .settings import ServerSettings

__all__ = ["READY_PREFIX", "base_url", "run_server", "serve"]

READY_PREFIX = "BSO_FAKE_OPENAI_READY "


async def serve(
    host: str,
    port: int,
    settings: ServerSettings,
    on_ready: Callable[[str, int], None],
    stop: asyncio.Event,
) -> None:
    """Run the fake server until ``stop`` is set; call ``on_ready(host, port)`` once listening.

    Parameters:
        host: Interface to bind.
        port: TCP port; 0 picks a free one (reported to ``on_ready``).
        settings: Initial server-wide settings.
        on_ready: Called with the bound host and port once the socket accepts connections.
        stop: Set it to shut down (idle connections closed, handlers cancelled).
    """
    # handler_cancellation: a client disconnect cancels its handler (hang/latency don't leak).
    server = web.Server(make_handler(settings), handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        on_ready(host, bound_port)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_server(
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
    *,
    managed: bool = False,
) -> None:
    """Run the fake server in this process until SIGTERM/SIGINT (blocking).

    Raises OSError when it cannot listen (a port in use).

    Parameters:
        host: Interface to bind.
        port: TCP port; 0 picks a free one.
        settings: Initial server-wide settings (defaults to ``ServerSettings()``).
        managed: Child mode for :class:`FakeOpenAIServer`: print one machine-readable
            ready line and exit when stdin reaches EOF (i.e. the parent died).
    """

    def on_ready(bound_host: str, bound_port: int) -> None:
        if managed:
            info = {"host": bound_host, "port": bound_port, "pid": os.getpid()}
            print(READY_PREFIX + json.dumps(info), flush=True)
        else:
            print(f"serving on {base_url(bound_host, bound_port)}", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not available on Windows or outside the main thread.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if managed:
            await loop.connect_read_pipe(lambda: _StdinWatcher(stop), sys.stdin)
        await serve(host, port, settings or ServerSettings(), on_ready, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


class _StdinWatcher(asyncio.Protocol):
    """Sets ``stop`` when stdin reaches EOF, i.e. when the parent process is gone."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def eof_received(self) -> bool | None:
        self._stop.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


def base_url(host: str, port: int) -> str:
    """The OpenAI base URL of a server on `host`:`port`."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"
