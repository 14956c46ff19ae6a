"""The model-based test: generated batches and option combinations against the bundled
server, with injected faults, and the invariants every run must keep.

A `Scenario` is drawn by `scenarios()` (hypothesis): the requests (every kind, both APIs,
a fault directive each), the options (`cache`, `mode`, `journal`, `max_cost`, several
endpoints with one dead, fixed or ``"auto"`` concurrency, `hedge`, `postprocess`,
`return_results`, workers, `metrics_port`, `routing`, `group_prefixes`,
`prompt_cache_key`, prompts sharing a long prefix, read from the server's prefix cache)
and a crash (a worker SIGKILLed once, or the whole parent killed mid-stream and the
batch run again). `run_scenario` runs it and checks:

- an option that cannot act is refused before anything is sent;
- every index comes back exactly once (across a parent crash and its re-run, where the
  README promises it: batch mode with a journal, at most the one it was on, replayed);
- each value is what its request and fault call for;
- with a cache, a second run sends nothing for what the first got and yields the same;
- batch mode never has the server answer a line twice (the journal re-attaches);
- spend stays within ``max_cost`` (the README's bound: answers here are of like length);
- the API key is in nothing returned, nor in the cache or the journal files;
- with `metrics_port`, Prometheus scrapes one more result counted per result yielded.

`tests/test_model_based.py` runs a fast, fixed profile in the test suite;
``python scripts/model_based.py --minutes 30`` the long one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from batch_stream_openai import (
    APIError,
    EmbeddingRequest,
    EmptyResponseError,
    OpenAIRequest,
    RawRequest,
    Result,
    WorkerCrashedError,
    stream_batch,
)
from batch_stream_openai._core.options import refuse_idle
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer
from batch_stream_openai.testing.answers import expected_embedding

from .helpers import closed_port

# One port per test process: its metrics server runs until the process exits.
METRICS_PORT = closed_port()
# Long and real-looking: anything showing it is a leak.
SECRET_KEY = "sk-model-test-3f1c9a7e5b2d4c6e8f0a"
SYSTEM = "You are terse."
# A few-shot block longer than a prefix key's reach: requests with it share one key.
SHARED_SYSTEM = "You are terse. Answer like the examples. " * 30
KINDS = ("chat", "responses", "pydantic", "schema", "tool", "embedding", "raw")
ONLINE_FAULTS = (
    "",
    "[[status=429 retry_after=0 times=1]]",
    "[[status=503 times=1]]",
    "[[drop times=1]]",
    "[[straggle=0.5]]",
    "[[status=400]]",
)
# With another provider, these go there (the others stay OpenAI's: a mixed batch).
ELSEWHERE_KINDS = frozenset({"chat", "pydantic", "schema", "tool", "raw"})
PROVIDER_MODELS = {
    "anthropic": "anthropic/claude-haiku-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "azure": "azure/gpt-4o-mini",  # through LiteLLM's batch functions
}
PROVIDERS = ("openai", *PROVIDER_MODELS)
BATCH_FAULTS = ("", "[[status=503 times=1]]", "[[status=400]]")
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "reply",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    },
}
TOOL = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


class Label(BaseModel):
    answer: str


@dataclass(frozen=True)
class Scenario:
    """One batch and how it is run (see the module docstring)."""

    kinds: tuple[str, ...]
    faults: tuple[str, ...]
    mode: str = "online"
    cache: bool = False
    journal: bool = False
    max_cost: float | None = None
    capped: bool = False  # requests carry max_output_tokens
    endpoints: int = 1  # 2: one of them dead
    concurrency: int | str = 8
    hedge: bool = False
    deadline: float | None = None
    postprocess: bool = False
    rich: bool = False
    workers: int = 1
    metrics: bool = False  # metrics_port: served for Prometheus, scraped around the run
    crash: str = ""  # "", "worker" (one SIGKILL) or "parent" (killed mid-stream, run again)
    provider: str = "openai"  # "anthropic", "gemini", "azure": prompts go there (batch mode)
    shared_prefix: bool = False  # the prompts start with one long few-shot block
    routing: str = "cache_aware"
    group_prefixes: bool = True
    prompt_cache_key: bool = False
    tag: str = field(default="", compare=False)  # makes prompts unique to this run

    @property
    def system(self) -> str:
        return SHARED_SYSTEM if self.shared_prefix else SYSTEM

    def requests(self) -> list[Any]:
        return [self.request(i) for i in range(len(self.kinds))]

    def request(self, index: int) -> Any:
        kind, fault = self.kinds[index], self.faults[index]
        user = f"{self.tag} q{index} {fault}".strip()
        if self.crash == "worker" and index == 0 and kind not in ("embedding", "raw"):
            user += " poison"
        cap = {"max_output_tokens": 200} if self.capped else {}
        elsewhere = self.provider != "openai" and kind in ELSEWHERE_KINDS
        model = PROVIDER_MODELS[self.provider] if elsewhere else "gpt-4o-mini"
        if kind == "embedding":
            return EmbeddingRequest(user)
        if kind == "raw":
            body = {"model": model, "messages": [{"role": "user", "content": user}]}
            return RawRequest("/v1/chat/completions", body)
        options: dict[str, Any] = {"api": "responses" if kind == "responses" else "chat", **cap}
        if kind == "pydantic":
            options["response_format"] = Label
        elif kind == "schema":
            options["response_format"] = SCHEMA
        elif kind == "tool":
            options["tools"] = [{"type": "function", "function": TOOL}]
            user += " [[tool_call]]"
        return OpenAIRequest(self.system, user, model=model, **options)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A batch and its options, as a user might combine them (now and then one that
    cannot act, which must be refused)."""
    mode = draw(st.sampled_from(("online", "batch", "batch", "flex")))
    size = draw(st.integers(1, 24))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=size, max_size=size))
    faults = BATCH_FAULTS if mode == "batch" else ONLINE_FAULTS
    fault_list = draw(st.lists(st.sampled_from(faults), min_size=size, max_size=size))
    crashes = ("", "", "parent") if mode == "batch" else ("", "", "worker", "parent")
    deadline = draw(st.sampled_from((None, None, 120.0)))
    # Online-only options in batch mode without a deadline are refused: drawn rarely.
    online = mode != "batch" or deadline is not None or draw(st.integers(0, 9)) == 0
    endpoints = draw(st.sampled_from((1, 1, 2)))
    # least_loaded with one endpoint is refused: drawn rarely.
    several = endpoints == 2 or draw(st.integers(0, 19)) == 0
    return Scenario(
        kinds=tuple(kinds),
        faults=tuple(fault_list),
        mode=mode,
        cache=draw(st.booleans()),
        journal=mode == "batch" and draw(st.booleans()),
        max_cost=draw(st.sampled_from((None, None, 0.0004, 0.01))),
        capped=draw(st.booleans()),
        endpoints=endpoints,
        concurrency=draw(st.sampled_from((1, 4, 8, "auto") if online else (1, 4, 8))),
        hedge=online and draw(st.booleans()),
        deadline=deadline,
        postprocess=draw(st.booleans()),
        rich=draw(st.booleans()),
        workers=draw(st.sampled_from((1, 2))),
        metrics=draw(st.booleans()),
        crash=draw(st.sampled_from(crashes)),
        provider=draw(st.sampled_from(PROVIDERS)) if mode == "batch" else "openai",
        shared_prefix=draw(st.booleans()),
        routing=draw(st.sampled_from(("cache_aware", "least_loaded")))
        if several
        else "cache_aware",
        group_prefixes=not online or draw(st.booleans()),
        prompt_cache_key=online and draw(st.booleans()),
    )


def options_of(scenario: Scenario, server: FakeOpenAIServer, folder: Path) -> dict[str, Any]:
    """The keyword arguments of `stream_batch` for `scenario`."""
    urls = [server.base_url]
    if scenario.endpoints == 2:
        urls.append(f"http://127.0.0.1:{closed_port()}/v1")  # the Batch API uses the first
    options: dict[str, Any] = {
        "base_url": urls if len(urls) > 1 else urls[0],
        "api_key": SECRET_KEY,
        "max_concurrency": scenario.concurrency,
        "workers": scenario.workers,
        "mode": scenario.mode,
        "return_results": True,  # the plain values are checked from the Results
    }
    if scenario.mode != "batch" or scenario.deadline is not None:
        options["timeout"] = 10.0  # it acts online only
    if scenario.mode == "batch":
        options["poll_interval"] = 0.05
    if scenario.cache:
        options["cache"] = folder / "cache.sqlite"
    if scenario.journal:
        options["journal"] = folder / "journal"
    if scenario.max_cost is not None:
        options["max_cost"] = scenario.max_cost
    if scenario.hedge:
        options["hedge"] = 0.5
    if scenario.deadline is not None:
        options["deadline"] = scenario.deadline
    if scenario.metrics:
        options["metrics_port"] = METRICS_PORT
    if scenario.routing != "cache_aware":
        options["routing"] = scenario.routing
    if not scenario.group_prefixes:
        options["group_prefixes"] = False
    if scenario.prompt_cache_key:
        options["prompt_cache_key"] = "auto"
    if scenario.crash == "worker":
        options["postprocess"] = killing_once(folder / "killed")
    elif scenario.postprocess:
        options["postprocess"] = shout
    return options


def shout(answer: Any) -> Any:
    """A postprocess: the text in capitals (an embedding's vector as it is)."""
    return answer.upper() if isinstance(answer, str) else answer


def killing_once(marker: Path) -> Any:
    """A postprocess that SIGKILLs its own worker on the first "poison" answer."""

    def postprocess(answer: Any) -> Any:
        if isinstance(answer, str) and "poison" in answer and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return answer

    return postprocess


@dataclass
class Outcome:
    """What one run of a scenario gave."""

    results: dict[int, Result]
    cost_usd: float
    requests_sent: int


def run_scenario(scenario: Scenario, server: FakeOpenAIServer, folder: Path) -> str:
    """Run `scenario` and check every invariant; returns what it did (for the report).
    Raises AssertionError naming the invariant that broke."""
    options = options_of(scenario, server, folder)
    given = {k: v for k, v in options.items() if k not in ("return_results",)}
    try:
        refuse_idle(given)
    except ValueError as refusal:
        sent = server.stats().requests
        try:
            stream_batch(scenario.requests(), **options)
        except ValueError as error:
            assert str(error) == str(refusal), (error, refusal)
        else:
            raise AssertionError(f"not refused: {refusal}") from None
        assert server.stats().requests == sent, "a refused batch sent something"
        return "refused"
    record = server.batch_jobs()
    jobs = record["jobs"] + record["message_batches"] + record["gemini_batches"]
    jobs_before = {job["id"] for job in jobs if "id" in job}
    if scenario.crash == "parent":
        first = crash_then_rerun(scenario, options, server, folder)
    else:
        first = run_once(scenario, options, server)
    if scenario.mode == "batch":  # a crash and its re-run included
        check_paid_once(server, jobs_before)
    check_values(scenario, first)
    check_spend(scenario, first)
    if scenario.cache:
        check_cache_rerun(scenario, options, server, first)
    check_no_key(folder, first)
    return f"{scenario.mode}, {len(scenario.kinds)} requests, crash={scenario.crash or 'none'}"


def run_once(
    scenario: Scenario,
    options: dict[str, Any],
    server: FakeOpenAIServer,
    expected: set[int] | None = None,
) -> Outcome:
    """Stream the batch once; every index of `expected` (default: all) exactly once."""
    before = server.stats().requests
    counted = results_counted(options.get("metrics_port"))
    seen: Counter[int] = Counter()
    results: dict[int, Result] = {}
    stream = stream_batch(scenario.requests(), **options)
    with stream:
        for index, result in stream:
            seen[index] += 1
            results[index] = result
    assert max(seen.values(), default=1) == 1, f"yielded twice: {seen.most_common(3)}"
    if "metrics_port" in options:
        recorded = results_counted(options["metrics_port"]) - counted
        assert recorded == len(results), f"metrics counted {recorded} of {len(results)} results"
    everything = set(range(len(scenario.kinds)))
    missing = (everything if expected is None else expected) - set(results)
    assert not missing, f"indices missing: {sorted(missing)}"
    assert set(results) <= everything
    return Outcome(results, stream.summary.cost_usd, server.stats().requests - before)


CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from tests.model import Scenario, options_of
from batch_stream_openai import stream_batch
from pathlib import Path

if __name__ == "__main__":
    fields = json.loads({scenario!r})
    scenario = Scenario(**{{**fields, "kinds": tuple(fields["kinds"]),
                           "faults": tuple(fields["faults"])}})
    options = json.loads({options!r})
    for name in ("cache", "journal"):
        if name in options:
            options[name] = Path(options[name])
    for index, result in stream_batch(scenario.requests(), **options):
        print(index, flush=True)
"""


def crash_then_rerun(
    scenario: Scenario, options: dict[str, Any], server: FakeOpenAIServer, folder: Path
) -> Outcome:
    """Kill a parent process after about half the results, then run the batch again here."""
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    plain.pop("postprocess", None)  # a callable does not go into JSON (nor this crash)
    plain.pop("metrics_port", None)  # this process serves that port
    fields = {**asdict(scenario), "crash": ""}
    code = CHILD.format(
        root=str(Path(__file__).parent.parent),
        scenario=json.dumps(fields),
        options=json.dumps(plain),
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    printed: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) >= len(scenario.kinds) // 2:
                child.send_signal(signal.SIGKILL)
                break
        printed += [int(line) for line in child.stdout.read().split()]
        child.wait(timeout=60)
    finally:
        child.kill()
    everything = set(range(len(scenario.kinds)))
    if scenario.mode == "batch" and scenario.journal:
        # A journal: the re-run of a stream yields what the killed run had not, and at
        # most the one it was on again, flagged as replayed.
        again = run_once(scenario, options, server, expected=everything - set(printed))
        twice = set(printed) & set(again.results)
        assert len(twice) <= 1, f"yielded again: {sorted(twice)}"
        assert all(again.results[i].replayed for i in twice), "given again unflagged"
    else:
        again = run_once(scenario, options, server)
    return again


def results_counted(port: int | None) -> float:
    """``batch_stream_openai_results_total`` as Prometheus scrapes it at `port` now, summed
    over its outcomes (0 before anything was recorded, or without a port)."""
    if port is None:
        return 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
    except urllib.error.URLError:
        return 0.0  # not served yet: the first batch with metrics_port starts it
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "batch_stream_openai_results_total"
    )


def check_paid_once(server: FakeOpenAIServer, jobs_before: set[str]) -> None:
    """No line of this scenario's jobs was answered (billed) twice by the server, at any
    provider."""
    record = server.batch_jobs()
    jobs = [job for job in record["jobs"] if "id" in job and job["id"] not in jobs_before]
    others = record["message_batches"] + record["gemini_batches"]
    batches = [batch for batch in others if batch["id"] not in jobs_before]
    paid = Counter(cid for job in jobs for cid in job["paid"])
    paid += Counter(cid for batch in batches for cid in batch["paid"])
    assert max(paid.values(), default=1) == 1, f"paid twice: {paid.most_common(3)}"


def expected_value(scenario: Scenario, index: int, result: Result) -> None:
    """Check one result against what its request and fault call for."""
    kind, fault = scenario.kinds[index], scenario.faults[index]
    error = result.error
    if scenario.max_cost is not None and type(error).__name__ == "BudgetExceededError":
        return  # not sent: the cap
    if fault == "[[status=400]]":
        assert isinstance(error, APIError) and error.status_code == 400, (index, error)
        return
    if isinstance(error, WorkerCrashedError):
        raise AssertionError(f"{index}: a worker crash was not survived: {error}")
    if scenario.endpoints == 2 and isinstance(error, APIError) and scenario.mode == "batch":
        raise AssertionError(f"{index}: {error}")
    if kind == "tool":
        assert isinstance(error, EmptyResponseError) and result.tool_calls, (index, error)
        return
    assert error is None, (index, kind, fault, error)
    request = scenario.request(index)
    if kind == "embedding":
        assert result.embedding == expected_embedding(request.input), index
    elif kind in ("chat", "responses"):
        assert result.text == expected_answer(scenario.system, request.user_prompt), index
    elif kind == "pydantic":
        assert isinstance(result.parsed, Label), index
    elif kind == "schema":
        assert isinstance(result.parsed, dict), index
    if scenario.postprocess and scenario.crash != "worker" and isinstance(result.text, str):
        assert result.output == result.text.upper(), index


def check_values(scenario: Scenario, outcome: Outcome) -> None:
    for index, result in outcome.results.items():
        expected_value(scenario, index, result)


def check_spend(scenario: Scenario, outcome: Outcome) -> None:
    if scenario.max_cost is not None:
        assert outcome.cost_usd <= scenario.max_cost + 1e-12, (outcome.cost_usd, scenario.max_cost)


_NOT_COMPARED = {"cached", "cost_usd", "latency_s", "attempts", "base_url", "index", "error"}
_NOT_COMPARED |= {"batch_id", "hedged", "replayed", "request_id"}


def comparable(result: Result) -> dict[str, Any]:
    fields = {f: getattr(result, f) for f in Result.__slots__ if f not in _NOT_COMPARED}
    error = result.error
    fields["error"] = None if error is None else type(error).__name__
    return fields


def check_cache_rerun(
    scenario: Scenario, options: dict[str, Any], server: FakeOpenAIServer, first: Outcome
) -> None:
    """The same batch again: what had an answer is a hit equal to its miss, sent never
    (with a new journal: the first one would yield nothing again to a stream)."""
    if "journal" in options:
        options = {**options, "journal": Path(f"{options['journal']}-again")}
    again = run_once(scenario, options, server)
    answered = [i for i, r in first.results.items() if r.status_code == 200 and r.body]
    for index in answered:
        hit = again.results[index]
        assert hit.cached, f"{index}: answered before, not a hit: {first.results[index]!r} {hit!r}"
        assert comparable(hit) == comparable(first.results[index]), f"{index}: hit != miss"
    if len(answered) == len(scenario.kinds):
        assert again.requests_sent == 0, f"a re-run paid again: {again.requests_sent}"


def check_no_key(folder: Path, outcome: Outcome) -> None:
    shown = repr(outcome.results) + "".join(str(r.error) for r in outcome.results.values())
    assert SECRET_KEY not in shown, "the key is in a result"
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), f"the key is in {path}"


def describe(scenario: Scenario) -> str:
    """The scenario as code that builds it again (to run it alone)."""
    return repr(scenario)
