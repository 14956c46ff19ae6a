"""The call itself: one `OpenAIRequest` in, the answer's text out.

OpenAI models go through one long-lived `AsyncOpenAI` client (aiohttp transport when
available, SDK retries off: ours are in `retry.py`); anything else goes through
`litellm.acompletion`, imported on first use so the OpenAI path never pays for it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from . import errors
from .config import ClientConfig
from .request import OpenAIRequest, openai_model_name

__all__ = ["Provider", "chat_messages", "chat_text", "responses_text", "responses_text_format"]

_LITELLM_EXTRA_HINT = "pip install batch-stream-openai[litellm]"


def responses_text_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """Convert a Chat Completions `response_format` to the Responses API `text.format`."""
    if response_format.get("type") != "json_schema":
        return dict(response_format)
    schema = response_format["json_schema"]
    converted: dict[str, Any] = {"type": "json_schema", "name": schema["name"]}
    converted["schema"] = schema["schema"]
    for optional in ("strict", "description"):
        if optional in schema:
            converted[optional] = schema[optional]
    return converted


def chat_messages(request: OpenAIRequest) -> list[ChatCompletionMessageParam]:
    """The Chat Completions `messages` list for a request."""
    return [
        {"role": "system", "content": request.system_prompt},
        {"role": "user", "content": request.user_prompt},
    ]


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


class Provider:
    """Turns requests into text for one worker; owns that worker's clients.

    Example::

        provider = Provider(ClientConfig(base_url="http://127.0.0.1:8000/v1"))
        text = await provider.complete(OpenAIRequest("Be brief.", "Hi", api="chat"))
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

    async def complete(self, request: OpenAIRequest) -> str:
        """Send one request (one attempt) and return the answer's text."""
        sdk_model = openai_model_name(request.model)
        if sdk_model is None:
            return await self._complete_litellm(request)
        if request.api == "chat":
            return await self._complete_chat(request, sdk_model)
        return await self._complete_responses(request, sdk_model)

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

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # The SDK's low-level `post` keeps its auth, headers, transport and error classes
        # but skips validating the params against its TypedDicts and building pydantic
        # models: that halves its CPU cost per request (1.10 -> 0.55 ms, scripts/bench.py).
        response = await self._openai_client().post(path, cast_to=httpx2.Response, body=body)
        data: dict[str, Any] = json.loads(response.content)
        return data

    async def _complete_chat(self, request: OpenAIRequest, model: str) -> str:
        body: dict[str, Any] = {"model": model, "messages": chat_messages(request)}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.reasoning_effort is not None:
            body["reasoning_effort"] = request.reasoning_effort
        return chat_text(await self._post("/chat/completions", body))

    async def _complete_responses(self, request: OpenAIRequest, model: str) -> str:
        body: dict[str, Any] = {
            "model": model,
            "instructions": request.system_prompt,
            "input": request.user_prompt,
        }
        if request.response_format is not None:
            body["text"] = {"format": responses_text_format(request.response_format)}
        if request.reasoning_effort is not None:
            body["reasoning"] = {"effort": request.reasoning_effort}
        return responses_text(await self._post("/responses", body))

    async def _complete_litellm(self, request: OpenAIRequest) -> str:
        litellm = self._litellm or self._import_litellm()
        options: dict[str, Any] = {}
        if request.response_format is not None:
            options["response_format"] = request.response_format
        if request.reasoning_effort is not None:
            options["reasoning_effort"] = request.reasoning_effort
        completion = await litellm.acompletion(
            model=request.model,
            messages=chat_messages(request),
            timeout=self._config.timeout,
            num_retries=0,
            max_retries=0,
            **options,
        )
        content = completion.choices[0].message.content
        if content is None:
            raise errors.EmptyResponseError("the model returned no text")
        return str(content)

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
