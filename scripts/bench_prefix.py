"""Cache-aware dispatch: least-loaded vs cache-aware routing, with and without grouping.

Usage: ``python scripts/bench_prefix.py [--runs 3] [--scale 1.0] [--print-only]``

Four bundled-server endpoints model GPU servers with a prefix cache: each serves
`CAPACITY` requests at once, keeps `CACHE_TOKENS` prompt tokens prefilled (LRU blocks),
prefills what it lacks at `PREFILL_RATE` tokens/s and then decodes for `DECODE_S`
(`batch_stream_openai/testing/prefix_cache.py`). Three sets, each run with every
variant, interleaved, the servers' caches emptied before each:

1. few-shot eval: 50 distinct ~2,000-token few-shot blocks (the system prompt) x 200
   questions, shuffled;
2. document QA: 200 documents of ~1,500 tokens x 10 questions, in document order
   (the document in the user message, the question after it);
3. no shared prefix: 2,000 distinct ~1,500-token prompts (all misses: no harm?);
4. the few-shot eval's blocks x 20 questions on one endpoint: grouping alone.

Per variant: makespan, the share of input tokens read from the cache, the cost at
gpt-4o-mini's price (cached input at its rate), and the parent's CPU per request.
Also the prefix keys each set gets from the two candidate keys (`_wire/prefixes.py`).
Medians of `--runs`. Writes section "prefix" of BENCHMARKS.md (``--print-only``: prints).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import psutil
from bench_core import git_revision
from benchmarks_md import medians, save_section

from batch_stream_openai import BatchPool, OpenAIRequest
from batch_stream_openai._wire.prefixes import prefix_key
from batch_stream_openai.testing import FakeOpenAIServer

API_KEY = "sk-bench-0123456789"
ENDPOINTS, CAPACITY, DECODE_S = 4, 8, 0.1
CACHE_TOKENS, PREFILL_RATE = 40_000, 10_000  # ~20 few-shot blocks; 2,000 tokens in 0.2 s
PER_ENDPOINT = 12  # max_concurrency: 12 per endpoint, a little over what each serves
MODEL = "gpt-4o-mini"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]

# (routing, group_prefixes) per variant; the default is cache_aware with grouping.
VARIANTS = {
    "least_loaded": ("least_loaded", False),
    "least_loaded + grouping": ("least_loaded", True),
    "cache_aware": ("cache_aware", False),
    "cache_aware + grouping (default)": ("cache_aware", True),
}


def text(seed: int, tokens: int) -> str:
    """~`tokens` tokens (4 characters each) of words, different for each seed."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < tokens * 4:
        words.append(rng.choice(WORDS) + str(rng.randrange(100)))
        size += len(words[-1]) + 1
    return " ".join(words)


def few_shot(scale: float, questions: int = 200) -> list[OpenAIRequest]:
    prefixes = [f"Task {p}: answer as in these examples.\n" + text(p, 2000) for p in range(50)]
    questions = int(questions * scale)
    requests = [
        OpenAIRequest(prefix, f"Question {q}: {text(10_000 + q, 20)}", model=MODEL, api="chat")
        for prefix in prefixes
        for q in range(questions)
    ]
    random.Random(1).shuffle(requests)
    return requests


def document_qa(scale: float) -> list[OpenAIRequest]:
    documents = [f"Document {d}.\n" + text(20_000 + d, 1500) for d in range(int(200 * scale))]
    return [
        OpenAIRequest(
            "Answer from the document.",
            f"{doc}\n\nQuestion {q}: what about {WORDS[q]}?",
            model=MODEL,
            api="chat",
        )
        for doc in documents
        for q in range(10)
    ]


def distinct(scale: float) -> list[OpenAIRequest]:
    return [
        OpenAIRequest(
            "Answer briefly.", f"Prompt {i}.\n" + text(40_000 + i, 1500), model=MODEL, api="chat"
        )
        for i in range(int(2000 * scale))
    ]


SETS: dict[str, Callable[[float], list[OpenAIRequest]]] = {
    "few-shot eval": few_shot,
    "document QA": document_qa,
    "no shared prefix": distinct,
    "few-shot, one endpoint": lambda scale: few_shot(scale, questions=20),
}
# The variants each set runs (the first is the baseline of its ratios).
RUNS_OF = {
    "few-shot eval": list(VARIANTS),
    "document QA": ["least_loaded", "cache_aware", "cache_aware + grouping (default)"],
    "no shared prefix": ["least_loaded", "cache_aware + grouping (default)"],
    "few-shot, one endpoint": ["no grouping", "grouping (default)"],
}
ONE_ENDPOINT = {"no grouping": ("cache_aware", False), "grouping (default)": ("cache_aware", True)}


def run_variant(
    servers: list[FakeOpenAIServer], requests: list[OpenAIRequest], routing: str, group: bool
) -> dict[str, float]:
    """One timed batch on fresh caches: makespan, cached share, cost, parent CPU/request."""
    urls = [server.base_url for server in servers]
    concurrency = PER_ENDPOINT * len(urls)
    with BatchPool(
        base_url=urls, api_key=API_KEY, max_concurrency=concurrency, workers=2, routing=routing
    ) as pool:
        pool.run([OpenAIRequest("warm", f"up {i}", model=MODEL, api="chat") for i in range(8)])
        for server in servers:
            server.reset()  # empty caches
        parent = psutil.Process()
        cpu = sum(parent.cpu_times()[:2])
        started = time.monotonic()
        stream = pool.stream(requests, group_prefixes=group)
        failed = sum(isinstance(value, Exception) for _, value in stream)
        wall = time.monotonic() - started
        cpu = sum(parent.cpu_times()[:2]) - cpu
    summary = stream.summary
    assert failed == 0 and summary.done == len(requests), summary
    return {
        "wall": wall,
        "cached": summary.prompt_cache_rate,
        "cost": summary.cost_usd,
        "cpu_ms": cpu / len(requests) * 1000,
    }


def key_table(scale: float) -> str:
    """How many keys each set gets from the two candidate prefix keys."""
    rows = [
        "| set | requests | true groups | keys: first ~256 tokens (used) | keys: messages before "
        "the last |",
        "|---|---|---|---|---|",
    ]
    truth = {"few-shot eval": 50, "document QA": int(200 * scale), "no shared prefix": 0}
    for name, build in list(SETS.items())[:3]:
        requests = build(scale)
        first_tokens = len({prefix_key(r) for r in requests})
        before_last = len({r.system_prompt for r in requests})
        groups = truth[name] or "none"
        rows.append(f"| {name} | {len(requests):,} | {groups} | {first_tokens:,} | {before_last} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each set")
    parser.add_argument("--print-only", action="store_true")
    args = parser.parse_args()
    settings: dict[str, float] = {
        "capacity": CAPACITY,
        "latency": DECODE_S,
        "prefix_cache": CACHE_TOKENS,
        "prefill_rate": PREFILL_RATE,
    }
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    sets = {name: build(args.scale) for name, build in SETS.items()}
    servers = [FakeOpenAIServer(**settings).start() for _ in range(ENDPOINTS)]
    try:
        for run in range(args.runs):
            for name, requests in sets.items():
                labels = RUNS_OF[name]
                used = servers[:1] if name == "few-shot, one endpoint" else servers
                for label in labels[run % len(labels) :] + labels[: run % len(labels)]:
                    routing, group = {**VARIANTS, **ONE_ENDPOINT}[label]
                    result = run_variant(used, requests, routing, group)
                    samples.setdefault((name, label), []).append(result)
                    print(name, label, {k: round(v, 4) for k, v in result.items()}, flush=True)
    finally:
        for server in servers:
            server.stop()
    table = medians({f"{n}|{label}": runs for (n, label), runs in samples.items()})
    section = "\n".join(
        [
            "## N. Cache-aware dispatch: four replicas with a prefix cache",
            "",
            f"`python scripts/bench_prefix.py --runs {args.runs}"
            + (f" --scale {args.scale}" if args.scale != 1.0 else "")
            + f"` on {time.strftime('%Y-%m-%d')}, library at git `{git_revision()}`. "
            f"Medians of {args.runs} interleaved runs; 2 workers, `max_concurrency` "
            f"{PER_ENDPOINT} per endpoint.",
            "",
            f"{ENDPOINTS} bundled-server endpoints, each like a GPU server: {CAPACITY} requests "
            f"served at once (the rest queue), a prefix cache of {CACHE_TOKENS:,} tokens (LRU "
            f"blocks of 16), uncached prompt tokens prefilled at {PREFILL_RATE:,} tokens/s, then "
            f"{DECODE_S * 1000:.0f} ms of decoding. Caches emptied before each batch. Cost at "
            "gpt-4o-mini's price, cached input at its rate. Parent CPU: the parent process's "
            "CPU seconds over the batch (every thread) per request.",
            "",
            "| set | routing | makespan s | vs the set's first | cached input | vs the set's first "
            "| cost USD | parent CPU ms/req |",
            "|---|---|---|---|---|---|---|---|",
        ]
        + [_row(name, label, table) for name in sets for label in RUNS_OF[name]]
        + [
            "",
            "Prefix keys of each set (`_wire/prefixes.py`): the first ~256 tokens of the prompt "
            "(the key used), against the messages before the last user message:",
            "",
            key_table(args.scale),
        ]
    )
    print(section)
    if not args.print_only:
        save_section("prefix", section)
    return 0


def _row(name: str, label: str, table: dict[str, dict[str, float]]) -> str:
    m, base = table[f"{name}|{label}"], table[f"{name}|{RUNS_OF[name][0]}"]
    cached_ratio = f"{m['cached'] / base['cached']:.2f}x" if base["cached"] else "n/a"
    return (
        f"| {name} | {label} | {m['wall']:.1f} | {base['wall'] / m['wall']:.2f}x faster | "
        f"{m['cached']:.1%} | {cached_ratio} | {m['cost']:.4f} | {m['cpu_ms']:.3f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
