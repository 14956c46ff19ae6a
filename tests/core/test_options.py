"""The options are declared once (`options.py`): signatures, docs, README and CLI agree with
it, and an option that cannot act where it is given is refused, naming it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from batch_stream_openai import BatchPool, run_batch, stream_batch
from batch_stream_openai._core.options import OPTIONS, options_table, refuse_idle
from batch_stream_openai.api import BatchArguments
from batch_stream_openai.cli import _parser
from batch_stream_openai.pool import StreamOptions
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import README, ask

pytestmark = pytest.mark.timeout(30)


def test_the_pool_takes_exactly_the_pool_options_with_their_defaults() -> None:
    parameters = inspect.signature(BatchPool.__init__).parameters
    taken = {name: p.default for name, p in parameters.items() if name != "self"}
    assert taken == {option.name: option.default for option in OPTIONS if option.pool}


@pytest.mark.fast
def test_a_batch_takes_exactly_the_batch_options() -> None:
    batch = {option.name for option in OPTIONS if not option.pool}
    assert set(StreamOptions.__annotations__) == batch | {"postprocess"}


def test_the_batch_functions_take_every_option() -> None:
    named = {"max_concurrency", "return_results", "postprocess"}
    assert set(BatchArguments.__annotations__) | named == {option.name for option in OPTIONS}
    for function in (stream_batch, run_batch):
        parameters = inspect.signature(function).parameters
        defaults = {o.name: o.default for o in OPTIONS}
        assert all(parameters[name].default == defaults[name] for name in named)


def test_help_lists_every_option_on_one_line() -> None:
    for documented in (stream_batch, run_batch, BatchPool):
        doc = inspect.getdoc(documented) or ""
        for option in OPTIONS:
            [line] = [line for line in doc.splitlines() if line.split()[:1] == [option.name]]
            assert option.help in line


@pytest.mark.fast
def test_the_readme_table_is_the_declaration() -> None:
    assert options_table() in README.read_text()


def test_every_flag_of_the_command_line_sets_its_option() -> None:
    run = _parser()._subparsers._group_actions[0].choices["run"]
    by_flag = {flag: action.dest for action in run._actions for flag in action.option_strings}
    for option in OPTIONS:
        if option.flag is not None:
            assert by_flag[option.flag.name] == option.name


@pytest.mark.fast
@pytest.mark.parametrize(
    ("given", "named", "why"),
    [
        ({"mode": "batch", "hedge": True}, "hedge", "sends nothing online"),
        ({"mode": "batch", "max_concurrency": "auto"}, "max_concurrency", "online"),
        ({"mode": "batch", "rpm": 100}, "rpm", "without a deadline"),
        ({"mode": "batch", "endpoint_concurrency": 4}, "endpoint_concurrency", "online"),
        ({"mode": "flex", "journal": "j"}, "journal", "only for mode='batch'"),
        ({"journal": "j"}, "journal", "only for mode='batch'"),
        ({"mode": "batch", "flex_fallback": False}, "flex_fallback", "only for mode='flex'"),
        ({"mode": "batch", "online_reserve": 5}, "online_reserve", "only for a deadline"),
        ({"max_concurrency_cap": 64}, "max_concurrency_cap", "max_concurrency='auto'"),
        ({"ray_address": "auto"}, "ray_address", "backend='ray'"),
        ({"backend": "thread", "start_method": "spawn"}, "start_method", "backend='process'"),
        ({"routing": "least_loaded"}, "routing", "several endpoints"),
        ({"base_url": "http://a/v1", "routing": "least_loaded"}, "routing", "several"),
        ({"base_url": ["a", "b"], "mode": "batch", "routing": "least_loaded"}, "routing", "online"),
        ({"mode": "batch", "group_prefixes": False}, "group_prefixes", "online"),
        ({"mode": "batch", "prompt_cache_key": "auto"}, "prompt_cache_key", "online"),
    ],
)
def test_an_option_that_cannot_act_is_refused_naming_it(
    given: dict[str, Any], named: str, why: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{named}=.*cannot act here: .*{why}"):
        refuse_idle(given)


@pytest.mark.fast
@pytest.mark.parametrize(
    "given",
    [
        {"mode": "batch", "hedge": True, "deadline": 60},
        {"mode": "batch", "max_concurrency": "auto", "deadline": 60},
        {"mode": "batch", "hedge": False, "rpm": None},  # defaults are never refused
        {"mode": "batch", "journal": "j", "batch_size": 10, "poll_interval": 1},
        {"mode": "flex", "flex_fallback": False, "hedge": 0.05},
        {"max_concurrency": "auto", "max_concurrency_cap": 64},
        {"backend": "ray", "ray_address": "auto"},
        {"base_url": ["http://a/v1", "http://b/v1"], "routing": "least_loaded"},
        {"mode": "flex", "group_prefixes": False, "prompt_cache_key": "auto"},
    ],
)
def test_an_option_that_can_act_is_taken(given: dict[str, Any]) -> None:
    refuse_idle(given)


def test_refused_before_anything_starts(fake: FakeOpenAIServer) -> None:
    options = {"base_url": fake.base_url, "api_key": "sk-test-0123456789"}
    with pytest.raises(ValueError, match="hedge=True cannot act here"):
        stream_batch([ask("x")], mode="batch", hedge=True, **options)
    with BatchPool(max_concurrency="auto", **options) as pool:  # the pool's: not refused
        with pytest.raises(ValueError, match=r"hedge=0\.1 cannot act here"):
            pool.run([ask("x")], mode="batch", hedge=0.1)
        assert pool.pids == []  # nothing started
    assert fake.stats().requests == 0


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"routing": "nearest", "base_url": ["http://a:8000/v1", "http://b:8000/v1"]},
            "routing must be one of 'cache_aware', 'least_loaded', got 'nearest'",
        ),
        ({"prompt_cache_key": "mine"}, "prompt_cache_key must be one of None, 'auto'"),
        ({"group_prefixes": "yes"}, "group_prefixes must be True or False"),
    ],
)
def test_a_bad_value_of_the_cache_options_is_named_before_anything_starts(
    fake: FakeOpenAIServer, given: dict[str, Any], message: str
) -> None:
    options = {"base_url": fake.base_url, "api_key": "sk-test-0123456789", **given}
    with pytest.raises((ValueError, TypeError), match=message):
        stream_batch([ask("x")], **options)
    assert fake.stats().requests == 0
