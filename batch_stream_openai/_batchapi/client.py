"""The Batch API calls the job route makes, through the openai SDK's own resources.

``files.create`` / ``files.content`` / ``files.delete`` and ``batches.create`` /
``retrieve`` / ``cancel`` / ``list``, on the pool's `base_url` and key. The SDK's own
retries are off; a connection error, a timeout, a 429 or a 5xx is retried here
(tenacity, exponential backoff with jitter, for up to `_RETRY_FOR_S`), anything else is
raised as the SDK raised it. The SDK is imported on first use, so a pool that never
uses the Batch API never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from .._wire.config import Secret, mask_in
from ..errors import APIError, RequestError

if TYPE_CHECKING:
    from collections.abc import Callable

    import openai
    from openai.types import Batch

__all__ = ["METADATA_KEY", "BatchClient"]

# The metadata field naming our job: a run that died between creating a job and
# writing its id down finds it again by this, instead of creating (and paying) twice.
METADATA_KEY = "batch_stream_openai_job"
_RETRY_FOR_S = 600.0
_T = TypeVar("_T")


def _transient(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return True
    status = getattr(error, "status_code", 0)
    return isinstance(error, openai.APIStatusError) and (status == 429 or status >= 500)


class BatchClient:
    """The Batch API of one endpoint.

    Parameters:
        base_url: the OpenAI-compatible endpoint (``.../v1``).
        api_key: its key (None: ``OPENAI_API_KEY``).
        timeout: seconds one call may take.
    """

    def __init__(self, base_url: str, api_key: Secret | None, timeout: float = 600.0) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._sdk: openai.OpenAI | None = None
        self._retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_random_exponential(multiplier=0.5, max=30.0),
            stop=stop_after_delay(_RETRY_FOR_S),
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"<BatchClient {self._base_url}>"

    @property
    def base_url(self) -> str:
        return self._base_url

    def upload(self, path: Path) -> str:
        """Upload a job's input lines; the file's id."""

        def call(sdk: openai.OpenAI) -> str:
            with open(path, "rb") as file:
                return sdk.files.create(file=file, purpose="batch").id

        return self._call(call)

    def find(self, key: str) -> str | None:
        """The id of the job named `key` among the recent ones, or None."""
        for batch in self._call(lambda sdk: sdk.batches.list(limit=100).data):
            if (batch.metadata or {}).get(METADATA_KEY) == key:
                return batch.id
        return None

    def create(self, file_id: str, endpoint: str, key: str) -> str:
        """Start a job on an uploaded file; its id."""
        return self._call(
            lambda sdk: (
                sdk.batches.create(
                    input_file_id=file_id,
                    endpoint=endpoint,  # type: ignore[arg-type]
                    completion_window="24h",
                    metadata={METADATA_KEY: key},
                ).id
            )
        )

    def retrieve(self, batch_id: str) -> Batch:
        return self._call(lambda sdk: sdk.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> None:
        self._call(lambda sdk: sdk.batches.cancel(batch_id))

    def content(self, file_id: str) -> bytes:
        return self._call(lambda sdk: sdk.files.content(file_id).content)

    def delete(self, file_id: str) -> None:
        self._call(lambda sdk: sdk.files.delete(file_id))

    def masked(self, text: str) -> str:
        """`text` with the key masked (an error's message may quote it)."""
        masked: str = mask_in(text, self._api_key.reveal() if self._api_key else None)
        return masked

    def refusal(self, error: Exception) -> RequestError:
        """An SDK error of a call (after the retries) as the error of each line it
        concerns, the key masked; anything else (a bug) is raised again."""
        import openai

        from .._wire.failures import to_request_error

        if not isinstance(error, openai.APIError):
            raise error
        secret = self._api_key.reveal() if self._api_key else None
        converted = to_request_error(error, index=-1, attempts=1, secret=secret)
        converted.message = f"the Batch API refused the job: {converted.message}"
        return converted

    @staticmethod
    def refused(batch: Batch) -> bool:
        """A failed job that was refused for a limit, and may be created again later."""
        return any(error.code == "token_limit_exceeded" for error in _errors(batch))

    @staticmethod
    def failure(batch: Batch) -> APIError | None:
        """Why a failed job failed (for each of its lines), or None if it did not."""
        if batch.status != "failed":
            return None
        reasons = "; ".join(f"{e.code}: {e.message}" for e in _errors(batch)) or "unknown"
        return APIError(f"the batch job {batch.id} failed validation ({reasons})", status_code=400)

    def _call(self, call: Callable[[openai.OpenAI], _T]) -> _T:
        return self._retrying(call, self._client())

    def _client(self) -> openai.OpenAI:
        if self._sdk is None:
            import openai

            key = self._api_key.reveal() if self._api_key is not None else None
            self._sdk = openai.OpenAI(
                api_key=key, base_url=self._base_url, max_retries=0, timeout=self._timeout
            )
        return self._sdk


def _errors(batch: Batch) -> list[Any]:
    return list(batch.errors.data or []) if batch.errors is not None else []
