"""Bad input gets a clear error naming the field and the index, before any worker starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from batch_stream_openai import OpenAIRequest, run_batch, stream_batch

from ..helpers import worker_children

GOOD = OpenAIRequest("s", "u", model="gpt-4o-mini")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1, got 0"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency must be an int"),
        ({"workers": -1}, ValueError, "workers must be >= 0"),
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number"),
        ({"backend": "dask"}, ValueError, "backend must be one of 'process', 'thread', 'ray'"),
        ({"backend": "ray", "workers": 0}, ValueError, r"workers=0 \(in-process mode\)"),
        ({"rpm": -5}, ValueError, "rpm must be a positive number"),
        ({"postprocess": "upper"}, TypeError, "postprocess must be callable"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a positive number, got nan"),
        ({"timeout": float("inf")}, ValueError, "timeout must be a positive number, got inf"),
        ({"rpm": float("nan")}, ValueError, "rpm must be a positive number"),
        ({"tpm": float("inf")}, ValueError, "tpm must be a positive number"),
        ({"return_results": 1}, TypeError, "return_results must be True or False, got 1"),
        ({"progress": "yes"}, TypeError, "progress must be True or False"),
        ({"adaptive": None}, TypeError, "adaptive must be True or False"),
        ({"api_key": "sk-clé-0123456789"}, ValueError, "api_key must be ASCII"),
        ({"base_url": "localhost:8000/v1"}, ValueError, "base_url must be an http:// or https://"),
        ({"base_url": "http:///v1"}, ValueError, "with a host"),
        ({"base_url": 8000}, TypeError, "base_url must be a URL or a non-empty list of URLs"),
        ({"base_url": []}, TypeError, "base_url must be a URL or a non-empty list of URLs"),
        (
            {"base_url": ["http://a:8000/v1", "b:8000/v1"]},
            ValueError,
            r"base_url\[1\] must be an http:// or https:// URL",
        ),
        (
            {"base_url": ["http://a:8000/v1", "http://a:8000/v1"]},
            ValueError,
            "base_url lists an endpoint twice",
        ),
        ({"max_concurrency": "fast"}, ValueError, "max_concurrency must be an int or 'auto'"),
        (
            {"max_concurrency": "auto", "max_concurrency_cap": 0},
            ValueError,
            "max_concurrency_cap must be >= 1",
        ),
        ({"endpoint_concurrency": 0}, ValueError, "endpoint_concurrency must be >= 1"),
        ({"hedge": 2}, ValueError, r"hedge must be True, False or a fraction .* got 2"),
        ({"hedge": "yes"}, ValueError, "hedge must be True, False or a fraction"),
        ({"workers": 10**6}, ValueError, r"workers=1000000 is far more than this machine"),
    ],
)
def test_bad_arguments_raise_at_the_call(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        stream_batch([GOOD], **kwargs)
    with pytest.raises(error, match=message):
        run_batch([GOOD], **kwargs)


def test_a_bad_item_in_a_list_is_named_before_any_worker_starts() -> None:
    requests: list[Any] = [GOOD, GOOD, {"system_prompt": "s", "user_prompt": "u"}]
    with pytest.raises(
        TypeError,
        match=r"requests\[2\] must be an OpenAIRequest, EmbeddingRequest or RawRequest, got dict",
    ):
        stream_batch(requests)
    assert worker_children({os.getpid()}) == []


def test_a_bad_item_from_a_generator_is_named_when_reached(pool_options: dict[str, Any]) -> None:
    def generate() -> Iterator[Any]:
        yield GOOD
        yield "not a request"

    with pytest.raises(
        TypeError,
        match=r"requests\[1\] must be an OpenAIRequest, EmbeddingRequest or RawRequest, got str",
    ):
        list(stream_batch(generate(), **pool_options))


def test_requests_must_be_iterable() -> None:
    with pytest.raises(TypeError, match="requests must be an iterable of OpenAIRequest"):
        stream_batch(42)  # type: ignore[arg-type]


def test_workers_are_never_more_than_the_concurrency() -> None:
    from batch_stream_openai import BatchPool

    assert BatchPool(workers=8, max_concurrency=3).workers == 3
    assert BatchPool(workers=2, max_concurrency=3).workers == 2
