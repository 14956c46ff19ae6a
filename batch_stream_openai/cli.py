"""Command line: ``batch-stream-openai run``, ``report``, ``demo`` and ``serve``.

Exit codes of ``run``: 0 done (failed requests are in the output file), 1 an unexpected
error (I/O, workers that cannot start), 2 invalid input or usage, 75 partial after SIGTERM
(re-run to resume), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._core.options import OPTIONS
from ._policy.fleet import ROUTINGS
from .api import stream_batch
from .errors import BatchFileError, CacheError, PoolError
from .request import OpenAIRequest

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PARTIAL", "EXIT_USAGE", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2  # also argparse's
EXIT_PARTIAL = 75  # EX_TEMPFAIL: stopped by SIGTERM, run again to finish
EXIT_INTERRUPTED = 130

_LOCAL_DEMO_SIZE = 300
_REAL_API_DEMO_SIZE = 10  # a real key costs money: keep the default small

# Python parameter names in the library's messages, as the flags that set them here.
_FLAG_OF = {o.name: o.flag.name for o in OPTIONS if o.flag} | {"grace": "--grace"}
_PHRASES = {
    "skip_invalid=True": "--skip-invalid",
    "resend_changed=True": "--resend-changed",
    "retry_failed=True": "--retry-failed",
    "pass api_key= or set OPENAI_API_KEY": "set OPENAI_API_KEY",
    "give it: prices=": "give it with --prices ",
}
# A parameter named as such: "workers=7", "rpm must be ...", "hedge=0.5 cannot act";
# underscored names anywhere.
_PARAMETER = re.compile(
    r"\b("
    + "|".join(_FLAG_OF)
    + r")\b(?:(=)|(?=\s+(?:must|cannot)\b))|\b("
    + "|".join(name for name in _FLAG_OF if "_" in name)
    + r")\b"
)


def _in_flags(message: str) -> str:
    """A library message, with its Python parameter names as this command's flags."""
    for phrase, flag in _PHRASES.items():
        message = message.replace(phrase, flag)

    def as_flag(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        return _FLAG_OF[name] + (" " if match.group(2) else "")

    return _PARAMETER.sub(as_flag, message)


def _demo_requests(count: int, model: str, local: bool) -> Iterator[OpenAIRequest]:
    for i in range(count):
        user = f"What is {i} + {i + 1}?"
        if local and i % 50 == 7:
            user += " [[status=503 times=1]]"  # the bundled server fails once; we retry
        if local and i == count - 1:
            user += " [[status=400]]"  # fails on purpose, to show what a failure looks like
        yield OpenAIRequest(
            system_prompt="Answer with the number only.",
            user_prompt=user,
            model=model,
            api="chat" if i % 2 else "responses",
        )


def _demo(args: argparse.Namespace) -> int:
    local = not os.environ.get("OPENAI_API_KEY")
    count = args.count
    if count is None:
        count = _LOCAL_DEMO_SIZE if local else _REAL_API_DEMO_SIZE
    if count == 0:
        print("nothing to send (-n 0)")
        return 0
    with contextlib.ExitStack() as stack:
        base_url, api_key = None, None
        if local:
            from .testing import FakeOpenAIServer

            server = stack.enter_context(FakeOpenAIServer(latency=args.latency))
            base_url, api_key = server.base_url, "sk-demo-local-server"
            print(f"No OPENAI_API_KEY set: using the bundled local server at {base_url}")
        try:
            stream = stream_batch(
                _demo_requests(count, args.model, local),
                max_concurrency=args.max_concurrency,
                workers=args.workers,
                base_url=base_url,
                api_key=api_key,
                progress=sys.stderr.isatty(),
            )
        except (ValueError, TypeError) as exc:
            print(f"error: {_in_flags(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        for index, result in stream:
            if isinstance(result, Exception):
                print(f"[{index:4d}] failed: {result}")
            else:
                print(f"[{index:4d}] {result[:70]}")
    if local:
        print("(the one failure is deliberate: the last request asks the local server for a 400)")
    print(stream.summary)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .testing.running import run_server
    from .testing.settings import ServerSettings

    try:
        run_server(args.host, args.port, ServerSettings(latency=args.latency))
    except OSError as exc:
        print(
            f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return 0


def _run(args: argparse.Namespace) -> int:
    from .files.run import run_batch_file

    try:
        report = run_batch_file(
            args.input,
            args.output,
            model=args.model,
            shard=args.shard,
            retry_failed=args.retry_failed,
            resend_changed=args.resend_changed,
            skip_invalid=args.skip_invalid,
            grace=args.grace,
            progress=sys.stderr.isatty(),
            **_batch_options(args),
        )
    except (BatchFileError, CacheError, ValueError, TypeError) as exc:
        print(f"error: {_in_flags(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, PoolError) as exc:
        print(f"error: {_in_flags(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    for error in report.errors:
        print(f"skipped {args.input}:{error.number}: {error.message}", file=sys.stderr)
    print(report, file=sys.stderr)
    if report.failed_in_output:
        print(
            f"{report.failed_in_output} failed request(s) are in the output ('error'); "
            "--retry-failed sends them again",
            file=sys.stderr,
        )
    if not report.complete:
        print(f"exit {EXIT_PARTIAL}: re-run the same command to resume", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _batch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags (the others keep `run_batch_file`'s defaults; one that
    cannot act with the others is refused there, naming its flag)."""
    given = {o.name: getattr(args, o.name) for o in OPTIONS if o.flag is not None}
    return {name: value for name, value in given.items() if value is not None}


def _prices(text: str) -> dict[str, Any]:
    """An argparse type: prices as JSON, given inline or as a file's path."""
    try:
        source = Path(text).read_text() if not text.lstrip().startswith("{") else text
        prices = json.loads(source)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON prices, nor a file of them: {exc}") from None
    if not isinstance(prices, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of model -> prices")
    return prices


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdecimal() and count.isdecimal() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _number(
    kind: Callable[[str], float], minimum: float, *, inclusive: bool = True
) -> Callable[[str], float]:
    """An argparse type: a finite number at least `minimum` (above it if not `inclusive`)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum}, got {text!r}")
        return value

    return parse


def _readers() -> dict[str, dict[str, Any]]:
    """How each kind of flag reads its text (`Flag.reads`), as argparse arguments."""
    return {
        "int>=0": {"type": _number(int, 0)},
        "int>=1": {"type": _number(int, 1)},
        "float>0": {"type": _number(float, 0, inclusive=False)},
        "port": {"type": _port},
        "text": {},
        "urls": {"action": "append"},
        "concurrency": {"type": _concurrency},
        "prices": {"type": _prices},
        "mode": {"choices": ["online", "batch", "flex"]},
        "routing": {"choices": list(ROUTINGS)},
        "prompt_cache_key": {"choices": ["auto"]},
        "fraction": {"type": _number(float, 0, inclusive=False), "nargs": "?", "const": True},
    }


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    port = int(_number(int, 0)(text))
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {text!r}")
    return port


def _concurrency(text: str) -> int | str:
    """An argparse type: ``auto``, or a whole number >= 1."""
    return text if text == "auto" else int(_number(int, 1)(text))


def _report(args: argparse.Namespace) -> int:
    from .files.stats import RunStats

    try:
        stats = RunStats.read(args.output)
        print(stats)
        if args.html is not None:
            args.html.write_text(stats.to_html(title=args.output.name), encoding="utf-8")
            print(f"report: {args.html}")
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _add_run_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="send an OpenAI Batch API JSONL file; resumable, preemptible, shardable",
        description=(
            "Send every line of INPUT (Batch API lines, or prompt lines with OpenAIRequest "
            "fields) and append one Batch API output line per custom_id to OUTPUT. Running "
            "the same command again sends only what OUTPUT lacks. Exit codes: 0 done "
            "(failed requests are in OUTPUT), 1 error, 2 invalid input or usage, "
            "75 partial after SIGTERM (run again to resume), 130 Ctrl-C."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="the requests, one JSON per line")
    run.add_argument("-o", "--output", metavar="OUTPUT.jsonl", required=True)
    run.add_argument("--model", help="model of lines that name none")
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="send only the lines with sha256(custom_id) %% N == I",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="send again the custom_ids whose latest output line is an error",
    )
    run.add_argument(
        "--resend-changed",
        action="store_true",
        help="send again done custom_ids whose request changed (default: error)",
    )
    run.add_argument(
        "--skip-invalid",
        action="store_true",
        help="report invalid lines and send the others (default: send nothing)",
    )
    for option in OPTIONS:
        if (flag := option.flag) is not None:
            run.add_argument(
                flag.name,
                dest=option.name,
                help=flag.help or option.help,
                metavar=flag.metavar,
                **_READERS[flag.reads],
            )
    run.add_argument(
        "--grace",
        type=_number(float, 0),
        default=30.0,
        help="seconds requests in flight get after SIGTERM (default: 30)",
    )
    run.set_defaults(handler=_run)


_READERS = _readers()


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
    demo.add_argument(
        "-n",
        "--count",
        type=_number(int, 0),
        default=None,
        help=f"requests to send (default: {_LOCAL_DEMO_SIZE}, or {_REAL_API_DEMO_SIZE} with a key)",
    )
    demo.add_argument("--max-concurrency", type=_number(int, 1), default=50)
    demo.add_argument("--workers", type=_number(int, 0), default=None, help="worker processes")
    demo.add_argument("--model", default="gpt-4o-mini")
    demo.add_argument(
        "--latency", type=_number(float, 0), default=0.1, help="local server latency, seconds"
    )
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser("serve", help="run the bundled OpenAI-compatible test server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="0 for any free port")
    serve.add_argument("--latency", type=_number(float, 0), default=0.0)
    serve.set_defaults(handler=_serve)

    report = commands.add_parser(
        "report",
        help="the figures of a run from its output file; --html draws them",
        description=(
            "Print what OUTPUT's lines say of the runs that wrote them (requests, ok, "
            "failed, cost, time, latency percentiles, tokens and spend by model, errors, "
            "the slowest); --html also draws them into one self-contained page that "
            "opens offline (needs: pip install 'batch-stream-openai[report]')."
        ),
    )
    report.add_argument("output", metavar="OUTPUT.jsonl", type=Path, help="a run's output")
    report.add_argument("--html", metavar="REPORT.html", type=Path, help="write the page here")
    report.set_defaults(handler=_report)

    _add_run_command(commands)
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
