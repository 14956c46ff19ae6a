"""The bundled server's Anthropic API (Messages, Message Batches), through the official
``anthropic`` SDK over real HTTP: its shapes, its errors, its batches' life."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import TEST_API_KEY, wait_until

anthropic = pytest.importorskip("anthropic", reason="the [anthropic] extra is not installed")

pytestmark = pytest.mark.timeout(30)
MODEL = "claude-haiku-4-5"


@pytest.fixture
def claude(fake: FakeOpenAIServer) -> Any:
    """The official client, on the bundled server (its own retries off)."""
    return anthropic.Anthropic(
        base_url=fake.base_url.removesuffix("/v1"), api_key=TEST_API_KEY, max_retries=0
    )


def request(custom_id: str, user: str) -> dict[str, Any]:
    params = {
        "model": MODEL,
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": user}],
    }
    return {"custom_id": custom_id, "params": params}


def ended(claude: Any, batch_id: str) -> Any:
    """The batch, once it ended."""
    wait_until(
        lambda: claude.messages.batches.retrieve(batch_id).processing_status == "ended",
        10,
        "the batch to end",
    )
    return claude.messages.batches.retrieve(batch_id)


def test_a_message_is_answered_in_anthropics_shape(claude: Any) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hello"}],
    )
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.content[0].text == expected_answer("Be brief.", "hello")
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0


def test_errors_are_anthropics(claude: Any, fake: FakeOpenAIServer) -> None:
    ask = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "x [[status=429 times=1]]"}],
    }
    with pytest.raises(anthropic.RateLimitError) as raised:
        claude.messages.create(**ask)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert claude.messages.create(**ask).content[0].text  # once only
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.create(model=MODEL, max_tokens=0, messages=ask["messages"])
    for headers, status in (({"anthropic-version": "2023-06-01"}, 401), ({"x-api-key": "k"}, 400)):
        call = urllib.request.Request(
            fake.base_url + "/messages",
            data=json.dumps(ask).encode(),
            headers=headers,
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(call, timeout=5)
        assert refused.value.code == status
        assert json.loads(refused.value.read())["type"] == "error"


def test_a_batch_answers_every_request_once_in_another_order(
    claude: Any, fake: FakeOpenAIServer
) -> None:
    fake.configure(batch_seconds=0.5)
    users = [f"q{i}" for i in range(20)] + ["bad [[status=400]]"]
    sent = [request(f"r{i}", user) for i, user in enumerate(users)]
    batch = claude.messages.batches.create(requests=sent)
    assert batch.processing_status == "in_progress" and batch.results_url is None
    batch = ended(claude, batch.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (20, 1, 0)
    results = list(claude.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == sorted(r["custom_id"] for r in sent)
    assert [r.custom_id for r in results] != [r["custom_id"] for r in sent]  # any order
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["r3"].type == "succeeded"
    assert by_id["r3"].message.content[0].text == expected_answer("Be brief.", "q3")
    assert (
        by_id["r20"].type == "errored" and by_id["r20"].error.error.type == "invalid_request_error"
    )


def test_a_cancelled_batch_ends_with_its_unanswered_requests_canceled(
    claude: Any, fake: FakeOpenAIServer
) -> None:
    fake.configure(batch_seconds=30.0)
    batch = claude.messages.batches.create(requests=[request(f"c{i}", f"q{i}") for i in range(5)])
    with pytest.raises(anthropic.BadRequestError):  # not while it runs
        claude.messages.batches.delete(batch.id)
    cancelled = claude.messages.batches.cancel(batch.id)
    assert cancelled.processing_status in {"canceling", "ended"}
    batch = ended(claude, batch.id)
    assert batch.request_counts.canceled == 5 and batch.cancel_initiated_at is not None
    assert {r.result.type for r in claude.messages.batches.results(batch.id)} == {"canceled"}
    assert claude.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)


def test_an_expiring_batch_ends_half_done_with_the_rest_expired(
    claude: Any, fake: FakeOpenAIServer
) -> None:
    fake.configure(batch_seconds=0.6, batch_expire=1)
    batch = claude.messages.batches.create(requests=[request(f"e{i}", f"q{i}") for i in range(10)])
    batch = ended(claude, batch.id)
    assert (batch.ended_at - batch.created_at).total_seconds() == pytest.approx(0.3, abs=0.01)
    counts = batch.request_counts
    assert counts.expired > 0 and counts.succeeded + counts.expired == 10


def test_batches_are_listed_newest_first_a_page_at_a_time(claude: Any) -> None:
    ids = [claude.messages.batches.create(requests=[request("a", "q")]).id for _ in range(3)]
    page = claude.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in claude.messages.batches.list(limit=10)] == ids[::-1]  # the SDK pages


def test_a_batch_with_a_bad_or_repeated_custom_id_is_refused(claude: Any) -> None:
    for requests in ([request("no spaces", "q")], [request("x", "q"), request("x", "r")]):
        with pytest.raises(anthropic.BadRequestError):
            claude.messages.batches.create(requests=requests)
