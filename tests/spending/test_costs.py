"""Prices and costs: the arithmetic, the caller's prices, genai-prices, the hard cap."""

from __future__ import annotations

from typing import Any

import pytest

from batch_stream_openai import (
    APIError,
    BudgetExceededError,
    OpenAIRequest,
    run_batch,
    stream_batch,
)
from batch_stream_openai._spending.cap import Spending
from batch_stream_openai._spending.prices import Price, PriceTable, check_prices
from batch_stream_openai.results import Usage
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import ask

pytestmark = pytest.mark.timeout(60)

OWN = {"gpt-4o-mini": {"input": 2.0, "output": 8.0, "cached_input": 1.0}}


@pytest.mark.fast
def test_cost_is_the_usage_at_the_price_with_cached_input_at_its_rate() -> None:
    price = Price(input=2.0, output=8.0, cached_input=1.0)
    usage = Usage(input_tokens=1_000, output_tokens=500, reasoning_tokens=100, cached_tokens=400)
    assert price.cost(usage) == pytest.approx((600 * 2.0 + 400 * 1.0 + 500 * 8.0) / 1e6)
    assert Price(2.0, 8.0).cost(usage) == pytest.approx((1_000 * 2.0 + 500 * 8.0) / 1e6)


@pytest.mark.fast
def test_the_callers_prices_win_and_batch_and_flex_are_half() -> None:
    table = PriceTable(check_prices(OWN))
    assert table.price("gpt-4o-mini") == Price(2.0, 8.0, 1.0)
    assert table.price("gpt-4o-mini", "batch") == Price(1.0, 4.0, 0.5)
    assert table.price("no-such-model-anywhere") is None
    assert table.cost("no-such-model-anywhere", Usage(1, 1)) is None


@pytest.mark.fast
def test_a_batch_price_the_table_does_not_list_is_half_and_a_listed_one_is_kept() -> None:
    table = PriceTable()
    azure, azure_batch = table.price("azure/gpt-4o-mini"), table.price("azure/gpt-4o-mini", "batch")
    assert azure is not None and azure_batch is not None  # genai-prices lists no Azure batch
    assert azure_batch == Price(azure.input / 2, azure.output / 2, (azure.cached_input or 0) / 2)
    gemini = table.price("gemini/gemini-2.5-flash", "batch")  # listed: its cached rate is kept
    default = table.price("gemini/gemini-2.5-flash")
    assert gemini is not None and default is not None and gemini.input == default.input / 2
    assert gemini.cached_input == default.cached_input


@pytest.mark.fast
def test_genai_prices_knows_openai_models() -> None:
    price = PriceTable().price("gpt-4o")
    assert price is not None and price.input > 0 and price.output > price.input


@pytest.mark.fast
@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"m": {"input": 1}}, "needs 'input' and 'output'"),
        ({"m": {"input": 1, "output": -2}}, r"prices\['m'\]\['output'\] must be a number >= 0"),
        ({"m": {"input": 1, "output": 2, "cache": 1}}, "needs 'input' and 'output'"),
        ({"m": [1, 2]}, "must map 'input'/'output'"),
    ],
)
def test_bad_prices_are_named(prices: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        check_prices(prices)


@pytest.mark.fast
def test_spending_reserves_the_worst_case_and_settles_what_was_paid() -> None:
    spending = Spending(0.02, PriceTable(check_prices(OWN)))
    first = spending.reserve("gpt-4o-mini", input_tokens=1_000, output_cap=500)
    assert first is not None and first.usd == pytest.approx((1_000 * 2 + 500 * 8) / 1e6)
    second = spending.reserve("gpt-4o-mini", input_tokens=1_000, output_cap=500)
    assert second is not None
    assert spending.reserve("gpt-4o-mini", input_tokens=1_000_000, output_cap=500) is None
    assert not spending.exhausted  # something in flight may still settle below its worst
    spending.settle(first, cost_usd=0.001, error=None, output_tokens=50)
    assert spending.spent == pytest.approx(0.001)
    error = APIError("no", status_code=500)
    spending.settle(second, cost_usd=None, error=error)  # an error answer costs nothing
    assert spending.spent == pytest.approx(0.001) and spending.exhausted
    lost = spending.reserve("gpt-4o-mini", input_tokens=10, output_cap=10)
    assert lost is not None
    spending.settle(lost, cost_usd=None, error=TimeoutError())  # may have been billed
    assert spending.spent == pytest.approx(0.001 + lost.usd)


@pytest.mark.fast
def test_an_uncapped_model_answers_once_before_the_others_go_then_is_reserved_per_model() -> None:
    spending = Spending(1.0, PriceTable(check_prices(OWN)))
    probe = spending.reserve("gpt-4o-mini", input_tokens=100, output_cap=None)
    assert probe is not None and probe.probe
    assert spending.reserve("gpt-4o-mini", input_tokens=100, output_cap=None) is None  # waits
    other = spending.reserve("gpt-4o", input_tokens=100, output_cap=None)  # another model
    assert other is not None and other.probe
    capped = spending.reserve("gpt-4o-mini", input_tokens=100, output_cap=50)
    assert capped is not None and not capped.probe
    spending.settle(probe, cost_usd=0.08, error=None, output_tokens=10_000)
    after = spending.reserve("gpt-4o-mini", input_tokens=100, output_cap=None)
    assert after is not None and not after.probe
    assert after.usd == pytest.approx((100 * 2 + 15_000 * 8) / 1e6)  # 1.5x the longest
    # In batch mode (no answer for hours) nothing waits: the first guess stands.
    batch = Spending(1.0, PriceTable(check_prices(OWN)))
    lines = [batch.reserve("gpt-4o-mini", 100, None, learn_first=False) for _ in range(3)]
    assert all(line is not None and not line.probe for line in lines)


@pytest.mark.timeout(60)
def test_max_cost_is_not_overshot_by_long_uncapped_answers(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    cap = 0.05  # about 8 answers of 10,000 tokens at $0.60 per million
    stream = stream_batch(
        [ask(f"long {i} [[big=40000]]") for i in range(100)],
        max_cost=cap,
        max_concurrency=50,
        return_results=True,
        **pool_options,
    )
    results = dict(stream)
    answered = [r for r in results.values() if r.error is None]
    assert answered and sorted(results) == list(range(100))
    assert all(isinstance(r.error, BudgetExceededError) for r in results.values() if r.error)
    assert stream.summary.cost_usd <= cap  # was $0.426 for this cap: 8.5x
    assert stream.summary.cost_usd == pytest.approx(sum(r.cost_usd or 0 for r in answered))


def test_cost_per_result_and_in_the_summary_is_the_servers_usage_at_the_price(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    stream = stream_batch(
        [ask(f"priced {i}" * (i + 1)) for i in range(8)],
        prices=OWN,
        return_results=True,
        **pool_options,
    )
    results = dict(stream)
    for result in results.values():
        assert result.usage is not None
        expected = (result.usage.input_tokens * 2.0 + result.usage.output_tokens * 8.0) / 1e6
        assert result.cost_usd == pytest.approx(expected)
    assert stream.summary.cost_usd == pytest.approx(sum(r.cost_usd or 0 for r in results.values()))
    assert stream.summary.unpriced == 0 and "$" in str(stream.summary)


def test_input_read_from_the_prompt_cache_is_priced_at_its_rate_and_the_saving_shown(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    fake.configure(prefix_cache=10_000)
    few_shot = "Examples of the task. " * 50
    requests = [OpenAIRequest(few_shot, f"q{i}", model="gpt-4o-mini", api="chat") for i in range(4)]
    stream = stream_batch(
        requests, prices=OWN, return_results=True, max_concurrency=1, **pool_options
    )
    results = dict(stream)
    usages = [r.usage for r in results.values() if r.usage is not None]
    assert len(usages) == 4 and sum(u.cached_tokens > 0 for u in usages) == 3
    for result in results.values():
        usage = result.usage
        assert usage is not None
        uncached = usage.input_tokens - usage.cached_tokens
        expected = (uncached * 2.0 + usage.cached_tokens * 1.0 + usage.output_tokens * 8.0) / 1e6
        assert result.cost_usd == pytest.approx(expected)
    summary = stream.summary
    cached = sum(u.cached_tokens for u in usages)
    assert summary.cached_input_tokens == cached
    assert summary.prompt_cache_saved_usd == pytest.approx(cached * (2.0 - 1.0) / 1e6)
    assert f"{summary.prompt_cache_rate:.0%} of input from the prompt cache ($" in str(summary)


def test_max_cost_holds_with_every_index_once_and_the_servers_own_records_agree(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    users = [f"capped {i} " + "x" * 400 for i in range(60)]
    cap = 0.004
    stream = stream_batch(
        [ask(u, max_output_tokens=100) for u in users],
        prices=OWN,
        max_cost=cap,
        max_concurrency=8,
        return_results=True,
        **pool_options,
    )
    results = dict(stream)
    assert sorted(results) == list(range(60))
    refused = [r for r in results.values() if isinstance(r.error, BudgetExceededError)]
    answered = [r for r in results.values() if r.error is None]
    assert refused and answered and len(refused) + len(answered) == 60
    # Recomputed from what the server answered: its own token counts, at the prices.
    served = [r for r in fake.requests() if r.status == 200]
    assert len(served) == len(answered)
    spent = sum(
        (
            len(r.body["messages"][0]["content"] + r.body["messages"][1]["content"]) / 4 * 2.0
            + 40 * 8.0
        )
        / 1e6
        for r in served
    )
    assert stream.summary.cost_usd <= cap
    assert stream.summary.cost_usd == pytest.approx(sum(r.cost_usd or 0 for r in answered))
    assert spent <= cap * 1.2  # the server's count, by its own characters / 4 rule


def test_max_cost_with_an_unknown_price_fails_before_anything_is_sent(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    request = OpenAIRequest("s", "u", model="openai/our-private-model", api="chat")
    with pytest.raises(ValueError, match=r"max_cost needs the price of model 'openai/our-pri"):
        run_batch([request], max_cost=1.0, **pool_options)
    with pytest.raises(ValueError, match=r"prices=\{'openai/our-private-model'"):
        list(stream_batch(iter([request]), max_cost=1.0, **pool_options))
    assert fake.stats().requests == 0
    priced = run_batch(
        [request], max_cost=1.0, prices={request.model: {"input": 1, "output": 1}}, **pool_options
    )
    assert isinstance(priced[0], str)
