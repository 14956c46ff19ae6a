"""`OpenAIRequest`: one prompt to send, validated on construction, and the routing rule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["API_NAMES", "REASONING_EFFORTS", "OpenAIRequest", "openai_model_name"]

API_NAMES = ("responses", "chat")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_RESPONSE_FORMAT_TYPES = ("json_schema", "json_object", "text")

# gpt-*, o1*, o3*, o4*, chatgpt-*, and fine-tunes of those ("ft:gpt-4o-mini:org::id").
_OPENAI_MODEL = re.compile(r"^(ft:)?(gpt-|o1|o3|o4|chatgpt-)")
_OPENAI_PREFIX = "openai/"


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """One request: a system and a user prompt for a model.

    Example::

        OpenAIRequest(
            system_prompt="You are a helpful assistant.",
            user_prompt="What is 2+2?",
            model="gpt-4o-mini",
            api="chat",
        )

    Parameters:
        system_prompt: system message (`instructions` for the Responses API).
        user_prompt: user message (`input` for the Responses API).
        model: OpenAI model name, or a LiteLLM-style name such as ``gemini/gemini-2.0-flash``.
        api: ``"responses"`` for the Responses API, ``"chat"`` for Chat Completions.
        response_format: structured output in the Chat Completions shape, e.g.
            ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``;
            converted for the Responses API.
        reasoning_effort: for reasoning models: ``"minimal"``, ``"low"``, ``"medium"``,
            ``"high"`` (and ``"none"``/``"xhigh"`` where the model supports them).
    """

    system_prompt: str
    user_prompt: str
    model: str = "gpt-5-mini"
    api: Literal["responses", "chat"] = "responses"
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        _check_str("system_prompt", self.system_prompt)
        _check_str("user_prompt", self.user_prompt)
        _check_str("model", self.model)
        if not self.model.strip():
            raise ValueError("OpenAIRequest.model must be a non-empty model name")
        if self.api not in API_NAMES:
            raise ValueError(f"OpenAIRequest.api must be 'responses' or 'chat', got {self.api!r}")
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(
                f"OpenAIRequest.reasoning_effort must be one of {', '.join(REASONING_EFFORTS)} "
                f"or None, got {self.reasoning_effort!r}"
            )
        if self.response_format is not None:
            _check_response_format(self.response_format)

    @property
    def uses_openai_sdk(self) -> bool:
        """True when the model is served by the OpenAI SDK rather than LiteLLM."""
        return openai_model_name(self.model) is not None


def openai_model_name(model: str) -> str | None:
    """The name to give the OpenAI SDK, or None when the model routes through LiteLLM."""
    if model.startswith(_OPENAI_PREFIX):
        return model[len(_OPENAI_PREFIX) :]
    return model if _OPENAI_MODEL.match(model) else None


def _check_str(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"OpenAIRequest.{field} must be a str, got {type(value).__name__}")


def _check_response_format(response_format: object) -> None:
    if not isinstance(response_format, dict):
        raise TypeError(
            "OpenAIRequest.response_format must be a dict or None, "
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
