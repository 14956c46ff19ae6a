"""What each request kind sends: pydantic schemas, images, tools, embeddings (on the wire)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batch_stream_openai import EmbeddingRequest, OpenAIRequest, RawRequest, run_batch
from batch_stream_openai._wire.bodies import http_call
from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import SYSTEM, ask

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24


class Weather(BaseModel):
    city: str
    degrees: int


@pytest.mark.fast
def test_a_pydantic_class_is_sent_as_the_sdks_strict_schema_in_both_shapes() -> None:
    from openai.lib._parsing._completions import type_to_response_format_param

    expected = type_to_response_format_param(Weather)
    _, chat = http_call(ask("q", response_format=Weather))
    assert chat["response_format"] == expected
    assert expected["json_schema"]["strict"] is True  # type: ignore[index]
    assert expected["json_schema"]["schema"]["additionalProperties"] is False  # type: ignore[index]
    _, responses = http_call(ask("q", api="responses", response_format=Weather))
    schema = expected["json_schema"]  # type: ignore[index]
    assert responses["text"] == {
        "format": {
            "type": "json_schema",
            "name": "Weather",
            "schema": schema["schema"],
            "strict": True,
        }
    }


@pytest.mark.fast
def test_images_from_urls_files_and_bytes(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    request = ask("what is this?", images=["https://example.com/cat.png", str(photo), PNG])
    assert request.images == (
        "https://example.com/cat.png",
        "data:image/jpeg;base64," + base64.b64encode(JPEG).decode(),
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
    )
    _, chat = http_call(request)
    assert chat["messages"][1]["content"] == [
        {"type": "text", "text": "what is this?"},
        *({"type": "image_url", "image_url": {"url": url}} for url in request.images),
    ]
    _, responses = http_call(ask("what is this?", api="responses", images=[PNG]))
    assert responses["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "what is this?"},
                {"type": "input_image", "image_url": request.images[2]},
            ],
        }
    ]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("images", "message"),
    [
        (["/no/such/file.png"], r"images\[0\]: no such image file '/no/such/file.png'"),
        ([b"GIF? no, text"], r"images\[0\]: these bytes are not a png"),
        ("https://example.com/a.png", "must be a list"),
        ([PNG, 42], r"images\[1\] must be a URL, a file path or bytes"),
        (["ftp://x/y.png"], r"images\[0\]: ftp:// URLs are not fetched by the APIs"),
    ],
)
def test_bad_images_are_named_when_the_request_is_built(images: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        ask("q", images=images)


@pytest.mark.fast
def test_an_image_file_of_an_unknown_type_is_named(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match=r"images\[0\]: 'notes.txt' is not an image type"):
        ask("q", images=[notes])


@pytest.mark.fast
def test_tools_and_tool_choice_pass_through_in_each_shape() -> None:
    chat_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    _, chat = http_call(ask("q", tools=[chat_tool], tool_choice="required"))
    assert (chat["tools"], chat["tool_choice"]) == ([chat_tool], "required")
    responses_tool = {"type": "function", "name": "get_weather", "parameters": {}}
    _, responses = http_call(ask("q", api="responses", tools=[responses_tool]))
    assert responses["tools"] == [responses_tool]
    with pytest.raises(ValueError, match="tool_choice must be one of none, auto, required"):
        ask("q", tool_choice="sometimes")


@pytest.mark.fast
def test_embedding_requests_are_embedding_bodies() -> None:
    assert http_call(EmbeddingRequest("a text")) == (
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "a text"},
    )
    _, body = http_call(EmbeddingRequest(["a", "b"], dimensions=64))
    assert body == {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 64}
    with pytest.raises(TypeError, match=r"EmbeddingRequest\.input must be a str or a non-empty"):
        EmbeddingRequest([])
    with pytest.raises(ValueError, match="dimensions must be >= 1"):
        EmbeddingRequest("x", dimensions=0)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_images_and_tools_reach_the_server(
    api: str, tmp_path: Path, fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(PNG)
    tool: dict[str, Any] = {"type": "function", "name": "look", "parameters": {"type": "object"}}
    if api == "chat":
        tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    run_batch([ask("see", api=api, images=[photo, PNG], tools=[tool])], **pool_options)
    (record,) = fake.requests()
    assert record.body["tools"] == [tool]
    text = json.dumps(record.body)
    assert text.count("data:image/png;base64," + base64.b64encode(PNG).decode()) == 2


def test_a_raw_embeddings_body_is_sent_as_given(
    fake: FakeOpenAIServer, pool_options: dict[str, Any]
) -> None:
    body = {"model": "text-embedding-3-large", "input": ["x", "y"], "encoding_format": "float"}
    run_batch(
        [
            RawRequest("/v1/embeddings", body),
            OpenAIRequest(SYSTEM, "chat too", api="chat", model="gpt-4o-mini"),
        ],
        **pool_options,
    )
    by_path = {r.path: r.body for r in fake.requests()}
    assert by_path["/v1/embeddings"] == body
    assert "/v1/chat/completions" in by_path
