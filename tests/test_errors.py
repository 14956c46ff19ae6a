"""Every exception crosses a process boundary with its evidence intact."""

from __future__ import annotations

import pickle

import pytest

from batch_stream_openai import errors
from batch_stream_openai._wire.config import ClientConfig, mask_secret

pytestmark = pytest.mark.fast

EXAMPLES = [
    errors.APIError("bad", status_code=429, code="rate_limit_exceeded", index=3, attempts=4),
    errors.APITimeoutError("slow", index=1, attempts=2, retryable=True),
    errors.APIConnectionError("reset", index=1, attempts=2, retryable=True),
    errors.EmptyResponseError("refused", index=0, attempts=1),
    errors.ProviderNotInstalledError("pip install batch-stream-openai[litellm]", index=2),
    errors.ResultTransferError("cannot pickle", index=5),
    errors.WorkerCrashedError("killed", exitcode=-9, index=7, attempts=4),
    errors.WorkerStartupError("3 workers died", cause="ImportError: x"),
    errors.PoolClosedError("Cannot call stream() on a closed BatchPool"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_type_fields_and_message(error: errors.BatchStreamError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.__dict__ == error.__dict__
    assert str(copy) == str(error)
    assert isinstance(copy, errors.BatchStreamError)


def test_request_errors_name_index_and_attempts() -> None:
    error = errors.APIError("Too many requests", status_code=429, index=12, attempts=6)
    assert str(error) == "request 12: HTTP 429: Too many requests (attempts: 6)"


def test_api_key_is_masked_in_config_repr() -> None:
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz"
    text = repr(ClientConfig(api_key=key, base_urls=("http://127.0.0.1:1/v1",)))
    assert key not in text
    assert mask_secret(key) in text
    assert mask_secret("short") == "***"
