"""What to send, validated when it is built: `OpenAIRequest` (prompts, images, tools,
structured output), `EmbeddingRequest` (texts to embed) and `RawRequest` (a body as given).

Each becomes one HTTP call, ``(endpoint, body)``, through `bodies.http_call`; the routing
rule (`openai_model_name`) says whether the OpenAI SDK or LiteLLM sends it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._images import image_urls
from ._pickling import pickles_fast

__all__ = [
    "API_NAMES",
    "CHAT_ENDPOINT",
    "EMBEDDINGS_ENDPOINT",
    "ENDPOINTS",
    "REASONING_EFFORTS",
    "RESPONSES_ENDPOINT",
    "AnyRequest",
    "EmbeddingRequest",
    "OpenAIRequest",
    "RawRequest",
    "explain_route",
    "is_model_class",
    "openai_model_name",
]

API_NAMES = ("responses", "chat")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
CHAT_ENDPOINT = "/v1/chat/completions"
RESPONSES_ENDPOINT = "/v1/responses"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
ENDPOINTS = (CHAT_ENDPOINT, RESPONSES_ENDPOINT, EMBEDDINGS_ENDPOINT)
_RESPONSE_FORMAT_TYPES = ("json_schema", "json_object", "text")
_TOOL_CHOICES = ("none", "auto", "required")

# gpt-*, o1*, o3*, o4*, chatgpt-*, and fine-tunes of those ("ft:gpt-4o-mini:org::id").
_OPENAI_MODEL = re.compile(r"^(ft:)?(gpt-|o1|o3|o4|chatgpt-)")
_OPENAI_PREFIX = "openai/"
_OPENAI_NAMES = "gpt-, o1, o3, o4, chatgpt- (or ft: fine-tunes of those, or openai/...)"
# Names that look meant for OpenAI but do not match (gpt5-mini, GPT-4o, chatgpt4o).
_NEAR_OPENAI = re.compile(r"^(ft:)?(gpt|chatgpt|o[134])", re.IGNORECASE)


@pickles_fast
@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """One request: a system and a user prompt for a model.

    Example:

    >>> request = OpenAIRequest(
    ...     system_prompt="You are a helpful assistant.",
    ...     user_prompt="What is 2+2?",
    ...     model="gpt-4o-mini",
    ...     api="chat",
    ... )
    >>> request.model, request.api
    ('gpt-4o-mini', 'chat')

    Parameters:
        system_prompt: system message (`instructions` for the Responses API).
        user_prompt: user message (`input` for the Responses API).
        model: OpenAI model name, or a LiteLLM-style name such as ``gemini/gemini-2.0-flash``.
        api: ``"responses"`` for the Responses API, ``"chat"`` for Chat Completions.
        response_format: structured output: a pydantic model class (sent as the strict
            JSON schema the openai SDK makes of it; ``Result.parsed`` is then an instance
            of it), or the Chat Completions shape, e.g. ``{"type": "json_schema",
            "json_schema": {"name": ..., "schema": {...}}}``; converted for the Responses API.
        reasoning_effort: for reasoning models: ``"minimal"``, ``"low"``, ``"medium"``,
            ``"high"`` (and ``"none"``/``"xhigh"`` where the model supports them).
        temperature: sampling temperature.
        max_output_tokens: cap on the answer's tokens (``max_completion_tokens`` for Chat).
        seed: sampling seed (Chat Completions only).
        metadata: string key/value pairs stored with the request by the provider.
        extra_body: more body fields, sent as given (they win over the fields above).
        images: images for a vision model, after the user prompt: URLs, local file
            paths, or raw bytes (files and bytes are read now and sent as ``data:`` URLs).
        tools: tool definitions, in the shape of the chosen API (Chat: ``{"type":
            "function", "function": {...}}``; Responses: ``{"type": "function", "name":
            ...}``); tool calls in the answer are in ``Result.tool_calls``.
        tool_choice: ``"auto"``, ``"none"``, ``"required"``, or a dict naming a tool.
    """

    system_prompt: str
    user_prompt: str
    model: str = "gpt-5-mini"
    api: Literal["responses", "chat"] = "responses"
    response_format: dict[str, Any] | type | None = None
    reasoning_effort: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    extra_body: dict[str, Any] | None = None
    images: Sequence[str | bytes] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_text("system_prompt", self.system_prompt)
        _check_text("user_prompt", self.user_prompt)
        _check_model(self.model, "OpenAIRequest.model")
        if self.api not in API_NAMES:
            raise ValueError(f"OpenAIRequest.api must be 'responses' or 'chat', got {self.api!r}")
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(
                f"OpenAIRequest.reasoning_effort must be one of {', '.join(REASONING_EFFORTS)} "
                f"or None, got {self.reasoning_effort!r}"
            )
        if self.response_format is not None:
            _check_response_format(self.response_format)
        if self.temperature is not None:
            _check_type("temperature", self.temperature, (int, float))
            if not math.isfinite(self.temperature):
                raise ValueError(
                    f"OpenAIRequest.temperature must be finite, got {self.temperature}"
                )
        if self.max_output_tokens is not None:
            _check_type("max_output_tokens", self.max_output_tokens, int)
            if self.max_output_tokens < 1:
                raise ValueError("OpenAIRequest.max_output_tokens must be >= 1")
        if self.seed is not None:
            _check_type("seed", self.seed, int)
            if self.api != "chat":
                raise ValueError("OpenAIRequest.seed is only supported with api='chat'")
        if self.metadata is not None:
            _check_type("metadata", self.metadata, dict)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
                raise TypeError("OpenAIRequest.metadata must map str to str")
        if self.extra_body is not None:
            _check_type("extra_body", self.extra_body, dict)
            _check_body_fields(self.extra_body, "OpenAIRequest.extra_body")
        if self.images is not None:
            object.__setattr__(self, "images", image_urls(self.images))
        self._check_tools()
        json_fields = ["metadata", "extra_body", "tools", "tool_choice"]
        if not is_model_class(self.response_format):
            json_fields.append("response_format")
        for name in json_fields:
            _check_json(getattr(self, name), f"OpenAIRequest.{name}")

    def _check_tools(self) -> None:
        tools = self.tools
        if tools is not None and not (
            isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
        ):
            raise TypeError("OpenAIRequest.tools must be a list of tool definitions (dicts)")
        choice = self.tool_choice
        if choice is not None and not isinstance(choice, dict) and choice not in _TOOL_CHOICES:
            raise ValueError(
                f"OpenAIRequest.tool_choice must be one of {', '.join(_TOOL_CHOICES)} or a "
                f"dict naming a tool, got {choice!r}"
            )

    @property
    def uses_openai_sdk(self) -> bool:
        """True when the model is served by the OpenAI SDK rather than LiteLLM."""
        return openai_model_name(self.model) is not None


@pickles_fast
@dataclass(frozen=True, slots=True)
class RawRequest:
    """A request body sent as given to an endpoint, as in an OpenAI Batch API input line.

    Example:

    >>> hello = [{"role": "user", "content": "Hi"}]
    >>> RawRequest("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": hello}).model
    'gpt-4o-mini'

    Parameters:
        url: ``"/v1/chat/completions"``, ``"/v1/responses"`` or ``"/v1/embeddings"``.
        body: the JSON body; it must name its ``model``.
        custom_id: the caller's id for this request, carried along untouched.
    """

    url: str
    body: dict[str, Any]
    custom_id: str | None = None

    def __post_init__(self) -> None:
        if self.url not in ENDPOINTS:
            raise ValueError(
                f"RawRequest.url must be one of {', '.join(ENDPOINTS)}, got {self.url!r}"
            )
        _check_type("body", self.body, dict, owner="RawRequest")
        _check_model(self.body.get("model"), "RawRequest.body['model']")
        _check_body_fields(self.body, "RawRequest.body")
        _check_json(self.body, "RawRequest.body")

    @property
    def model(self) -> str:
        """The body's model."""
        return str(self.body["model"])

    @property
    def uses_openai_sdk(self) -> bool:
        """True when the model is served by the OpenAI SDK rather than LiteLLM."""
        return openai_model_name(self.model) is not None


@pickles_fast
@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts to embed: one vector per text, from ``/v1/embeddings``.

    Example:

    >>> EmbeddingRequest("The quick brown fox", dimensions=256).dimensions
    256
    >>> EmbeddingRequest(["first document", "second document"]).input
    ['first document', 'second document']

    Its plain value is the vector (``list[float]``), or the list of vectors for a list
    input; ``Result.embedding`` holds the same.

    Parameters:
        input: a text, or a list of texts.
        model: an OpenAI embedding model, or a LiteLLM-style name (``cohere/...``).
        dimensions: the length of each vector, for models that can shorten them.
    """

    input: str | list[str]
    model: str = "text-embedding-3-small"
    dimensions: int | None = None

    def __post_init__(self) -> None:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("EmbeddingRequest.input must be a str or a non-empty list of str")
        for i, text in enumerate(texts):
            _check_text(
                f"input[{i}]" if isinstance(self.input, list) else "input",
                text,
                owner="EmbeddingRequest",
            )
        _check_model(self.model, "EmbeddingRequest.model")
        if self.dimensions is not None:
            _check_type("dimensions", self.dimensions, int, owner="EmbeddingRequest")
            if self.dimensions < 1:
                raise ValueError("EmbeddingRequest.dimensions must be >= 1")

    @property
    def uses_openai_sdk(self) -> bool:
        """True when the model is served by the OpenAI SDK rather than LiteLLM."""
        return openai_model_name(self.model) is not None


AnyRequest: TypeAlias = OpenAIRequest | EmbeddingRequest | RawRequest


# OpenAI embedding models: text-embedding-3-small, text-embedding-ada-002, ...
_OPENAI_EMBEDDING = re.compile(r"^text-embedding-")


def openai_model_name(model: str) -> str | None:
    """The name to give the OpenAI SDK, or None when the model routes through LiteLLM."""
    if model.startswith(_OPENAI_PREFIX):
        return model[len(_OPENAI_PREFIX) :]
    return model if _OPENAI_MODEL.match(model) or _OPENAI_EMBEDDING.match(model) else None


def is_model_class(value: object) -> bool:
    """Whether `value` is a pydantic model class (checked without importing pydantic)."""
    return isinstance(value, type) and hasattr(value, "model_json_schema")


def explain_route(model: str) -> str:
    """Why `model` went where it did, for error messages about its route."""
    if openai_model_name(model) is not None:
        return f"model {model!r} is an OpenAI model name, so it went to the OpenAI API"
    hint = ""
    if _NEAR_OPENAI.match(model):
        guess = re.sub(r"^(gpt|chatgpt)-?", r"\1-", model.lower())
        if openai_model_name(guess) is not None and guess != model:
            hint = f"; did you mean {guess!r}?"
    return f"model {model!r} does not start with {_OPENAI_NAMES}, so it went to LiteLLM{hint}"


def _check_type(
    field: str, value: object, kind: type | tuple[type, ...], owner: str = "OpenAIRequest"
) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TypeError(f"{owner}.{field} must be a {names}, got {type(value).__name__}")


def _check_model(model: object, where: str) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{where} must be a non-empty model name, got {model!r}")
    if model != model.strip():
        raise ValueError(
            f"{where} has spaces around it: {model!r} (the provider would not find it)"
        )


def _check_text(field: str, value: object, owner: str = "OpenAIRequest") -> None:
    _check_type(field, value, str, owner=owner)
    assert isinstance(value, str)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{owner}.{field} has a lone surrogate {value[exc.start]!r} at position "
                f"{exc.start}: it cannot be sent as UTF-8 (text decoded with "
                "errors='surrogateescape'?)"
            ) from None


def _check_body_fields(body: dict[str, Any], where: str) -> None:
    if "model" in body:
        _check_model(body["model"], f"{where}['model']")
    if body.get("stream"):
        raise ValueError(f"{where}['stream'] is not supported: answers are collected whole")


def _check_json(value: object, where: str) -> None:
    """`value` must be sendable as JSON: plain data, finite numbers, valid text."""
    if value is None:
        return
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} cannot be sent as JSON: {exc}") from None


def _check_response_format(response_format: object) -> None:
    if is_model_class(response_format):
        return
    if not isinstance(response_format, dict):
        raise TypeError(
            "OpenAIRequest.response_format must be a pydantic model class, a dict or None, "
            f"got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind not in _RESPONSE_FORMAT_TYPES:
        raise ValueError(
            "OpenAIRequest.response_format['type'] must be one of "
            f"{', '.join(_RESPONSE_FORMAT_TYPES)}, got {kind!r}"
        )
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if not isinstance(schema, dict) or "name" not in schema or "schema" not in schema:
            raise ValueError(
                "OpenAIRequest.response_format['json_schema'] must be a dict with "
                "'name' and 'schema' (the Chat Completions shape)"
            )
