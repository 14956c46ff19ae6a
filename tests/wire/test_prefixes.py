"""Prefix keys: requests that start alike share one; `prompt_cache_key="auto"` gives OpenAI
a stable key per prefix, and never touches a key the caller set."""

from __future__ import annotations

import pytest

from batch_stream_openai import EmbeddingRequest, OpenAIRequest, RawRequest, run_batch
from batch_stream_openai._wire.prefixes import PREFIX_CHARS, prefix_key, stable_cache_key
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY

pytestmark = pytest.mark.timeout(30)

FEW_SHOT = "Answer like these examples. " * 60  # longer than PREFIX_CHARS


def chat(system: str, user: str, **options: object) -> OpenAIRequest:
    return OpenAIRequest(system, user, model="gpt-4o-mini", api="chat", **options)  # type: ignore[arg-type]


@pytest.mark.fast
def test_requests_that_start_alike_share_a_key_and_short_ones_have_their_own() -> None:
    assert len(FEW_SHOT) > PREFIX_CHARS
    assert prefix_key(chat(FEW_SHOT, "a")) == prefix_key(chat(FEW_SHOT, "b"))
    assert prefix_key(chat("Be terse.", "a")) != prefix_key(chat("Be terse.", "b"))
    other_model = OpenAIRequest(FEW_SHOT, "a", model="gpt-4o")
    assert prefix_key(other_model) != prefix_key(chat(FEW_SHOT, "a"))
    # A document in the user message is a shared prefix too (document QA).
    document = "A long document. " * 80
    assert prefix_key(chat("Answer.", document + "Q1")) == prefix_key(chat("Answer.", document))
    raw = RawRequest(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": FEW_SHOT}]},
    )
    assert prefix_key(raw) is not None and prefix_key(EmbeddingRequest("x")) is None


@pytest.mark.fast
def test_the_stable_key_is_the_same_in_every_process() -> None:
    # A literal: Python's own hash() changes with each process, this key must not.
    assert stable_cache_key(chat(FEW_SHOT, "anything")) == "3c49f699a09d93ba"
    assert stable_cache_key(EmbeddingRequest("x")) is None


@pytest.mark.timeout(60)
def test_prompt_cache_key_auto_sets_one_stable_key_per_prefix_and_keeps_the_callers(
    fake: FakeOpenAIServer,
) -> None:
    requests = [
        chat(FEW_SHOT, "q1"),
        chat(FEW_SHOT, "q2"),
        chat("Other instructions. " * 60, "o1"),
        chat(FEW_SHOT, "q3", extra_body={"prompt_cache_key": "mine"}),
        EmbeddingRequest("embed me", model="text-embedding-3-small"),
    ]
    options = {"base_url": fake.base_url, "api_key": TEST_API_KEY, "max_concurrency": 1}
    keys = []
    for _ in range(2):  # a later batch gives the same keys
        fake.reset()
        run_batch(requests, prompt_cache_key="auto", **options)
        by_user = {
            str(r.body.get("messages", [{}])[-1].get("content", r.body.get("input"))): r.body
            for r in fake.requests()
        }
        keys.append({user: body.get("prompt_cache_key") for user, body in by_user.items()})
    first = keys[0]
    assert keys[1] == first
    assert first["q1"] == first["q2"] == stable_cache_key(requests[0])
    assert first["o1"] not in (None, first["q1"])
    assert first["q3"] == "mine"  # the caller's key is never touched
    assert first["embed me"] is None
    fake.reset()
    run_batch(requests[:1], **options)  # without the option: no key
    assert "prompt_cache_key" not in fake.requests()[0].body
