"""Command line: ``batch-stream-openai demo`` and ``batch-stream-openai serve``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence

from .api import stream_batch
from .request import OpenAIRequest

__all__ = ["main"]

_LOCAL_DEMO_SIZE = 300
_REAL_API_DEMO_SIZE = 10  # a real key costs money: keep the default small


def _demo_requests(count: int, model: str, local: bool) -> Iterator[OpenAIRequest]:
    for i in range(count):
        user = f"What is {i} + {i + 1}?"
        if local and i % 50 == 7:
            user += " [[status=503 times=1]]"  # the bundled server fails once; we retry
        if local and i == count - 1:
            user += " [[status=400]]"  # a request that fails for good, to show one
        yield OpenAIRequest(
            system_prompt="Answer with the number only.",
            user_prompt=user,
            model=model,
            api="chat" if i % 2 else "responses",
        )


def _demo(args: argparse.Namespace) -> int:
    local = not os.environ.get("OPENAI_API_KEY")
    count = args.count or (_LOCAL_DEMO_SIZE if local else _REAL_API_DEMO_SIZE)
    with contextlib.ExitStack() as stack:
        base_url, api_key = None, None
        if local:
            from .testing import FakeOpenAIServer

            server = stack.enter_context(FakeOpenAIServer(latency=args.latency))
            base_url, api_key = server.base_url, "sk-demo-local-server"
            print(f"No OPENAI_API_KEY set: using the bundled local server at {base_url}")
        started = time.perf_counter()
        ok = failed = 0
        for index, result in stream_batch(
            _demo_requests(count, args.model, local),
            max_concurrency=args.max_concurrency,
            workers=args.workers,
            base_url=base_url,
            api_key=api_key,
        ):
            if isinstance(result, Exception):
                failed += 1
                print(f"[{index:4d}] failed: {result}")
            else:
                ok += 1
                print(f"[{index:4d}] {result[:70]}")
        wall = time.perf_counter() - started
    print(
        f"{count} requests: {ok} ok, {failed} failed in {wall:.2f} s "
        f"({count / wall:.0f} requests/s, max_concurrency={args.max_concurrency})"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .testing.server import ServerSettings, run_server

    run_server(args.host, args.port, ServerSettings(latency=args.latency))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-stream-openai",
        description="Fire many OpenAI requests from a pool of worker processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="stream a batch through the pool (bundled local server when no OPENAI_API_KEY)",
    )
    demo.add_argument("-n", "--count", type=int, default=0, help="requests to send")
    demo.add_argument("--max-concurrency", type=int, default=50)
    demo.add_argument("--workers", type=int, default=None, help="worker processes")
    demo.add_argument("--model", default="gpt-4o-mini")
    demo.add_argument("--latency", type=float, default=0.1, help="local server latency, seconds")
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser("serve", help="run the bundled OpenAI-compatible test server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--latency", type=float, default=0.0)
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batch-stream-openai`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
