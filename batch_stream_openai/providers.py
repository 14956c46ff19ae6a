"""The call itself: one request in, one answer (text, body, headers) out.

OpenAI models go through one long-lived `AsyncOpenAI` client (aiohttp transport when
available, SDK retries off: ours are in `retry.py`); anything else goes through
`litellm.acompletion`, imported on first use so the OpenAI path never pays for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from . import errors
from .config import ClientConfig
from .request import (
    CHAT_ENDPOINT,
    AnyRequest,
    RawRequest,
    http_call,
    openai_model_name,
    wants_json,
)
from .results import RateLimitHeaders

__all__ = ["Answer", "Provider", "answer_text", "chat_text", "responses_text"]

_LITELLM_EXTRA_HINT = "pip install batch-stream-openai[litellm]"


@dataclass(frozen=True, slots=True)
class Answer:
    """One successful answer: its text and what came with it."""

    text: str
    body: dict[str, Any]
    request_id: str | None = None
    rate_limits: RateLimitHeaders | None = None
    json_requested: bool = False  # the body asked for structured (JSON) output


def chat_text(completion: dict[str, Any]) -> str:
    """``choices[0].message.content`` of a Chat Completions answer."""
    choices = completion.get("choices") or []
    content = choices[0].get("message", {}).get("content") if choices else None
    if not isinstance(content, str):
        reason = choices[0].get("finish_reason") if choices else "no choices"
        raise errors.EmptyResponseError(f"the model returned no text (finish_reason: {reason})")
    return content


def responses_text(response: dict[str, Any]) -> str:
    """The SDK's ``Response.output_text``: every ``output_text`` part of every message."""
    if response.get("error"):
        raise errors.EmptyResponseError(f"the response failed: {response['error']}")
    return "".join(
        part.get("text", "")
        for item in response.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def answer_text(request: AnyRequest, endpoint: str, body: dict[str, Any]) -> str:
    """The text of an answer; a raw request's answer without text (a tool call) gives ""."""
    try:
        return chat_text(body) if endpoint == CHAT_ENDPOINT else responses_text(body)
    except errors.EmptyResponseError:
        if isinstance(request, RawRequest):
            return ""  # its caller reads the whole body, which is what was asked for
        raise


class Provider:
    """Sends requests for one worker and owns that worker's clients.

    Example::

        provider = Provider(ClientConfig(base_url="http://127.0.0.1:8000/v1"))
        answer = await provider.complete(OpenAIRequest("Be brief.", "Hi", api="chat"))
        await provider.aclose()
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._client: openai.AsyncOpenAI | None = None
        self._litellm: Any = None

    def open(self) -> None:
        """Build the OpenAI client now when a key is known, so a bad setup fails early."""
        if self._config.resolved_api_key:
            self._openai_client()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()

    async def complete(self, request: AnyRequest) -> Answer:
        """Send one request (one attempt) and return the answer."""
        endpoint, body = http_call(request)
        sdk_model = openai_model_name(body["model"])
        if sdk_model is None:
            return await self._complete_litellm(request, endpoint, body)
        if sdk_model != body["model"]:
            body = {**body, "model": sdk_model}
        # The SDK's low-level `post` keeps its auth, headers, transport and error classes
        # but skips validating the params against its TypedDicts and building pydantic
        # models: that halves its CPU cost per request (1.10 -> 0.55 ms, see BENCHMARKS.md).
        response = await self._openai_client().post(
            endpoint.removeprefix("/v1"), cast_to=httpx2.Response, body=body
        )
        data: dict[str, Any] = json.loads(response.content)
        headers = response.headers
        return Answer(
            answer_text(request, endpoint, data),
            data,
            headers.get("x-request-id"),
            RateLimitHeaders.parse(headers),
            wants_json(endpoint, body),
        )

    def _openai_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            limits = httpx2.Limits(
                max_connections=self._config.max_connections,
                max_keepalive_connections=self._config.max_connections,
            )
            try:
                http_client = openai.DefaultAioHttpClient(limits=limits)
            except RuntimeError:  # the aiohttp extra is missing: the SDK's default transport
                http_client = openai.DefaultAsyncHttpxClient(limits=limits)
            self._client = openai.AsyncOpenAI(
                api_key=self._config.resolved_api_key,
                base_url=self._config.base_url,
                timeout=self._config.timeout,
                max_retries=0,
                http_client=http_client,
            )
        return self._client

    async def _complete_litellm(
        self, request: AnyRequest, endpoint: str, body: dict[str, Any]
    ) -> Answer:
        if endpoint != CHAT_ENDPOINT:
            raise errors.RequestError(
                f"model {body['model']!r} routes through LiteLLM, which takes "
                f"{CHAT_ENDPOINT} requests only (use api='chat')"
            )
        litellm = self._litellm or self._import_litellm()
        completion = await litellm.acompletion(
            **body, timeout=self._config.timeout, num_retries=0, max_retries=0
        )
        data: dict[str, Any] = completion.model_dump()
        return Answer(
            answer_text(request, endpoint, data), data, json_requested=wants_json(endpoint, body)
        )

    def _import_litellm(self) -> Any:
        # Without this, importing litellm tries to download a model cost map.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise errors.ProviderNotInstalledError(
                "this model is not an OpenAI model and routes through LiteLLM, which is "
                f"not installed: {_LITELLM_EXTRA_HINT}"
            ) from None
        litellm.suppress_debug_info = True
        self._litellm = litellm
        return litellm
