"""The bundled server's Gemini API (generateContent, batch mode), through the official
``google-genai`` SDK over real HTTP: its shapes, its errors, its batches' life."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import TEST_API_KEY, wait_until

genai = pytest.importorskip("google.genai", reason="the [gemini] extra is not installed")
from google.genai import errors, types  # noqa: E402

pytestmark = pytest.mark.timeout(30)
MODEL = "gemini-2.5-flash"


@pytest.fixture
def gemini(fake: FakeOpenAIServer) -> Iterator[Any]:
    """The official client on the bundled server (batch mode is a v1beta API); the
    server's batch settings restored afterwards."""
    options = types.HttpOptions(base_url=fake.base_url.removesuffix("/v1"), api_version="v1beta")
    yield genai.Client(api_key=TEST_API_KEY, http_options=options)
    fake.configure(batch_seconds=1.0, batch_expire=0, batch_stuck=0)


def inline(key: str, user: str) -> dict[str, Any]:
    config = {"system_instruction": "Be brief.", "max_output_tokens": 64}
    contents = [{"role": "user", "parts": [{"text": user}]}]
    return {"contents": contents, "config": config, "metadata": {"key": key}}


def ended(gemini: Any, name: str) -> Any:
    final = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
    wait_until(lambda: gemini.batches.get(name=name).state.value in final, 10, "the batch to end")
    return gemini.batches.get(name=name)


def test_generate_content_is_answered_in_geminis_shape(gemini: Any) -> None:
    response = gemini.models.generate_content(
        model=MODEL, contents="hello", config={"system_instruction": "Be brief."}
    )
    assert response.text == expected_answer("Be brief.", "hello")
    assert response.candidates[0].finish_reason.value == "STOP"
    assert response.usage_metadata.candidates_token_count > 0


def test_a_batch_runs_then_answers_each_request_inline_with_its_metadata(
    gemini: Any, fake: FakeOpenAIServer
) -> None:
    fake.configure(batch_seconds=0.3)
    requests = [inline("a", "one"), inline("b", "[[status=400]] bad"), inline("c", "three")]
    job = gemini.batches.create(model=MODEL, src=requests, config={"display_name": "job-1"})
    assert job.name.startswith("batches/") and job.display_name == "job-1"
    assert job.state.value == "JOB_STATE_RUNNING"
    done = ended(gemini, job.name)
    assert done.state.value == "JOB_STATE_SUCCEEDED"
    answers = done.dest.inlined_responses
    assert [answer.metadata["key"] for answer in answers] == ["a", "b", "c"]
    assert answers[0].response.text == expected_answer("Be brief.", "one")
    assert answers[1].response is None and answers[1].error.code == 3  # INVALID_ARGUMENT
    assert [b.name for b in gemini.batches.list(config={"page_size": 10})] == [job.name]
    gemini.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as missing:
        gemini.batches.get(name=job.name)
    assert missing.value.code == 404


def test_batches_are_listed_newest_first_a_page_at_a_time(gemini: Any) -> None:
    names = [gemini.batches.create(model=MODEL, src=[inline("k", f"p{i}")]).name for i in range(3)]
    listed = [b.name for b in gemini.batches.list(config={"page_size": 2})]  # every page
    assert listed == names[::-1]


def test_a_cancelled_batch_keeps_what_it_answered(gemini: Any, fake: FakeOpenAIServer) -> None:
    fake.configure(batch_seconds=30.0)
    job = gemini.batches.create(model=MODEL, src=[inline(str(i), f"c{i}") for i in range(4)])
    gemini.batches.cancel(name=job.name)
    done = ended(gemini, job.name)
    assert done.state.value == "JOB_STATE_CANCELLED"
    assert len(done.dest.inlined_responses or []) < 4


def test_an_expired_batch_answers_nothing_and_a_stuck_one_runs_for_ever(
    gemini: Any, fake: FakeOpenAIServer
) -> None:
    fake.configure(batch_seconds=0.3, batch_expire=1)
    expired = ended(gemini, gemini.batches.create(model=MODEL, src=[inline("e", "x")]).name)
    assert expired.state.value == "JOB_STATE_EXPIRED" and not expired.dest.inlined_responses
    fake.configure(batch_stuck=1)
    stuck = gemini.batches.create(model=MODEL, src=[inline("s", "y")])
    created = stuck.create_time.timestamp()
    assert stuck.state.value == "JOB_STATE_RUNNING" and created < time.time() - 47 * 3600


def test_a_call_without_a_key_is_refused(fake: FakeOpenAIServer) -> None:
    url = fake.base_url.removesuffix("/v1") + f"/v1beta/models/{MODEL}:generateContent"
    request = urllib.request.Request(url, data=b'{"contents": []}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403


def test_a_batch_of_an_uploaded_file_answers_in_a_file_of_keyed_lines(
    gemini: Any, fake: FakeOpenAIServer, tmp_path: Any
) -> None:
    fake.configure(batch_seconds=0.3)
    lines = [
        {"key": key, "request": {"contents": [{"role": "user", "parts": [{"text": user}]}],
                                 "generation_config": {"max_output_tokens": 64}}}
        for key, user in (("a", "one"), ("b", "[[status=503]] busy"))
    ]  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = gemini.files.upload(file=source, config={"mime_type": "jsonl"})
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == source.stat().st_size
    job = gemini.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "f"})
    done = ended(gemini, job.name)
    assert done.state.value == "JOB_STATE_SUCCEEDED" and done.dest.inlined_responses is None
    answers = [
        json.loads(line) for line in gemini.files.download(file=done.dest.file_name).splitlines()
    ]
    assert [answer["key"] for answer in answers] == ["a", "b"]
    text = answers[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert text == expected_answer("", "one") and answers[1]["error"]["code"] == 14
    with pytest.raises(errors.ClientError):  # an uploaded file cannot be downloaded
        gemini.files.download(file=uploaded.name)
    gemini.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as raised:
        gemini.files.get(name=uploaded.name)
    assert raised.value.code == 404
