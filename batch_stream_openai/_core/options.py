"""Every option of a batch, declared once: name, default, one line of help, where it acts.

`BatchPool`, `BatchPool.stream` (and `run`, `astream`, `arun`), `stream_batch` and its
twins take these keyword arguments. From this one declaration come the options part of
their docstrings (``help(stream_batch)``), the README's option table
(``python -m batch_stream_openai._core.options``, checked by a test), the command line's
names for them, and the rule that refuses an option that cannot act in the chosen mode
(`refuse_idle`): an option given a value other than its default where it would do
nothing is a `ValueError` naming it, never silently ignored. A test checks the
signatures (`BatchPool.__init__`, `StreamOptions`, `BatchArguments`) against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["OPTIONS", "Flag", "Option", "options_doc", "options_table", "refuse_idle"]

# Why an option cannot act, given every option of the batch (None: it can).
Idle = Callable[[Mapping[str, Any]], "str | None"]


def _online_only(options: Mapping[str, Any]) -> str | None:
    """It acts on requests sent online: none in batch mode without a deadline."""
    if options.get("mode") == "batch" and options.get("deadline") is None:
        return "mode='batch' sends nothing online without a deadline"
    return None


def _only_mode(mode: str) -> Idle:
    def idle(options: Mapping[str, Any]) -> str | None:
        given = options.get("mode", "online")
        return None if given == mode else f"it is only for mode={mode!r} (mode={given!r})"

    return idle


def _online_reserve_idle(options: Mapping[str, Any]) -> str | None:
    return _only_mode("batch")(options) or (
        None if options.get("deadline") is not None else "it is only for a deadline"
    )


def _cap_idle(options: Mapping[str, Any]) -> str | None:
    if options.get("max_concurrency") != "auto":
        return "it is only for max_concurrency='auto'"
    return None


def _auto_idle(options: Mapping[str, Any]) -> str | None:
    return _online_only(options) if options.get("max_concurrency") == "auto" else None


def _routing_idle(options: Mapping[str, Any]) -> str | None:
    urls = options.get("base_url")
    if not isinstance(urls, (list, tuple)) or len(urls) < 2:
        return "it is only for several endpoints (base_url=[...])"
    return _online_only(options)


def _backend_idle(backend: str) -> Idle:
    def idle(options: Mapping[str, Any]) -> str | None:
        given = options.get("backend", "process")
        if given == backend and options.get("workers") != 0:
            return None
        return f"it is only for backend={backend!r}"

    return idle


@dataclass(frozen=True)
class Flag:
    """How ``batch-stream-openai run`` takes an option (`cli.py` builds its argument).

    Parameters:
        name: the flag, as ``--max-cost``.
        reads: how its text is read, a key of the command line's readers: ``int>=0``,
            ``int>=1``, ``float>0``, ``port``, ``text``, ``urls`` (repeatable), ``concurrency``
            (a number or ``auto``), ``prices`` (JSON), ``mode``, ``fraction`` (optional).
        help: the command line's words, where the option's own line does not fit a
            file run (None: the option's).
        metavar: the value's name in ``--help``.
    """

    name: str
    reads: str
    help: str | None = None
    metavar: str | None = None


@dataclass(frozen=True)
class Option:
    """One keyword argument.

    Parameters:
        name: the keyword.
        default: its default (what "not given" is).
        shown: its type and default as the docs show them.
        help: one line: what it does.
        pool: an argument of `BatchPool` (the pool keeps it for every batch); else of
            `BatchPool.stream` (each batch its own). `stream_batch` takes both.
        idle: why it cannot act, given the batch's options (None: it always can).
        flag: its command-line flag (``batch-stream-openai run``), if it has one.
    """

    name: str
    default: Any
    shown: str
    help: str
    pool: bool
    idle: Idle | None = None
    flag: Flag | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "max_concurrency",
        5,
        "int | 'auto' = 5",
        "requests in flight at most, across all workers and endpoints; 'auto': found from"
        " latency, for your own servers",
        pool=True,
        idle=_auto_idle,
        flag=Flag(
            "--max-concurrency",
            "concurrency",
            "requests in flight at most, or 'auto': found from the latency of each "
            "endpoint, for self-hosted servers (default: 50)",
        ),
    ),
    Option(
        "max_concurrency_cap",
        1024,
        "int = 1024",
        "with max_concurrency='auto', the most it may reach",
        pool=True,
        idle=_cap_idle,
    ),
    Option(
        "workers",
        None,
        "int | None",
        "worker processes (default: one per physical core, fewer for small "
        "max_concurrency; 0: one thread)",
        pool=True,
        flag=Flag("--workers", "int>=0", "worker processes (default: one per core)"),
    ),
    Option(
        "base_url",
        None,
        "str | list[str] | None",
        "OpenAI-compatible endpoint, or a list of replicas (default: OPENAI_BASE_URL, "
        "else OpenAI's)",
        pool=True,
        flag=Flag(
            "--base-url",
            "urls",
            "OpenAI-compatible endpoint (default: OPENAI_BASE_URL); repeat it for several "
            "replicas of one server: each request goes to the least busy",
        ),
    ),
    Option(
        "endpoint_concurrency",
        None,
        "int | None",
        "requests in flight to one endpoint at most",
        pool=True,
        idle=_online_only,
        flag=Flag(
            "--endpoint-concurrency",
            "int>=1",
            "requests in flight to one endpoint at most (with several --base-url)",
            "N",
        ),
    ),
    Option(
        "routing",
        "cache_aware",
        "str = 'cache_aware'",
        "with several endpoints, where requests go: 'cache_aware' (a prompt prefix to the "
        "endpoint it went to lately, while loads are close) or 'least_loaded'",
        pool=True,
        idle=_routing_idle,
        flag=Flag(
            "--routing",
            "routing",
            "with several --base-url: cache_aware (default: a prompt prefix goes to the "
            "endpoint that has it cached, while loads are close) or least_loaded",
        ),
    ),
    Option(
        "api_key",
        None,
        "str | None",
        "API key (default: OPENAI_API_KEY); never shown: masked wherever it could leak",
        pool=True,
    ),
    Option(
        "timeout",
        600.0,
        "float = 600.0",
        "seconds one attempt may take, all of it (connect, send, wait, read)",
        pool=True,
        idle=_online_only,
        flag=Flag("--timeout", "float>0", "seconds one attempt may take (default: 600)"),
    ),
    Option(
        "max_retries",
        5,
        "int = 5",
        "retries after the first attempt, for retryable errors only",
        pool=True,
        flag=Flag("--max-retries", "int>=0", "retries of a retryable error (default: 5)"),
    ),
    Option(
        "postprocess",
        None,
        "Callable | None",
        "called on each answer inside the workers; what it returns is yielded (a batch's "
        "wins over the pool's)",
        pool=True,
    ),
    Option(
        "rpm",
        None,
        "float | None",
        "requests per minute at most, across all workers, retries included",
        pool=True,
        idle=_online_only,
        flag=Flag("--rpm", "float>0", "requests per minute at most"),
    ),
    Option(
        "tpm",
        None,
        "float | None",
        "tokens per minute at most, across all workers",
        pool=True,
        idle=_online_only,
        flag=Flag("--tpm", "float>0", "tokens per minute at most"),
    ),
    Option(
        "adaptive",
        True,
        "bool = True",
        "slow down on 429s and spent x-ratelimit budgets; False: a fixed concurrency",
        pool=True,
        idle=_online_only,
    ),
    Option(
        "hang_timeout",
        30.0,
        "float | None = 30.0",
        "seconds a worker owing results may stay silent before it is replaced",
        pool=True,
    ),
    Option(
        "initializer",
        None,
        "Callable | None",
        "called once in each worker before it serves",
        pool=True,
    ),
    Option(
        "start_method",
        None,
        "str | None",
        "'forkserver' (default where there is one) or 'spawn'; never 'fork'",
        pool=True,
        idle=_backend_idle("process"),
    ),
    Option(
        "backend",
        "process",
        "str = 'process'",
        "'process', 'thread' (threads of this process) or 'ray' (Ray actors)",
        pool=True,
    ),
    Option(
        "ray_address",
        None,
        "str | None",
        "the Ray cluster to join (backend='ray')",
        pool=True,
        idle=_backend_idle("ray"),
    ),
    Option(
        "cache",
        None,
        "str | Path | bool | None",
        "a response cache file, or True for the one in the user cache directory",
        pool=True,
        flag=Flag(
            "--cache",
            "text",
            "answer repeated requests from this response cache (SQLite; created if missing)",
            "PATH",
        ),
    ),
    Option(
        "prices",
        None,
        "dict | None",
        "model prices, USD per million tokens, that win over genai-prices'",
        pool=True,
        flag=Flag(
            "--prices",
            "prices",
            'model prices, USD per million tokens: \'{"my-model": {"input": 0.15, '
            '"output": 0.6}}\', or the path of a JSON file holding that',
            "JSON",
        ),
    ),
    Option(
        "return_results",
        False,
        "bool = False",
        "yield Result objects instead of str | Exception",
        pool=False,
    ),
    Option(
        "progress",
        False,
        "bool = False",
        "a progress bar on stderr",
        pool=False,
    ),
    Option(
        "max_cost",
        None,
        "float | None",
        "USD the batch may spend at most, across all workers",
        pool=False,
        flag=Flag(
            "--max-cost",
            "float>0",
            "spend at most this much; lines not sent because of it are BudgetExceededError "
            "error lines (a re-run with --retry-failed and a higher cap sends them)",
            "USD",
        ),
    ),
    Option(
        "mode",
        "online",
        "str = 'online'",
        "'online', 'batch' (the Batch API, half price) or 'flex' (the flex tier, half price)",
        pool=False,
        flag=Flag(
            "--mode",
            "mode",
            "online (default); batch: the provider's Batch API, half price, results within "
            "24 h (its jobs are journaled beside the output: re-run the same command to pick "
            "them up); flex: online at the flex tier, half price, slower",
        ),
    ),
    Option(
        "deadline",
        None,
        "float | datetime | None",
        "seconds from now, or an aware datetime, by which every index has its result",
        pool=False,
        flag=Flag(
            "--deadline",
            "float>0",
            "every line done within this: in batch mode, what jobs would not finish in time "
            "is sent online; online, what is not done fails with DeadlineExceededError",
            "SECONDS",
        ),
    ),
    Option(
        "journal",
        None,
        "str | Path | None",
        "batch mode: the jobs' journal (default: one in the user cache directory)",
        pool=False,
        idle=_only_mode("batch"),
    ),
    Option(
        "batch_size",
        None,
        "int | None",
        "batch mode: lines per job at most (default and most: 50,000)",
        pool=False,
        idle=_only_mode("batch"),
        flag=Flag("--batch-size", "int>=1", "batch mode: lines per job at most (default: 50000)"),
    ),
    Option(
        "poll_interval",
        None,
        "float | None",
        "batch mode: seconds between looks at the jobs, at most (default 30)",
        pool=False,
        idle=_only_mode("batch"),
        flag=Flag(
            "--poll-interval",
            "float>0",
            "batch mode: seconds between looks at the jobs (default: 30)",
            "SECONDS",
        ),
    ),
    Option(
        "online_reserve",
        None,
        "float | None",
        "batch mode: seconds before the deadline at which what is in jobs goes online",
        pool=False,
        idle=_online_reserve_idle,
    ),
    Option(
        "flex_fallback",
        None,
        "bool | None",
        "flex mode: send at the standard tier what flex had no capacity for (default True)",
        pool=False,
        idle=_only_mode("flex"),
    ),
    Option(
        "metrics_port",
        None,
        "int | None",
        "serve the metrics (OpenTelemetry's) for Prometheus at http://127.0.0.1:PORT/metrics"
        " while the process runs; needs the [otel] extra",
        pool=True,
        flag=Flag("--metrics-port", "port", metavar="PORT"),
    ),
    Option(
        "hedge",
        False,
        "bool | float = False",
        "duplicate requests that run far longer than most; a fraction: how many at most",
        pool=False,
        idle=_online_only,
        flag=Flag(
            "--hedge",
            "fraction",
            "send a duplicate of a request that runs far longer than most; the first "
            "answer wins (at most FRACTION more requests, default 0.02)",
            "FRACTION",
        ),
    ),
    Option(
        "group_prefixes",
        True,
        "bool = True",
        "send the requests whose prompts start alike together, once the first of them is "
        "answered, while the server's prompt cache holds their prefix (bounded read-ahead)",
        pool=False,
        idle=_online_only,
    ),
    Option(
        "prompt_cache_key",
        None,
        "str | None",
        "'auto': give OpenAI one prompt_cache_key per prompt prefix, the same in every run "
        "(a key set in extra_body is kept)",
        pool=False,
        idle=_online_only,
        flag=Flag(
            "--prompt-cache-key",
            "prompt_cache_key",
            "auto: give OpenAI one prompt_cache_key per prompt prefix, the same in every run",
        ),
    ),
)

BY_NAME = {option.name: option for option in OPTIONS}


def refuse_idle(given: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> None:
    """Raise `ValueError` for the first option of `given` set to something other than
    its default that cannot act with the others (`context`: the batch's other options,
    such as the pool's when a batch gives only its own)."""
    everything = {**(context or {}), **given}
    for name, value in given.items():
        option = BY_NAME.get(name)
        if option is None or option.idle is None or value is None or value == option.default:
            continue
        if (why := option.idle(everything)) is not None:
            raise ValueError(f"{name}={value!r} cannot act here: {why}")


def options_doc(pool: bool | None = None, indent: int = 0) -> str:
    """The options as a docstring section, one line each (`pool`: only the pool's, or
    only a batch's), indented to sit in a docstring indented by `indent`."""
    chosen = [o for o in OPTIONS if pool is None or o.pool is pool or o.name == "postprocess"]
    width = max(len(option.name) for option in chosen)
    margin = " " * indent
    lines = [f"{margin}    {o.name:<{width}}  {o.help} [{o.shown}]" for o in chosen]
    heading = f"{margin}Options (one line each; the README says more)::\n\n"
    return heading + "\n".join(lines) + "\n"


def options_table() -> str:
    """The README's table of options, in Markdown."""
    rows = ["| Option | Type and default | What it does |", "|---|---|---|"]
    rows += [f"| `{o.name}` | `{_cell(o.shown)}` | {_cell(o.help)} |" for o in OPTIONS]
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar inside a cell, even in code, splits it


if __name__ == "__main__":
    print(options_table(), end="")
