"""The call itself (worker side): one request in, one `Result` out, or an exception.

OpenAI models go through one long-lived `AsyncOpenAI` client (aiohttp transport when
available, SDK retries off: the parent schedules ours); anything else goes through
`litellm.acompletion`, imported on first use so the OpenAI path never pays for it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx2
import openai

from . import errors
from .config import ClientConfig, mask_secret
from .request import CHAT_ENDPOINT, AnyRequest, RawRequest, http_call, openai_model_name, wants_json
from .results import Result, usage_of

__all__ = ["Provider", "RateLimitHeaders", "answer_text", "chat_text", "responses_text"]

_LITELLM_EXTRA_HINT = "pip install batch-stream-openai[litellm]"
# How much of an unexpected answer body an error message quotes.
_QUOTED_BYTES = 200


def chat_text(completion: dict[str, Any]) -> str:
    """``choices[0].message.content`` of a Chat Completions answer."""
    choices = completion.get("choices") or []
    message = choices[0].get("message") or {} if choices else {}
    content = message.get("content")
    if isinstance(content, str):
        return content
    if message.get("refusal"):
        raise errors.EmptyResponseError(f"the model refused: {message['refusal']}")
    reason = choices[0].get("finish_reason") if choices else "no choices"
    raise errors.EmptyResponseError(f"the model returned no text (finish_reason: {reason})")


def responses_text(response: dict[str, Any]) -> str:
    """The SDK's ``Response.output_text``; an answer without any text is an error.

    A refusal, an ``incomplete`` or failed response, or one with no ``output_text`` part
    raises `EmptyResponseError` saying which (with the refusal's text).
    """
    if response.get("error"):
        raise errors.EmptyResponseError(f"the response failed: {response['error']}")
    texts, refusals = [], []
    for item in response.get("output") or []:
        if item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if part.get("type") == "output_text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "refusal":
                refusals.append(part.get("refusal", ""))
    text = "".join(texts)
    if text:
        return text
    if refusals:
        raise errors.EmptyResponseError(f"the model refused: {' '.join(refusals)}")
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        raise errors.EmptyResponseError(f"the response is incomplete (reason: {reason})")
    kinds = sorted({str(item.get("type")) for item in response.get("output") or []})
    raise errors.EmptyResponseError(
        f"the response has no output_text (output items: {', '.join(kinds) or 'none'})"
    )


def answer_text(request: AnyRequest, endpoint: str, body: dict[str, Any]) -> str:
    """The text of an answer; a raw request's answer without text (a tool call) gives ""."""
    try:
        return chat_text(body) if endpoint == CHAT_ENDPOINT else responses_text(body)
    except errors.EmptyResponseError:
        if isinstance(request, RawRequest):
            return ""  # its caller reads the whole body, which is what was asked for
        raise


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_s(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"0.5s"``; else None."""
    if not value:
        return None
    parts = _DURATION_PART.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.strip():
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` headers of one answer (None where absent or unreadable)."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Read the headers; None when the answer carries none."""
        remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
        remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        if remaining_requests is None and remaining_tokens is None:
            return None
        return cls(
            remaining_requests,
            remaining_tokens,
            _duration_s(headers.get("x-ratelimit-reset-requests")),
            _duration_s(headers.get("x-ratelimit-reset-tokens")),
        )

    def pause_s(self) -> float:
        """How long to hold new requests back: until the exhausted budget resets."""
        pause = 0.0
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            pause = max(pause, self.reset_requests_s or 1.0)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            pause = max(pause, self.reset_tokens_s or 1.0)
        return pause


class Provider:
    """Sends requests for one worker and owns that worker's clients.

    Example::

        provider = Provider(ClientConfig(base_url="http://127.0.0.1:8000/v1"))
        result, pause_s = await provider.complete(0, OpenAIRequest("Be brief.", "Hi", api="chat"))
        await provider.aclose()
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self.secret = config.resolved_api_key
        self._secret_bytes = self.secret.encode() if self.secret else b""
        self._client: openai.AsyncOpenAI | None = None
        self._litellm: Any = None

    def open(self) -> None:
        """Build the OpenAI client now when a key is known, so a bad setup fails early."""
        if self.secret:
            self._openai_client()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()

    async def complete(self, index: int, request: AnyRequest) -> tuple[Result, float]:
        """Send one request (one attempt): its `Result`, and the pause its headers ask."""
        endpoint, body = http_call(request)
        sdk_model = openai_model_name(body["model"])
        if sdk_model is None:
            return await self._complete_litellm(index, request, endpoint, body), 0.0
        if sdk_model != body["model"]:
            body = {**body, "model": sdk_model}
        # The SDK's low-level `post` keeps its auth, headers, transport and error classes
        # but skips validating the params against its TypedDicts and building pydantic
        # models: that halves its CPU cost per request (1.10 -> 0.55 ms, see BENCHMARKS.md).
        response = await self._openai_client().post(
            endpoint.removeprefix("/v1"), cast_to=httpx2.Response, body=body
        )
        data = self._json_object(response)
        limits = RateLimitHeaders.parse(response.headers)
        result = _result(index, request, endpoint, body, data, response.headers.get("x-request-id"))
        return result, limits.pause_s() if limits is not None else 0.0

    def _json_object(self, response: httpx2.Response) -> dict[str, Any]:
        """The answer's JSON object, the key masked; anything else is a clear error."""
        content = response.content
        if self._secret_bytes and self._secret_bytes in content:
            content = content.replace(self._secret_bytes, mask_secret(self.secret or "").encode())
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
        kind = response.headers.get("content-type", "no content type")
        start = content[:_QUOTED_BYTES].decode("utf-8", "replace")
        raise errors.RequestError(
            f"the server answered HTTP {response.status_code} ({kind}) with "
            f"{'an empty body' if not content else 'something that is not a JSON object'}: "
            f"{start!r}"
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
                api_key=self.secret,
                base_url=self._config.base_url,
                timeout=self._config.timeout,
                max_retries=0,
                http_client=http_client,
            )
        return self._client

    async def _complete_litellm(
        self, index: int, request: AnyRequest, endpoint: str, body: dict[str, Any]
    ) -> Result:
        if endpoint != CHAT_ENDPOINT:
            raise errors.RequestError(
                f"model {body['model']!r} routes through LiteLLM, which takes "
                f"{CHAT_ENDPOINT} requests only (use api='chat')"
            )
        litellm = self._litellm or self._import_litellm(body["model"])
        completion = await litellm.acompletion(
            **body, timeout=self._config.timeout, num_retries=0, max_retries=0
        )
        return _result(index, request, endpoint, body, completion.model_dump(), None)

    def _import_litellm(self, model: str) -> Any:
        # Without this, importing litellm tries to download a model cost map.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise errors.ProviderNotInstalledError(
                f"model {model!r} is not an OpenAI model name, so it routes through LiteLLM, "
                f"which is not installed: {_LITELLM_EXTRA_HINT}"
            ) from None
        litellm.suppress_debug_info = True
        self._litellm = litellm
        return litellm


def _result(
    index: int,
    request: AnyRequest,
    endpoint: str,
    body: dict[str, Any],
    data: dict[str, Any],
    request_id: str | None,
) -> Result:
    """The `Result` of an answer; one without text keeps everything but the text."""
    answer = Result(
        index,
        usage=usage_of(data),
        model=data.get("model"),
        response_id=data.get("id"),
        request_id=request_id,
        status_code=200,
        body=data,
    )
    try:
        text = answer_text(request, endpoint, data)
    except errors.EmptyResponseError as error:
        error.index = index
        return replace(answer, error=error)
    parsed = None
    if wants_json(endpoint, body):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return replace(answer, text=text, parsed=parsed, output=text)
