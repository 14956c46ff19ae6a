"""The Batch APIs LiteLLM speaks: Azure OpenAI's, and an OpenAI-compatible server's (a
`BatchProvider` for ``azure/...`` and ``hosted_vllm/...`` models).

Both take OpenAI's input lines and give OpenAI's job states and output lines, so this is
`OpenAIBatches` with LiteLLM's batch functions (``create_file``, ``create_batch``,
``retrieve_batch``, ``list_batches``, ``file_content``, ``file_delete``,
``cancel_batch``) in place of the openai SDK's resources: the same journal, lookup by
metadata after a crash, and clean-up. A line names the model without its prefix (an
Azure deployment); Azure's endpoints have no ``/v1``. Endpoints and keys are the ones
LiteLLM's online calls read (declared in `provider.py`): ``AZURE_API_BASE``,
``AZURE_API_KEY`` (``AZURE_API_VERSION``) as LiteLLM reads them; ``HOSTED_VLLM_API_BASE``
and ``HOSTED_VLLM_API_KEY``, passed on (LiteLLM's batch functions would read OpenAI's).
LiteLLM is imported in the parent's job thread when the first such job is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .._wire.litellm import import_litellm
from .lines import batch_line
from .openai import OpenAIBatches

if TYPE_CHECKING:
    import openai

__all__ = ["LiteLLMBatches"]


class LiteLLMBatches(OpenAIBatches):
    """The Batch API of LiteLLM's `provider` (``"azure"`` or ``"hosted_vllm"``).

    Parameters:
        provider: LiteLLM's name for it (the models' prefix).
        api: how its refusals name it.
        key: its key, masked wherever an error quotes it.
        endpoint: its endpoint, passed on with the key (None: LiteLLM reads its own).
        timeout: seconds one call may take.
    """

    def __init__(
        self,
        provider: str,
        api: str,
        key: str | None,
        endpoint: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(endpoint or "", None, timeout)
        self.name, self.api, self.secret = provider, api, key
        self._params: dict[str, Any] = {"custom_llm_provider": provider, "max_retries": 0}
        self._params["timeout"] = timeout
        if endpoint:
            self._params.update(api_base=endpoint, api_key=key)

    def __repr__(self) -> str:
        return f"<LiteLLMBatches {self.name}>"

    def line(self, index: int, request: Any) -> tuple[str, str, bytes]:
        return batch_line(index, request, prefix=f"{self.name}/", versioned=self.name != "azure")

    def _client(self) -> openai.OpenAI:
        if self._sdk is None:
            litellm = import_litellm(f"mode='batch' for {self.name}/ models goes through LiteLLM")
            # It is called as the SDK's client is; `OpenAIBatches` calls nothing else.
            self._sdk = cast("openai.OpenAI", _Client(litellm, self._params))
        return self._sdk


class _Client:
    """LiteLLM's batch functions under the openai SDK client's names."""

    def __init__(self, litellm: Any, params: dict[str, Any]) -> None:
        self.files = _Files(litellm, params)
        self.batches = _Batches(litellm, params)


class _Files:
    def __init__(self, litellm: Any, params: dict[str, Any]) -> None:
        self._litellm = litellm
        self._params = params

    def create(self, *, file: BinaryIO, purpose: str) -> Any:
        return self._litellm.create_file(file=file, purpose=purpose, **self._params)

    def content(self, file_id: str) -> Any:
        return self._litellm.file_content(file_id, **self._params)

    def delete(self, file_id: str) -> Any:
        return self._litellm.file_delete(file_id, **self._params)


class _Batches:
    def __init__(self, litellm: Any, params: dict[str, Any]) -> None:
        self._litellm = litellm
        self._params = params

    def create(self, **fields: Any) -> Any:
        return self._litellm.create_batch(**fields, **self._params)

    def retrieve(self, batch_id: str) -> Any:
        return self._litellm.retrieve_batch(batch_id, **self._params)

    def cancel(self, batch_id: str) -> Any:
        return self._litellm.cancel_batch(batch_id, **self._params)

    def list(self, *, limit: int) -> Any:
        return self._litellm.list_batches(limit=limit, **self._params)
