"""mode="batch" through LiteLLM's batch functions: ``azure/...`` models to Azure OpenAI's
Batch API, ``hosted_vllm/...`` ones to the Batch API of the server LiteLLM names, beside
OpenAI's jobs (on the bundled server as an Azure resource and as that server), with the
same guarantees; without LiteLLM installed, refused before anything is sent (the other
refusals, with every provider's, in `test_providers.py`)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from batch_stream_openai import BatchPool
from batch_stream_openai._spending.prices import PriceTable, check_prices
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import (
    FAST,
    answered_by_jobs,
    answers,
    ask,
    each_once,
    jobs_of,
)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        __import__("importlib.util").util.find_spec("litellm") is None,
        reason="the [litellm] extra is not installed",
    ),
]

GPT = "gpt-4o-mini"
AZURE = "azure/gpt-4o-mini"  # a deployment named gpt-4o-mini
VLLM = "hosted_vllm/llama"
VLLM_PRICES = {VLLM: {"input": 0.2, "output": 0.2}}


def calls(fake: FakeOpenAIServer, prefix: str) -> list[str]:
    return [call for call in fake.batch_jobs()["calls"] if call.split(" ")[1].startswith(prefix)]


def test_azure_and_server_models_go_to_their_batch_apis_through_litellm(
    providers: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"a{i}" for i in range(9)]
    models = [(GPT, AZURE, VLLM)[i % 3] for i in range(9)]
    requests = [ask(user, model=model) for user, model in zip(users, models, strict=True)]
    with BatchPool(max_concurrency=4, workers=1, prices=VLLM_PRICES, **pool_options) as pool:
        stream = pool.stream(requests, return_results=True, **FAST)
        results = each_once(stream)
    assert [results[i].text for i in range(9)] == answers(users)
    lines = {
        (job["first_line"]["url"], job["first_line"]["body"]["model"]) for job in jobs_of(providers)
    }
    # Azure's endpoint has no version and names the deployment; the server its own model.
    assert {("/chat/completions", "gpt-4o-mini"), ("/v1/chat/completions", "llama")} <= lines
    assert "POST /openai/batches" in calls(providers, "/openai/")
    prices = PriceTable(check_prices(VLLM_PRICES))
    for index, result in results.items():  # Azure's batch price is half, as OpenAI's
        online = prices.cost(models[index], result.usage)
        assert online is not None and result.cost_usd == pytest.approx(online / 2)
        assert result.batch_id is not None
    deleted = set(providers.batch_jobs()["jobs"][-1]["deleted_files"])
    assert all(job["input_file_id"] in deleted for job in jobs_of(providers))
    assert max(answered_by_jobs(providers).values()) == 1


WITHOUT_LITELLM = """
import sys
sys.modules["litellm"] = None  # as if the extra were not installed
from batch_stream_openai import OpenAIRequest, run_batch
try:
    run_batch([OpenAIRequest("s", "u", model={model!r})], api_key="sk-x", mode="batch")
except ValueError as error:
    print(error)
"""


def test_without_litellm_the_batch_is_refused_naming_the_extra(
    providers: FakeOpenAIServer,
) -> None:
    script = WITHOUT_LITELLM.format(model=AZURE)
    printed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "requests[0]" in printed and "pip install batch-stream-openai[litellm]" in printed
    assert providers.batch_jobs()["calls"] == []
