"""The call itself (worker side): one request body in, its answer out, or an exception.

OpenAI models are posted with one long-lived aiohttp session per worker, with the
headers, endpoint and proxy the `openai` SDK itself would use (key, organization,
project, user agent, ``OPENAI_BASE_URL``, ``HTTPS_PROXY``/``NO_PROXY``), worked out once
(`sdk_headers.py`, without importing the SDK once they are known): building them per
request was most of the SDK's CPU cost (see BENCHMARKS.md), and the answers are read as
JSON anyway. SDK retries are not involved; the parent schedules
ours. Anything else goes through `litellm.acompletion`, imported on first use so the
OpenAI path never pays for it.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import errors
from .._wire.config import ClientConfig, mask_secret, maskable
from .._wire.litellm import import_litellm
from .._wire.statuses import parse_retry_after, retryable_status
from ..request import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, explain_route, openai_model_name
from .sdk_headers import sdk_base_url, sdk_headers

__all__ = ["Answer", "Provider", "RateLimitHeaders"]

# One answer as it came: its JSON, its x-request-id, the pause its headers ask.
Answer = tuple[dict[str, Any], str | None, float]

# How much of an unexpected answer body an error message quotes.
_QUOTED_BYTES = 200

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
    """Sends requests for one worker and owns that worker's connections.

    Example:

    >>> import asyncio
    >>> async def ask_once():
    ...     provider = Provider(ClientConfig(base_urls=(server.base_url,)))
    ...     provider.open()  # the endpoint and headers, from the SDK
    ...     body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    ...     try:
    ...         data, request_id, pause_s = await provider.complete("/v1/chat/completions", body, 0)
    ...     finally:
    ...         await provider.aclose()
    ...     return data["choices"][0]["message"]["content"]
    >>> asyncio.run(ask_once())
    'echo: Hi [...]'
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self.secret = config.resolved_api_key
        # Masked in answers and errors where it shows up (a proxy echoing the header); a
        # placeholder such as "EMPTY" is no secret, and masking it would rewrite answers.
        secret = self.secret if maskable(self.secret) else None
        self._secret_bytes = secret.encode() if secret is not None else b""
        # The endpoints as the SDK spells them, with a trailing slash (".../v1/"), and
        # the proxy of each.
        self._base_urls: list[str] = []
        self._proxies: list[str | None] = []
        self._headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._litellm: Any = None

    def open(self) -> None:
        """Take the endpoint and headers the SDK would use now, so a bad setup fails early
        (`sdk_headers.py`: without importing the SDK once they are known)."""
        if not self.secret:
            return  # no key: OpenAI-routed requests fail one by one, saying so
        for base_url in self._config.base_urls or (None,):
            self._base_urls.append(sdk_base_url(base_url))
            self._proxies.append(_proxy_for(self._base_urls[-1]))
        self._headers = sdk_headers(self.secret)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()

    async def complete(self, endpoint: str, body: dict[str, Any], target: int) -> Answer:
        """Send one request body (one attempt) to base URL number `target` and return
        its `Answer`; raise on failure. LiteLLM's models go where LiteLLM says."""
        sdk_model = openai_model_name(body["model"])
        if sdk_model is None:
            return await self._complete_litellm(endpoint, body), None, 0.0
        if sdk_model != body["model"]:
            body = {**body, "model": sdk_model}
        status, content, headers = await self._post(endpoint, body, target)
        if status >= 400:
            raise self._status_error(status, content, headers)
        limits = RateLimitHeaders.parse(headers)
        pause_s = limits.pause_s() if limits is not None else 0.0
        return self._json_object(status, content, headers), headers.get("x-request-id"), pause_s

    async def _post(
        self, endpoint: str, body: dict[str, Any], target: int
    ) -> tuple[int, bytes, Mapping[str, str]]:
        if not self._headers:
            raise errors.RequestError(
                "no API key in this worker: pass api_key= or set OPENAI_API_KEY"
            )
        url = self._base_urls[target] + endpoint.removeprefix("/v1/")
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        session = self._http()
        async with session.post(
            url, data=data, headers=self._headers, proxy=self._proxies[target]
        ) as response:
            return response.status, await response.read(), response.headers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._config.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # The attempt as a whole is bounded by the engine; this is a backstop.
                timeout=aiohttp.ClientTimeout(total=self._config.timeout + 1),
            )
        return self._session

    def _masked(self, content: bytes) -> bytes:
        if self._secret_bytes and self._secret_bytes in content:
            return content.replace(self._secret_bytes, mask_secret(self.secret or "").encode())
        return content

    def _json_object(self, status: int, content: bytes, headers: Mapping[str, str]) -> Any:
        """The answer's JSON object, the key masked; anything else is a clear error."""
        content = self._masked(content)
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
        kind = headers.get("content-type", "no content type")
        start = content[:_QUOTED_BYTES].decode("utf-8", "replace")
        raise errors.RequestError(
            f"the server answered HTTP {status} ({kind}) with "
            f"{'an empty body' if not content else 'something that is not a JSON object'}: "
            f"{start!r}"
        )

    def _status_error(
        self, status: int, content: bytes, headers: Mapping[str, str]
    ) -> errors.APIError:
        """An error answer as the caller gets it (the SDK's message format, key masked)."""
        content = self._masked(content)
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = error.get("message") or json.dumps(error)
            code = error.get("code")
        else:
            message = content[:_QUOTED_BYTES].decode("utf-8", "replace").strip()
            code = None
        code = str(code) if code is not None else None
        return errors.APIError(
            f"Error code: {status} - {message}",
            status_code=status,
            code=code,
            body=body if isinstance(body, dict) else None,
            request_id=headers.get("x-request-id"),
            retry_after_s=parse_retry_after(headers),
            retryable=retryable_status(status, code, headers.get("x-should-retry")),
        )

    async def _complete_litellm(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if endpoint not in (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT):
            raise errors.RequestError(
                f"{explain_route(body['model'])}, which takes {CHAT_ENDPOINT} and "
                f"{EMBEDDINGS_ENDPOINT} requests only (use api='chat')"
            )
        litellm = self._litellm or self._import_litellm(body["model"])
        call = litellm.acompletion if endpoint == CHAT_ENDPOINT else litellm.aembedding
        try:
            completion = await call(
                **body, timeout=self._config.timeout, num_retries=0, max_retries=0
            )
        except errors.RequestError:
            raise
        except Exception as exc:
            exc.add_note(explain_route(body["model"]))
            raise
        data: dict[str, Any] = completion.model_dump()
        return data

    def _import_litellm(self, model: str) -> Any:
        self._litellm = import_litellm(explain_route(model))
        return self._litellm


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (``HTTPS_PROXY``, ``NO_PROXY``...), once."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(urllib.parse.urlsplit(url).scheme) or proxies.get("all")
