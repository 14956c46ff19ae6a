"""Fire many OpenAI / LiteLLM requests from a pool of worker processes; stream each result.

Example:

>>> from batch_stream_openai import OpenAIRequest, stream_batch
>>> requests = [OpenAIRequest("Be brief.", f"What is {i} + {i}?") for i in range(3)]
>>> for index, result in stream_batch(requests, max_concurrency=50):
...     print(index, result)  # doctest: +SKIP
>>> sorted(index for index, result in stream_batch(requests, max_concurrency=50))
[0, 1, 2]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BatchFileError,
    BatchStreamError,
    BudgetExceededError,
    CacheError,
    DeadlineExceededError,
    EmptyResponseError,
    ParseError,
    PoolClosedError,
    PoolError,
    PostprocessError,
    ProviderNotInstalledError,
    RefusalError,
    RequestError,
    ResultTransferError,
    WorkerCrashedError,
    WorkerStartupError,
)
from .request import EmbeddingRequest, OpenAIRequest, RawRequest
from .results import BatchSummary, EndpointSummary, Result, ToolCall, Usage

if TYPE_CHECKING:
    from .api import arun_batch, astream_batch, run_batch, stream_batch
    from .pool import BatchPool
    from .stream import AsyncBatchStream, BatchStream

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncBatchStream",
    "BatchFileError",
    "BatchPool",
    "BatchStream",
    "BatchStreamError",
    "BatchSummary",
    "BudgetExceededError",
    "CacheError",
    "DeadlineExceededError",
    "EmbeddingRequest",
    "EmptyResponseError",
    "EndpointSummary",
    "OpenAIRequest",
    "ParseError",
    "PoolClosedError",
    "PoolError",
    "PostprocessError",
    "ProviderNotInstalledError",
    "RawRequest",
    "RefusalError",
    "RequestError",
    "Result",
    "ResultTransferError",
    "ToolCall",
    "Usage",
    "WorkerCrashedError",
    "WorkerStartupError",
    "arun_batch",
    "astream_batch",
    "run_batch",
    "stream_batch",
]

# Loaded on first use: a worker process imports this package too (for its own modules),
# and needs none of the pool, the batch loop or the Batch API route.
_LAZY = {
    "stream_batch": ".api",
    "run_batch": ".api",
    "astream_batch": ".api",
    "arun_batch": ".api",
    "BatchPool": ".pool",
    "BatchStream": ".stream",
    "AsyncBatchStream": ".stream",
}


# Names that start a pool: on first use the fork server starts, and the price table
# loads, in the background, so that both overlap the caller's own imports and work.
_STARTS_POOLS = {"stream_batch", "run_batch", "astream_batch", "arun_batch", "BatchPool"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _STARTS_POOLS:
        from ._backends.process import start_fork_server
        from ._spending.prices import warm_up

        start_fork_server()
        warm_up()
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
