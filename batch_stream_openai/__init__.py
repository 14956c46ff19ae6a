"""Fire many OpenAI / LiteLLM requests from a pool of worker processes; stream each result.

Example:

>>> from batch_stream_openai import OpenAIRequest, stream_batch
>>> requests = [OpenAIRequest("Be brief.", f"What is {i} + {i}?") for i in range(3)]
>>> for index, result in stream_batch(requests, max_concurrency=50):
...     print(index, result)  # doctest: +SKIP
>>> sorted(index for index, result in stream_batch(requests, max_concurrency=50))
[0, 1, 2]
"""

from .api import arun_batch, astream_batch, run_batch, stream_batch
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
from .pool import BatchPool
from .request import EmbeddingRequest, OpenAIRequest, RawRequest
from .results import BatchSummary, EndpointSummary, Result, ToolCall, Usage
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
