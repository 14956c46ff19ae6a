"""OpenAI's Batch API, through the openai SDK's own resources (a `BatchProvider`).

``files.create`` / ``files.content`` / ``files.delete`` and ``batches.create`` /
``retrieve`` / ``cancel`` / ``list``, on the pool's `base_url` and key. A job is named
by its key in the batch's metadata, so a run that died between creating a job and
writing its id down finds it again instead of creating (and paying for) it twice. The
SDK is imported on first use, so a pool that never uses the Batch API never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._wire.config import Secret
from ..errors import APIError, RequestError
from .lines import batch_line
from .provider import JobState, job_refusal, retrying, stainless_transient

if TYPE_CHECKING:
    from collections.abc import Callable

    import openai
    from openai.types import Batch

    from .journal import JobRecord

__all__ = ["METADATA_KEY", "OpenAIBatches"]

METADATA_KEY = "batch_stream_openai_job"
_T = TypeVar("_T")


class OpenAIBatches:
    """The Batch API of one OpenAI-compatible endpoint.

    Parameters:
        base_url: the endpoint (``.../v1``).
        api_key: its key (None: ``OPENAI_API_KEY``).
        timeout: seconds one call may take.
    """

    name = "openai"
    api = "the OpenAI Batch API"  # how its refusals name it
    uploads = True
    max_lines = 50_000
    max_bytes = 190 * 2**20  # the API takes files up to 200 MB; a margin for the framing

    def __init__(self, base_url: str, api_key: Secret | None, timeout: float = 600.0) -> None:
        self._base_url = base_url
        self.secret = api_key.reveal() if api_key is not None else None
        self._timeout = timeout
        self._sdk: openai.OpenAI | None = None
        self._retrying = retrying(stainless_transient("openai"))

    def __repr__(self) -> str:
        return f"<OpenAIBatches {self._base_url}>"

    def line(self, index: int, request: Any) -> tuple[str, str, bytes]:
        return batch_line(index, request)

    def upload(self, path: Path) -> str:
        def call(sdk: openai.OpenAI) -> str:
            with open(path, "rb") as file:
                return sdk.files.create(file=file, purpose="batch").id

        return self._call(call)

    def find(self, record: JobRecord, lines: int) -> str | None:
        for batch in self._call(lambda sdk: sdk.batches.list(limit=100).data):
            if (batch.metadata or {}).get(METADATA_KEY) == record.key:
                return batch.id
        return None

    def create(self, record: JobRecord, path: Path) -> str:
        return self._call(
            lambda sdk: (
                sdk.batches.create(
                    input_file_id=str(record.file_id),
                    endpoint=record.endpoint,  # type: ignore[arg-type]
                    completion_window="24h",
                    metadata={METADATA_KEY: record.key},
                ).id
            )
        )

    def state(self, batch_id: str) -> JobState:
        batch = self._call(lambda sdk: sdk.batches.retrieve(batch_id))
        counts = batch.request_counts
        return JobState(
            batch.status,
            answered=counts.completed + counts.failed if counts is not None else 0,
            total=counts.total if counts is not None else 0,
            created_at=float(batch.created_at),
            refused=any(error.code == "token_limit_exceeded" for error in _errors(batch)),
            failure=_failure(batch),
            results=(batch.output_file_id, batch.error_file_id),
        )

    def download(self, state: JobState, batch_id: str, folder: Path) -> None:
        for name, file_id in zip(("output", "errors"), state.results, strict=True):
            if file_id:
                (folder / f"{name}.jsonl").write_bytes(self._content(file_id))

    def clean_up(self, record: JobRecord, state: JobState) -> None:
        for file_id in (*state.results, record.file_id):
            if file_id:
                self._delete(file_id)

    def _content(self, file_id: str) -> bytes:
        return self._call(lambda sdk: sdk.files.content(file_id).content)

    def _delete(self, file_id: str) -> None:
        self._call(lambda sdk: sdk.files.delete(file_id))

    def cancel(self, batch_id: str) -> None:
        self._call(lambda sdk: sdk.batches.cancel(batch_id))

    def refusal(self, error: Exception) -> RequestError:
        import openai

        if not isinstance(error, openai.APIError):
            raise error
        return job_refusal(error, self.secret, self.api)

    def _call(self, call: Callable[[openai.OpenAI], _T]) -> _T:
        return self._retrying(call, self._client())

    def _client(self) -> openai.OpenAI:
        if self._sdk is None:
            import openai

            self._sdk = openai.OpenAI(
                api_key=self.secret, base_url=self._base_url, max_retries=0, timeout=self._timeout
            )
        return self._sdk


def _errors(batch: Batch) -> list[Any]:
    return list(batch.errors.data or []) if batch.errors is not None else []


def _failure(batch: Batch) -> APIError | None:
    """Why a failed job failed (for each of its lines), or None if it did not."""
    if batch.status != "failed":
        return None
    reasons = "; ".join(f"{e.code}: {e.message}" for e in _errors(batch)) or "unknown"
    return APIError(f"the batch job {batch.id} failed validation ({reasons})", status_code=400)
