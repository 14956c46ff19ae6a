"""What comes back: parsed pydantic objects, refusals, tool calls, embeddings (bundled server)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from pydantic import BaseModel

from batch_stream_openai import (
    EmbeddingRequest,
    EmptyResponseError,
    ParseError,
    RawRequest,
    RefusalError,
    run_batch,
    stream_batch,
)
from batch_stream_openai.testing import FakeOpenAIServer, expected_answer
from batch_stream_openai.testing.answers import expected_embedding

from ..helpers import SYSTEM, ask

pytestmark = pytest.mark.timeout(60)


class Forecast(BaseModel):
    city: str
    degrees: int
    sunny: bool


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_result_parsed_is_an_instance_of_the_class_with_the_answers_values(
    api: str, pool_options: dict[str, Any]
) -> None:
    users = [f"forecast {i}" for i in range(4)]
    results = run_batch(
        [ask(u, api=api, response_format=Forecast) for u in users],
        return_results=True,
        **pool_options,
    )
    for user, result in zip(users, results, strict=True):
        echo = expected_answer(SYSTEM, user)
        assert isinstance(result.parsed, Forecast)
        assert result.parsed == Forecast(city=echo, degrees=len(echo), sunny=True)
        assert json.loads(result.text) == result.parsed.model_dump()
    plain = run_batch([ask(users[0], api=api, response_format=Forecast)], **pool_options)
    assert isinstance(plain[0], str) and Forecast.model_validate_json(plain[0])


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_an_answer_that_does_not_validate_is_a_parse_error_for_its_index_only(
    api: str, pool_options: dict[str, Any]
) -> None:
    users = ["good one", "[[bad_json]] bad one", "good two"]
    results = run_batch(
        [ask(u, api=api, response_format=Forecast) for u in users],
        return_results=True,
        **pool_options,
    )
    error = results[1].error
    assert isinstance(error, ParseError) and error.index == 1
    assert error.text == json.dumps({"unexpected": True})
    assert "city" in error.validation_error and "Field required" in error.validation_error
    assert results[1].text == error.text
    assert all(isinstance(r.parsed, Forecast) for r in (results[0], results[2]))


def test_a_class_defined_in_main_travels_and_comes_back_as_itself(
    fake: FakeOpenAIServer,
) -> None:
    code = f"""
        from pydantic import BaseModel
        from batch_stream_openai import OpenAIRequest, run_batch

        class Verdict(BaseModel):
            label: str
            confidence: float

        if __name__ == "__main__":
            results = run_batch(
                [OpenAIRequest("s", f"judge {{i}}", model="gpt-4o-mini", api="chat",
                               response_format=Verdict) for i in range(3)],
                return_results=True, base_url={fake.base_url!r}, api_key="sk-test",
            )
            assert all(type(r.parsed) is Verdict for r in results), [r.error for r in results]
            print(results[0].parsed.confidence)
    """
    out = subprocess.run(
        [sys.executable, "-"],
        input=textwrap.dedent(code),
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.5"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_refusal_is_a_refusal_error_with_its_words(
    api: str, pool_options: dict[str, Any]
) -> None:
    (plain,) = run_batch([ask("[[refuse]] no", api=api, response_format=Forecast)], **pool_options)
    assert isinstance(plain, RefusalError) and isinstance(plain, EmptyResponseError)
    assert plain.refusal == "I'm sorry, I cannot help with that."


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_calls_come_back_in_result_tool_calls(api: str, pool_options: dict[str, Any]) -> None:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    }
    function = {"name": "get_forecast", "parameters": parameters}
    tool = (
        {"type": "function", "function": function}
        if api == "chat"
        else {"type": "function", **function}
    )
    request = ask("[[tool_call]] weather?", api=api, tools=[tool])
    (rich,) = run_batch([request], return_results=True, **pool_options)
    (call,) = rich.tool_calls
    echo = expected_answer(SYSTEM, "[[tool_call]] weather?")
    assert (call.name, call.arguments) == ("get_forecast", {"city": echo, "days": len(echo)})
    assert call.id and call.id.startswith("call_")
    (plain,) = run_batch([request], **pool_options)
    assert isinstance(plain, EmptyResponseError)
    assert "tool calls (get_forecast)" in str(plain) and "return_results=True" in str(plain)


def test_embeddings_are_the_servers_vectors_for_text_and_list_inputs(
    pool_options: dict[str, Any],
) -> None:
    results = run_batch(
        [
            EmbeddingRequest("one text"),
            EmbeddingRequest(["first", "second", "third"], dimensions=4),
            ask("and a chat request in the same batch"),
        ],
        **pool_options,
    )
    assert results[0] == expected_embedding("one text")
    assert results[1] == [expected_embedding(t, 4) for t in ("first", "second", "third")]
    assert results[2] == expected_answer(SYSTEM, "and a chat request in the same batch")
    stream = stream_batch(
        [EmbeddingRequest("costed")], return_results=True, tpm=100_000, **pool_options
    )
    ((_, rich),) = list(stream)
    assert rich.embedding == expected_embedding("costed") and rich.text is None
    assert rich.usage is not None and rich.usage.input_tokens > 0
    assert rich.cost_usd is not None and rich.cost_usd > 0  # text-embedding-3-small has a price
    raw = run_batch(
        [RawRequest("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]})],
        **pool_options,
    )
    assert raw[0] == [expected_embedding("a"), expected_embedding("b")]
