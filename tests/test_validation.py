"""Bad input gets a clear error naming the field and the index, before any worker starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from batch_stream_openai import OpenAIRequest, run_batch, stream_batch

from .conftest import worker_children

GOOD = OpenAIRequest("s", "u", model="gpt-4o-mini")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1, got 0"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency must be an int"),
        ({"workers": -1}, ValueError, "workers must be >= 0"),
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number"),
        ({"backend": "dask"}, ValueError, "backend must be 'local' or 'ray'"),
        ({"backend": "ray", "workers": 0}, ValueError, r"workers=0 \(in-process mode\)"),
        ({"rpm": -5}, ValueError, "rpm must be a positive number"),
        ({"postprocess": "upper"}, TypeError, "postprocess must be callable"),
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
        TypeError, match=r"requests\[2\] must be an OpenAIRequest or RawRequest, got dict"
    ):
        stream_batch(requests)
    assert worker_children({os.getpid()}) == []


def test_a_bad_item_from_a_generator_is_named_when_reached(pool_options: dict[str, Any]) -> None:
    def generate() -> Iterator[Any]:
        yield GOOD
        yield "not a request"

    with pytest.raises(
        TypeError, match=r"requests\[1\] must be an OpenAIRequest or RawRequest, got str"
    ):
        list(stream_batch(generate(), **pool_options))


def test_requests_must_be_iterable() -> None:
    with pytest.raises(TypeError, match="requests must be an iterable of OpenAIRequest"):
        stream_batch(42)  # type: ignore[arg-type]
