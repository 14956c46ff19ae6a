"""The public surface is exactly what `__all__` says, and it is importable."""

import pytest

import batch_stream_openai


@pytest.mark.fast
def test_public_names_are_pinned() -> None:
    assert sorted(batch_stream_openai.__all__) == sorted(
        [
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
            "EndpointSummary",
            "EmptyResponseError",
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
    )
    for name in batch_stream_openai.__all__:
        assert getattr(batch_stream_openai, name) is not None


def test_importing_the_package_does_not_import_openai() -> None:
    """The parent never needs the SDK: importing it would add ~0.6 s to every start."""
    import subprocess
    import sys

    code = "import sys, batch_stream_openai; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
