"""What a provider's batch API is to the job route: one small adapter per provider.

`Jobs` talks to every provider the same way: write a request as a line of a job's input
file (`BatchProvider.line`), upload it if the provider takes files, create the job, look
at its state (`JobState`, in the OpenAI Batch API's words), download its answers as
OpenAI Batch API output lines (so one reader reads them all), clean up, cancel. Which
provider a model's batch goes to is decided here, once (`provider_of`), and so is the
error of a model no batch route covers.

- `openai.py`: OpenAI's Batch API (files and ``/v1/batches``), through the openai SDK.
- `anthropic.py`: Anthropic's Message Batches, through the anthropic SDK.
- `gemini.py`: Gemini's batch mode (inline requests, or a file), through the google-genai SDK.
- `litellm.py`: the Batch APIs LiteLLM speaks (Azure OpenAI's, an OpenAI-compatible
  server's), through LiteLLM's batch functions.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from .._wire.bodies import http_call
from .._wire.config import Secret, mask_in
from ..errors import APIError, RequestError
from ..request import CHAT_ENDPOINT, openai_model_name

if TYPE_CHECKING:
    from .journal import JobRecord

__all__ = [
    "FINAL",
    "BatchProvider",
    "JobState",
    "Providers",
    "batch_route_error",
    "chat_line",
    "job_refusal",
    "missing_setup",
    "provider_of",
    "retrying",
    "stainless_transient",
]

# A job's states once it will change no more (OpenAI's words, which every adapter speaks).
FINAL = frozenset({"completed", "expired", "cancelled", "failed"})
_RETRY_FOR_S = 600.0


@dataclass(frozen=True)
class _Route:
    """What one provider's batch route is called and needs before anything is sent."""

    api: str  # how errors name it
    package: str  # the SDK it goes through (an import name)
    extra: str  # the extra that installs it
    settings: tuple[tuple[str, ...], ...] = ()  # environment variables, each: one of these
    keys: tuple[str, ...] = ()  # the variables its key may be in (LiteLLM's routes)
    endpoint: str | None = None  # the variable of its endpoint, passed on to LiteLLM


_AZURE_KEYS = ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_AD_TOKEN")


# Every batch route, by the prefix of its models (OpenAI's models have none): declared once.
# OpenAI's key is the pool's `api_key`, checked apart.
_ROUTES = {
    "openai": _Route("the OpenAI Batch API", "openai", ""),
    "anthropic": _Route(
        "Anthropic's Message Batches", "anthropic", "anthropic", (("ANTHROPIC_API_KEY",),)
    ),
    "gemini": _Route(
        "Gemini's batch mode", "google.genai", "gemini", (("GEMINI_API_KEY", "GOOGLE_API_KEY"),)
    ),
    "azure": _Route(  # LiteLLM reads Azure's endpoint itself (and AZURE_API_VERSION)
        "Azure OpenAI's Batch API (through LiteLLM)",
        "litellm",
        "litellm",
        (("AZURE_API_BASE",), _AZURE_KEYS),
        keys=_AZURE_KEYS,
    ),
    "hosted_vllm": _Route(  # LiteLLM's batch functions would read OpenAI's variables
        "your server's Batch API (through LiteLLM)",
        "litellm",
        "litellm",
        (("HOSTED_VLLM_API_BASE",),),
        keys=("HOSTED_VLLM_API_KEY",),
        endpoint="HOSTED_VLLM_API_BASE",
    ),
}
# The LiteLLM providers with a batch API that no route here takes yet, and why.
_NOT_YET = {
    "vertex_ai": "LiteLLM's Vertex AI jobs go through Cloud Storage; 'gemini/...' models "
    "have Gemini's batch mode",
    "bedrock": "LiteLLM cannot find a Bedrock job again after a crash (no listing, a random "
    "name), so a re-run could pay for it twice",
}


@dataclass(frozen=True)
class JobState:
    """A job as its provider reports it, in the OpenAI Batch API's words.

    Attributes:
        status: ``validating``, ``in_progress``, ``finalizing``, ``cancelling``, or once
            final ``completed``, ``expired``, ``cancelled``, ``failed``.
        answered: lines done (answered or failed), of `total`.
        created_at: when the provider created it (epoch seconds).
        refused: it failed for a limit and may be created again later.
        failure: why it failed (for each of its lines), or None.
        results: where its answers are, as the adapter needs to download them.
    """

    status: str
    answered: int = 0
    total: int = 0
    created_at: float = 0.0
    refused: bool = False
    failure: APIError | None = None
    results: tuple[str | None, ...] = ()

    @property
    def final(self) -> bool:
        return self.status in FINAL


class BatchProvider(Protocol):
    """One provider's batch API (see the module docstring). Every call that reaches the
    provider retries what is transient itself and raises the SDK's error otherwise."""

    name: str
    secret: str | None  # its key, masked wherever an error quotes it
    uploads: bool  # the input may be a file uploaded first (its id is the job's `file_id`)
    max_lines: int
    max_bytes: int

    def line(self, index: int, request: Any) -> tuple[str, str, bytes]:
        """`request` as a line of a job's input: ``(endpoint, model, line)``."""

    def upload(self, path: Path) -> str | None:
        """Upload a job's input file; its id (None: this input goes in the create call)."""

    def create(self, record: JobRecord, path: Path) -> str:
        """Create the job of `record` (input `path`, or its uploaded file); its id."""

    def find(self, record: JobRecord, lines: int) -> str | None:
        """The id of `record`'s job if an earlier run created it (and died before writing
        the id down), or None."""

    def state(self, batch_id: str) -> JobState:
        """The job's state now."""

    def download(self, state: JobState, batch_id: str, folder: Path) -> None:
        """Write a final job's answers into `folder` as ``output.jsonl`` (and
        ``errors.jsonl``), in OpenAI's output-line shape."""

    def clean_up(self, record: JobRecord, state: JobState) -> None:
        """Delete what the downloaded job left at the provider (files, the job)."""

    def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the job (its answered lines are still given)."""

    def refusal(self, error: Exception) -> RequestError:
        """An SDK error of a call (after the retries) as the error of each line it
        concerns, the key masked; anything else (a bug) is raised again."""


def chat_line(
    index: int, request: Any, api: str, shape: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[str, str, bytes]:
    """`request` as a line of a job at `api`, which takes chat requests only: `shape`
    makes the line of its chat body. ``(endpoint, model, line)``."""
    endpoint, body = http_call(request)
    if endpoint != CHAT_ENDPOINT:
        raise ValueError(
            f"{api} takes chat requests here; this one is for {endpoint} (use api='chat', "
            "or mode='online')"
        )
    try:
        line = shape(body)
    except (TypeError, AttributeError, KeyError, IndexError) as error:  # a malformed body
        raise ValueError(f"{api} cannot take this request's body: {error!r}") from None
    return endpoint, str(body["model"]), json.dumps(line).encode() + b"\n"


def provider_of(model: str) -> str | None:
    """The provider whose batch API takes `model` (None: no batch route does).

    >>> provider_of("gpt-4o-mini"), provider_of("anthropic/claude-haiku-4-5")
    ('openai', 'anthropic')
    """
    if openai_model_name(model) is not None:
        return "openai"
    prefix, _, name = model.partition("/")
    return prefix if name and prefix in _ROUTES else None


def missing_setup(index: int, model: str) -> str | None:
    """Why request `index` cannot reach its provider's batch API for want of its SDK or of
    a setting (the SDKs read their keys and endpoints from the environment), or None."""
    route = _ROUTES.get(provider_of(model) or "")
    if route is None:
        return None
    where = f"requests[{index}] (model {model!r}) goes to {route.api}, which needs"
    if route.extra and not _installed(route.package):
        return f"{where} {route.package}: pip install batch-stream-openai[{route.extra}]"
    unset = [names for names in route.settings if not any(os.environ.get(n) for n in names)]
    if not unset:
        return None
    named = [names[0] + (f" (or {', '.join(names[1:])})" if names[1:] else "") for names in unset]
    return f"{where}: set {' and '.join(named)}"


@functools.cache
def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def batch_route_error(index: int, model: str) -> str | None:
    """Why request `index` (of `model`) cannot go in a batch job, or None if it can."""
    if provider_of(model) is not None:
        return None
    provider = model.split("/", 1)[0] if "/" in model else "LiteLLM"
    prefixes = ", ".join(f"'{name}/...'" for name in _ROUTES if name != "openai")
    why = f" ({_NOT_YET[provider]})" if provider in _NOT_YET else ""
    return (
        f"requests[{index}]: model {model!r} ({provider}) has no batch route{why}: "
        f"mode='batch' takes OpenAI models and {prefixes} ones; send it with mode='online' "
        "(or mode='flex' for OpenAI models)"
    )


class Providers:
    """The route's adapters, each made when a job first needs it (its SDK imported then).

    Parameters:
        base_url: OpenAI's endpoint (the pool's); other providers read their own from
            the environment, as their SDKs do (``ANTHROPIC_BASE_URL``).
        api_key: OpenAI's key (None: ``OPENAI_API_KEY``).
    """

    def __init__(self, base_url: str, api_key: Secret | None) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._made: dict[str, BatchProvider] = {}

    def __repr__(self) -> str:
        return f"<Providers {sorted(self._made)}>"

    def of(self, model: str) -> BatchProvider:
        """The adapter of `model`'s provider (checked before: it has one)."""
        name = provider_of(model)
        if name not in self._made:
            self._made[str(name)] = self._make(str(name))
        return self._made[str(name)]

    def _make(self, name: str) -> BatchProvider:
        route = _ROUTES[name]
        if route.package == "litellm":
            from .litellm import LiteLLMBatches

            key = next((os.environ[v] for v in route.keys if os.environ.get(v)), None)
            endpoint = os.environ.get(route.endpoint) if route.endpoint else None
            return LiteLLMBatches(name, route.api, key, endpoint)
        if name == "anthropic":
            from .anthropic import AnthropicBatches

            return AnthropicBatches()
        if name == "gemini":
            from .gemini import GeminiBatches

            return GeminiBatches()
        from .openai import OpenAIBatches

        return OpenAIBatches(self.base_url, self._api_key)

    def masked(self, text: str) -> str:
        """`text` with every key the route uses masked (an error may quote one)."""
        keys = [self._api_key.reveal() if self._api_key else None]
        for key in keys + [made.secret for made in self._made.values()]:
            text = mask_in(text, key)
        return text


def job_refusal(error: Exception, secret: str | None, api: str) -> RequestError:
    """An SDK's error of a job's call to `api`, after the retries, as each of its lines'
    error."""
    from .._wire.failures import to_request_error

    converted = to_request_error(error, index=-1, attempts=1, secret=secret)
    converted.message = f"{api} refused the job: {converted.message}"
    return converted


def retrying(transient: Callable[[BaseException], bool]) -> Retrying:
    """How an adapter's calls are retried: what is `transient` (a lost connection, a
    timeout, a 429, a 5xx), with exponential backoff and jitter, for up to 10 minutes;
    anything else is raised as the SDK raised it (the SDKs' own retries are off)."""
    return Retrying(
        retry=retry_if_exception(transient),
        wait=wait_random_exponential(multiplier=0.5, max=30.0),
        stop=stop_after_delay(_RETRY_FOR_S),
        reraise=True,
    )


def stainless_transient(package: str) -> Callable[[BaseException], bool]:
    """What is transient for the openai and anthropic SDKs (they name their errors alike;
    LiteLLM's are the openai SDK's, its own `APIError` with a status but no response): a
    lost connection or a timeout, a 429, a 5xx."""

    def transient(error: BaseException) -> bool:
        sdk = importlib.import_module(package)
        if isinstance(error, sdk.APIConnectionError):  # timeouts included
            return True
        status = getattr(error, "status_code", 0) or 0
        return isinstance(error, sdk.APIError) and (status == 429 or status >= 500)

    return transient
