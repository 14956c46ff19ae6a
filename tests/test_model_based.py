"""The model-based test's fast profile: a fixed set of generated scenarios (see
`tests/model.py`); ``python scripts/model_based.py`` runs the long one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from batch_stream_openai.testing import FakeOpenAIServer

from .model import SECRET_KEY, Scenario, describe, run_scenario, scenarios

_RUNS = itertools.count()


@pytest.fixture
def quick_jobs(
    server: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeOpenAIServer]:
    # A prefix cache, as on a self-hosted server: answers report cached input tokens.
    server.configure(batch_seconds=0.2, latency=0.0, capacity=0, queue_limit=0, prefix_cache=20_000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    # The other providers' SDKs on the bundled server, with the scenarios' key (checked
    # for leaks like the OpenAI one).
    for name, value in server.sdk_environment(SECRET_KEY).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    yield server
    server.configure(batch_seconds=1.0, prefix_cache=0)


@pytest.mark.timeout(600)
@settings(
    max_examples=30,
    derandomize=True,  # the same scenarios on every run: the long profile explores
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_every_promise_holds_in_every_combination(
    scenario: Scenario, quick_jobs: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = next(_RUNS)
    folder = tmp_path_factory.mktemp(f"scenario-{run}")
    scenario = Scenario(**{**scenario.__dict__, "tag": f"m{run}"})
    try:
        run_scenario(scenario, quick_jobs, folder)
    except AssertionError as broken:
        raise AssertionError(f"{broken}\n{describe(scenario)}") from broken
