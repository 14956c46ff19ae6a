"""What the library uses of its dependencies beyond their call API, against the installed releases.

CI installs the newest release of every dependency on each run, and then the oldest that
``pyproject.toml`` allows (``.ci/run``). Each test here covers one place where the library
leans on something the SDKs do not promise (an attribute, a private helper, an error's
fields, a transport's exceptions) and, when a release moves it, fails with a message that
names the package, its version, what moved and the library code that needs updating, so the
drift is seen before it breaks a landing. SDK objects are built by the SDKs themselves, in
real calls against the bundled server, never from their constructors.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from pydantic import BaseModel

from batch_stream_openai import errors
from batch_stream_openai._wire.failures import to_request_error
from batch_stream_openai._worker.sdk_headers import sdk_base_url, sdk_headers
from batch_stream_openai.testing import FakeOpenAIServer

from .helpers import TEST_API_KEY, closed_port, sdk_error, wait_until


@contextlib.contextmanager
def relied_on(package: str, what: str, where: str) -> Iterator[None]:
    """Fail with a message naming `package`, `what` moved and `where` it is used."""
    try:
        yield
    except Exception as exc:  # an AttributeError, an ImportError, a failed assertion
        version = importlib.metadata.version(package)
        pytest.fail(
            f"{package} {version} changed {what}, which {where} relies on: {exc!r}",
            pytrace=False,
        )


@pytest.mark.fast
@pytest.mark.parametrize(
    ("base_url", "environment"),
    [
        (None, {}),
        ("http://127.0.0.1:1/v1", {"OPENAI_ORG_ID": "org-contract"}),
        (None, {"OPENAI_BASE_URL": "http://127.0.0.1:2/v1/", "OPENAI_PROJECT_ID": "proj-c"}),
        ("http://127.0.0.1:3/v1/", {"OPENAI_ORG_ID": "org-c", "OPENAI_PROJECT_ID": "proj-c"}),
    ],
)
def test_the_workers_send_with_the_endpoint_and_headers_of_an_sdk_client(
    base_url: str | None,
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the snapshot is taken afresh
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with relied_on(
        "openai",
        "AsyncOpenAI.base_url / default_headers / auth_headers",
        "batch_stream_openai/_worker/sdk_headers.py",
    ):
        client = openai.AsyncOpenAI(api_key="sk-contract", base_url=base_url, max_retries=0)
        expected = {**client.default_headers, **client.auth_headers}
        assert sdk_base_url(base_url) == str(client.base_url)
        assert sdk_headers("sk-contract") == {k: v for k, v in expected.items() if v}
        assert sdk_headers("sk-contract") == {k: v for k, v in expected.items() if v}  # kept


@pytest.mark.fast
def test_the_sdk_helper_turns_a_pydantic_class_into_a_strict_json_schema() -> None:
    class Label(BaseModel):
        label: str

    with relied_on(
        "openai",
        "openai.lib._parsing._completions.type_to_response_format_param",
        "batch_stream_openai/bodies.py (response_format_param)",
    ):
        from openai.lib._parsing._completions import type_to_response_format_param

        param: Any = type_to_response_format_param(Label)
        assert param["type"] == "json_schema"
        assert param["json_schema"]["name"] == "Label"
        assert param["json_schema"]["strict"] is True
        assert param["json_schema"]["schema"]["properties"] == {
            "label": {"title": "Label", "type": "string"}
        }


@pytest.mark.timeout(30)
def test_status_errors_carry_status_code_headers_and_body(fake: FakeOpenAIServer) -> None:
    with relied_on(
        "openai",
        "APIStatusError.status_code / response.headers / body / code",
        "batch_stream_openai/provider_errors.py (_api_error: LiteLLM raises the SDK's errors)",
    ):
        error = sdk_error(fake, "[[status=429 retry_after=2 code=rate_limit_exceeded]] x")
        assert isinstance(error, openai.APIStatusError)
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "2"
        assert isinstance(error.body, dict) and error.body["code"] == "rate_limit_exceeded"
        converted = to_request_error(error, index=3, attempts=1, secret=None)
        assert isinstance(converted, errors.APIError)
        assert (converted.status_code, converted.code) == (429, "rate_limit_exceeded")
        assert converted.retry_after_s == 2.0 and converted.retryable
        assert converted.request_id is not None


@pytest.mark.timeout(30)
def test_connection_errors_and_timeouts_say_where(fake: FakeOpenAIServer) -> None:
    port = closed_port()
    with relied_on(
        "openai",
        "APIConnectionError / APITimeoutError (their classes and request.url)",
        "batch_stream_openai/provider_errors.py and batchapi.py (_transient)",
    ):
        client = openai.OpenAI(
            api_key=TEST_API_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
        )
        with pytest.raises(openai.APIConnectionError) as refused:
            client.models.list()
        assert not isinstance(refused.value, openai.APITimeoutError)
        converted = to_request_error(refused.value, index=0, attempts=1, secret=None)
        assert type(converted) is errors.APIConnectionError
        assert f"127.0.0.1:{port}" in str(converted)
        timeout = sdk_error(fake, "[[hang]] x", timeout=0.3)
        assert isinstance(timeout, openai.APITimeoutError)
        assert isinstance(timeout, openai.APIConnectionError)
        converted = to_request_error(timeout, index=0, attempts=1, secret=None)
        assert type(converted) is errors.APITimeoutError and converted.retryable


@pytest.mark.timeout(60)
def test_the_batch_api_resources_and_the_batch_fields_the_job_route_reads(
    fake: FakeOpenAIServer,
) -> None:
    fake.configure(batch_seconds=0.2)
    line = {
        "custom_id": "0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    with relied_on(
        "openai",
        "files.create/content/delete, batches.create/list/retrieve/cancel or the Batch type",
        "batch_stream_openai/_batchapi/openai.py (OpenAIBatches)",
    ):
        sdk = openai.OpenAI(api_key=TEST_API_KEY, base_url=fake.base_url, max_retries=0)
        uploaded = sdk.files.create(
            file=("input.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch"
        )
        job = sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"batch_stream_openai_job": "k1"},
        )
        listed = sdk.batches.list(limit=100).data
        assert any((b.metadata or {}).get("batch_stream_openai_job") == "k1" for b in listed)
        batch = sdk.batches.retrieve(job.id)
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            batch = sdk.batches.retrieve(job.id)
        assert batch.status == "completed" and batch.errors is None
        assert batch.request_counts is not None and batch.request_counts.total == 1
        assert batch.request_counts.completed + batch.request_counts.failed == 1
        assert batch.output_file_id is not None and batch.error_file_id is None
        output = sdk.files.content(batch.output_file_id).content
        assert json.loads(output)["response"]["status_code"] == 200
        sdk.files.delete(batch.output_file_id)
        again = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert sdk.batches.cancel(again.id).status in ("cancelling", "cancelled")


@pytest.mark.timeout(60)
def test_the_message_batches_calls_and_fields_the_anthropic_adapter_reads(
    fake: FakeOpenAIServer,
) -> None:
    anthropic = pytest.importorskip("anthropic", reason="the [anthropic] extra is not installed")
    fake.configure(batch_seconds=0.2)
    params = {"model": "claude-haiku-4-5", "max_tokens": 16,
              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with relied_on(
        "anthropic",
        "messages.batches create/list/retrieve/results/cancel/delete or MessageBatch",
        "batch_stream_openai/_batchapi/anthropic.py (AnthropicBatches)",
    ):
        sdk = anthropic.Anthropic(
            api_key=TEST_API_KEY, base_url=fake.base_url.removesuffix("/v1"), max_retries=0
        )
        created = sdk.messages.batches.create(requests=[{"custom_id": "0", "params": params}])
        assert created.id in [batch.id for batch in sdk.messages.batches.list(limit=100)]
        batch = sdk.messages.batches.retrieve(created.id)
        while batch.processing_status != "ended":
            batch = sdk.messages.batches.retrieve(created.id)
        counts = batch.request_counts
        assert (counts.succeeded, counts.processing, batch.cancel_initiated_at) == (1, 0, None)
        assert batch.created_at.timestamp() > 0
        with sdk.messages.batches.with_streaming_response.results(created.id) as response:
            [line] = [json.loads(raw) for raw in response.iter_lines() if raw.strip()]
        assert line["custom_id"] == "0" and line["result"]["type"] == "succeeded"
        assert sdk.messages.batches.delete(created.id).id == created.id
        again = sdk.messages.batches.create(requests=[{"custom_id": "1", "params": params}])
        cancelled = sdk.messages.batches.cancel(again.id)
        assert cancelled.processing_status in ("canceling", "ended")


@pytest.mark.timeout(60)
def test_the_batch_calls_and_fields_the_gemini_adapter_reads(fake: FakeOpenAIServer) -> None:
    genai = pytest.importorskip("google.genai", reason="the [gemini] extra is not installed")
    fake.configure(batch_seconds=0.2)
    request = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
               "config": {"max_output_tokens": 16}, "metadata": {"key": "0"}}  # fmt: skip
    with relied_on(
        "google-genai",
        "batches create/get/list/cancel/delete, BatchJob or InlinedResponse",
        "batch_stream_openai/_batchapi/gemini.py (GeminiBatches)",
    ):
        options = genai.types.HttpOptions(
            base_url=fake.base_url.removesuffix("/v1"), api_version="v1beta", timeout=10_000
        )
        sdk = genai.Client(api_key=TEST_API_KEY, http_options=options)
        job = sdk.batches.create(model="gemini-2.5-flash", src=[request],
                                 config={"display_name": "k1"})  # fmt: skip
        listed = list(sdk.batches.list(config={"page_size": 100}))
        assert any(b.display_name == "k1" and b.name == job.name for b in listed)
        running = "JOB_STATE_RUNNING"
        wait_until(lambda: sdk.batches.get(name=job.name).state.value != running, what="job")
        got = sdk.batches.get(name=job.name)
        assert got.state.value == "JOB_STATE_SUCCEEDED" and got.create_time.timestamp() > 0
        [answer] = got.dest.inlined_responses
        dumped = answer.model_dump(mode="json", exclude_none=True)
        assert dumped["metadata"] == {"key": "0"} and "candidates" in dumped["response"]
        assert "usage_metadata" in dumped["response"] and got.model
        sdk.batches.delete(name=job.name)
        again = sdk.batches.create(model="gemini-2.5-flash", src=[request])
        sdk.batches.cancel(name=again.name)


@pytest.mark.timeout(60)
def test_the_file_calls_and_fields_the_gemini_adapter_reads(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    genai = pytest.importorskip("google.genai", reason="the [gemini] extra is not installed")
    fake.configure(batch_seconds=0.2)
    source = tmp_path / "upload.jsonl"
    line = {"key": "0", "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}
    source.write_text(json.dumps(line) + "\n")
    with relied_on(
        "google-genai",
        "files upload/download(destination=)/delete, batches.create(src=a file name), "
        "BatchJob.dest.file_name, or GenerateContentResponse.model_validate of the API's JSON",
        "batch_stream_openai/_batchapi/gemini.py (GeminiBatches.upload, _answers)",
    ):
        options = genai.types.HttpOptions(
            base_url=fake.base_url.removesuffix("/v1"), api_version="v1beta", timeout=10_000
        )
        sdk = genai.Client(api_key=TEST_API_KEY, http_options=options)
        uploaded = sdk.files.upload(file=source, config={"mime_type": "jsonl"})
        job = sdk.batches.create(model="gemini-2.5-flash", src=str(uploaded.name))
        running = "JOB_STATE_RUNNING"
        wait_until(lambda: sdk.batches.get(name=job.name).state.value != running, what="job")
        got = sdk.batches.get(name=job.name)
        assert got.dest is not None and got.dest.file_name
        sdk.files.download(file=got.dest.file_name, destination=str(tmp_path / "out.jsonl"))
        [answer] = [json.loads(text) for text in (tmp_path / "out.jsonl").read_text().splitlines()]
        parsed = genai.types.GenerateContentResponse.model_validate(answer["response"])
        dumped = parsed.model_dump(mode="json", exclude_none=True)
        assert answer["key"] == "0" and dumped["usage_metadata"]["prompt_token_count"] > 0
        sdk.files.delete(name=got.dest.file_name)


@pytest.mark.timeout(30)
def test_aiohttp_reports_a_refused_connection_with_its_host_and_port() -> None:
    port = closed_port()

    async def post() -> BaseException:
        connector = aiohttp.TCPConnector(limit=4)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                await session.post(f"http://127.0.0.1:{port}/v1/x", data=b"{}", proxy=None)
            except aiohttp.ClientError as error:
                return error
        raise AssertionError("the post went through")

    with relied_on(
        "aiohttp",
        "TCPConnector(limit=), ClientTimeout(total=), ClientConnectorError.host/port",
        "batch_stream_openai/providers.py (_post) and provider_errors.py (_host_of)",
    ):
        error = asyncio.run(post())
        assert isinstance(error, aiohttp.ClientConnectorError)
        assert (error.host, error.port) == ("127.0.0.1", port)
        converted = to_request_error(error, index=0, attempts=1, secret=None)
        assert f"127.0.0.1:{port}" in str(converted) and converted.retryable


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    """LiteLLM, imported in the test process (~5 s: only by the tests that need it)."""
    if importlib.util.find_spec("litellm") is None:
        pytest.skip("the [litellm] extra is not installed")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


@pytest.mark.timeout(120)
def test_litellm_takes_our_arguments_and_answers_with_model_dump(
    fake: FakeOpenAIServer, litellm: Any
) -> None:
    body = {"model": "hosted_vllm/llama", "messages": [{"role": "user", "content": "hi"}]}
    with relied_on(
        "litellm",
        "acompletion(timeout=, num_retries=, max_retries=), model_dump() or suppress_debug_info",
        "batch_stream_openai/_worker/providers.py (_complete_litellm), _wire/litellm.py",
    ):
        litellm.suppress_debug_info = True
        answer = asyncio.run(
            litellm.acompletion(
                **body,
                api_base=fake.base_url,
                api_key="sk-vllm",
                timeout=10,
                num_retries=0,
                max_retries=0,
            )
        )
        data = answer.model_dump()
        assert data["choices"][0]["message"]["content"].startswith("echo: hi")
        assert data["usage"]["prompt_tokens"] > 0


@pytest.mark.timeout(120)
def test_litellms_batch_functions_take_our_arguments_and_answer_like_the_openai_sdk(
    fake: FakeOpenAIServer, litellm: Any
) -> None:
    fake.configure(batch_seconds=0.2)
    params = {"custom_llm_provider": "hosted_vllm", "api_base": fake.base_url, "api_key": "k",
              "max_retries": 0, "timeout": 10}  # fmt: skip
    body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    with relied_on(
        "litellm",
        "create_file / create_batch / retrieve_batch / list_batches / file_content / "
        "file_delete / cancel_batch, or the openai-shaped objects they return",
        "batch_stream_openai/_batchapi/litellm.py (_Files, _Batches, read by OpenAIBatches)",
    ):
        litellm.suppress_debug_info = True
        data = io.BytesIO(json.dumps(line).encode() + b"\n")
        uploaded = litellm.create_file(file=("in.jsonl", data), purpose="batch", **params)
        job = litellm.create_batch(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions",
            completion_window="24h", metadata={"k": "v"}, **params,
        )  # fmt: skip
        assert [b.id for b in litellm.list_batches(limit=100, **params).data] == [job.id]
        wait_until(lambda: litellm.retrieve_batch(job.id, **params).status == "completed")
        done = litellm.retrieve_batch(job.id, **params)
        assert done.metadata == {"k": "v"} and done.request_counts.completed == 1
        assert b'"custom_id": "0"' in litellm.file_content(done.output_file_id, **params).content
        assert litellm.file_delete(uploaded.id, **params).deleted
        assert litellm.cancel_batch(job.id, **params).status == "completed"
