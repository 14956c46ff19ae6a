"""Command line entry point: ``python -m batch_stream_openai.testing --port 0 --latency 0.1``.

Prints ``serving on http://HOST:PORT/v1`` once listening and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from batch_stream_openai.testing.running import run_server
from batch_stream_openai.testing.settings import ServerSettings


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser; one ``--flag`` per :class:`ServerSettings` field."""
    parser = argparse.ArgumentParser(
        prog="python -m batch_stream_openai.testing",
        description="Fast, fault-injecting, OpenAI-compatible fake server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 = any free one")
    for field in dataclasses.fields(ServerSettings):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=float,
            default=field.default,
            help=f"server-wide {field.name} setting (default {field.default})",
        )
    parser.add_argument(
        "--managed",
        action="store_true",
        help="child mode used by FakeOpenAIServer: JSON ready line, exit on stdin EOF",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the server until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = ServerSettings()
    try:
        settings.update({f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings)})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_server(args.host, args.port, settings, managed=args.managed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
