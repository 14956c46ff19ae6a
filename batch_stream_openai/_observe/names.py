"""The GenAI semantic conventions' names for what the parent sees (all bounded sets)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import APIError, BudgetExceededError
from ..request import EmbeddingRequest, RawRequest
from ..results import Result

__all__ = ["error_type", "operation_of", "outcome_of", "provider_of", "server_of"]

# LiteLLM's provider prefixes whose well-known ``gen_ai.provider.name`` differs.
_PROVIDERS = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
}
_DEFAULT_URL = "https://api.openai.com/v1"


def operation_of(request: object) -> str:
    """``gen_ai.operation.name``: ``embeddings``, or ``chat`` (Chat Completions and
    Responses).

    >>> vector = RawRequest("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})
    >>> operation_of(EmbeddingRequest("hi")), operation_of(vector)
    ('embeddings', 'embeddings')
    """
    embeds = isinstance(request, RawRequest) and request.url == "/v1/embeddings"
    return "embeddings" if embeds or isinstance(request, EmbeddingRequest) else "chat"


def provider_of(model: str, routed: bool) -> str:
    """``gen_ai.provider.name``: ``openai`` for what goes through the OpenAI wire format
    (OpenAI itself, or a vLLM or SGLang server), else LiteLLM's provider prefix.

    >>> provider_of("gpt-4o-mini", True), provider_of("gemini/gemini-2.0-flash", False)
    ('openai', 'gcp.gemini')
    """
    if routed or "/" not in model:
        return "openai"
    prefix = model.split("/", 1)[0]
    return _PROVIDERS.get(prefix, prefix)


def server_of(url: str) -> tuple[str, int]:
    """``server.address`` and ``server.port`` of an endpoint ("" is the default one)."""
    parts = urlsplit(url or _DEFAULT_URL)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def error_type(error: BaseException) -> str:
    """``error.type``: the HTTP status of an API error, else the exception's class name."""
    if isinstance(error, APIError) and error.status_code:
        return str(error.status_code)
    return type(error).__name__


def outcome_of(result: Result) -> str:
    """How a request ended, for the results counter: ``ok``, ``cached``,
    ``budget_refused`` or the error's class name."""
    if result.error is None:
        return "cached" if result.cached else "ok"
    if isinstance(result.error, BudgetExceededError):
        return "budget_refused"
    return type(result.error).__name__
