"""The bundled server as an Azure OpenAI resource, through the openai SDK's own
`AzureOpenAI` client over real HTTP: a deployment's chat, files and batch jobs with
Azure's unversioned endpoints, and the errors Azure gives before any of them."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import openai
import pytest

from batch_stream_openai.testing import FakeOpenAIServer, expected_answer

from ..helpers import TEST_API_KEY, wait_until

pytestmark = pytest.mark.timeout(30)
VERSION = "2024-10-21"


def azure(fake: FakeOpenAIServer, api_version: str = VERSION) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=fake.base_url.removesuffix("/v1"),
        api_key=TEST_API_KEY,
        api_version=api_version,
        max_retries=0,
    )


def test_a_deployment_answers_chat_at_its_own_path(fake: FakeOpenAIServer) -> None:
    reply = azure(fake).chat.completions.create(
        model="my-deployment", messages=[{"role": "user", "content": "hello azure"}]
    )
    assert reply.choices[0].message.content == expected_answer("", "hello azure")
    [record] = fake.requests()
    assert record.path == "/openai/deployments/my-deployment/chat/completions"
    assert record.headers["api-key"] == TEST_API_KEY


def test_a_batch_job_with_azures_endpoint_runs_and_answers_its_lines(
    fake: FakeOpenAIServer,
) -> None:
    fake.configure(batch_seconds=0.5)
    client = azure(fake)
    lines = [
        {
            "custom_id": str(i),
            "method": "POST",
            "url": "/chat/completions",
            "body": {"model": "my-deployment", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(3)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    job = client.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert job.endpoint == "/chat/completions" and job.status == "validating"
    wait_until(lambda: client.batches.retrieve(job.id).status == "completed", what="the job")
    done = client.batches.retrieve(job.id)
    assert done.output_file_id is not None and done.request_counts is not None
    assert done.request_counts.completed == 3
    output = client.files.content(done.output_file_id).text.splitlines()
    texts = {
        json.loads(line)["custom_id"]: json.loads(line)["response"]["body"]["choices"][0][
            "message"
        ]["content"]
        for line in output
    }
    assert texts == {str(i): expected_answer("", f"q{i}") for i in range(3)}
    assert [call.split(" ")[1] for call in fake.batch_jobs()["calls"]][:2] == [
        "/openai/files",
        "/openai/batches",
    ]


def test_without_an_api_version_azure_answers_404(fake: FakeOpenAIServer) -> None:
    client = openai.OpenAI(base_url=fake.base_url.removesuffix("/v1") + "/openai", api_key="k")
    with pytest.raises(openai.NotFoundError, match="Resource not found"):
        client.batches.list()


def test_without_a_key_azure_answers_401(fake: FakeOpenAIServer) -> None:
    url = fake.base_url.removesuffix("/v1") + f"/openai/batches?api-version={VERSION}"
    with pytest.raises(urllib.error.HTTPError) as raised:  # the SDKs always send a key
        urllib.request.urlopen(url, timeout=10)
    assert raised.value.code == 401
    assert "subscription key" in json.loads(raised.value.read())["error"]["message"]
