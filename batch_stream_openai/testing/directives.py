"""The fake server's ``[[...]]`` directives, and the answers it gives: pure, deterministic.

A directive in the user prompt changes how the server answers that request, e.g.
``[[status=429 retry_after=0.1 times=1]]`` or ``[[latency=0.5]] [[refuse]]``. Kinds:

- ``latency=S``: wait S seconds more before answering.
- ``straggle=S``: a straggler: the first request with this user prompt waits S seconds
  more, later ones (a retry, a hedge) do not.
- ``status=N``: answer HTTP N with an OpenAI-shaped error body; modifiers ``retry_after``,
  ``retry_after_ms`` and ``should_retry`` set those headers (sent as written, valid or
  not), ``code`` the error's code and type.
- ``drop`` (close the connection), ``hang`` (never answer), ``slow_body=S`` (send the
  body in pieces over S seconds), ``big=N`` (an answer of exactly N characters).
- ``refuse`` (a refusal instead of text), ``incomplete`` (a Responses answer cut short,
  with no text), ``no_text`` (an answer without any text part), ``tool_call`` (a call of
  the first tool the request offers, arguments built from its schema), ``bad_json`` (JSON
  that does not follow the requested schema), ``echo_auth`` (the request's Authorization
  header repeated in the body, as some proxies do), and ``body=html|empty|list|invalid_utf8``
  (a 200 answer that is not a JSON object).

A request for JSON with a schema is answered with JSON that follows it (see
`answers.json_for_schema`); ``/v1/embeddings`` answers `answers.expected_embedding` vectors.

``times=K`` on any directive applies it to the first K requests with that user prompt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass

__all__ = ["MAX_BIG", "Directive", "expected_answer", "parse_directives"]

MAX_BIG = 100_000_000

_DIRECTIVE_RE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
FAULT_KINDS = frozenset({"status", "drop", "hang"})
_NUMBER_KINDS = frozenset({"latency", "straggle", "status", "slow_body", "big"})
_FLAG_KINDS = frozenset(
    {"drop", "hang", "refuse", "incomplete", "no_text", "echo_auth", "tool_call", "bad_json"}
)
_WORD_KINDS = {"body": frozenset({"html", "empty", "list", "invalid_utf8"})}
_KINDS = _NUMBER_KINDS | _FLAG_KINDS | frozenset(_WORD_KINDS)
# Modifiers and the kinds that take them ("times" goes with every kind).
_STATUS_MODIFIERS = frozenset({"retry_after", "retry_after_ms", "code", "should_retry"})


@dataclass(frozen=True)
class Directive:
    """One parsed ``[[kind[=value] key=value ...]]`` token from a user prompt.

    Parameters:
        kind: one of the kinds in the module docstring.
        value: the number after ``kind=`` (0 for flags and words).
        word: the word after ``kind=`` for word kinds (``body=html``), else None.
        times: only the first ``times`` requests with the same user prompt are affected.
        retry_after: value of the ``retry-after`` header (``status`` only).
        retry_after_ms: value of the ``retry-after-ms`` header (``status`` only).
        should_retry: value of the ``x-should-retry`` header (``status`` only).
        code: overrides ``error.code`` and ``error.type`` (``status`` only).
    """

    kind: str
    value: float = 0.0
    word: str | None = None
    times: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    should_retry: str | None = None
    code: str | None = None


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"directive {what}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"directive {what}={text!r} must be a finite number >= 0")
    return value


def _kind_and_value(token: str, head: str) -> tuple[str, float, str | None]:
    kind, sep, raw_value = head.partition("=")
    if kind not in _KINDS:
        raise ValueError(f"unknown directive {kind!r} in [[{token}]]")
    if kind in _FLAG_KINDS:
        if sep:
            raise ValueError(f"directive {kind!r} takes no value: [[{token}]]")
        return kind, 0.0, None
    if not sep:
        raise ValueError(f"directive {kind!r} needs a value, e.g. [[{kind}=1]]")
    if kind in _WORD_KINDS:
        if raw_value not in _WORD_KINDS[kind]:
            choices = ", ".join(sorted(_WORD_KINDS[kind]))
            raise ValueError(f"directive {kind}={raw_value!r} must be one of {choices}")
        return kind, 0.0, raw_value
    value = _number(raw_value, kind)
    if kind == "status" and not (100 <= value <= 599 and value.is_integer()):
        raise ValueError(f"directive status={raw_value!r} is not an HTTP status code")
    if kind == "big" and not (value.is_integer() and value <= MAX_BIG):
        raise ValueError(f"directive big={raw_value!r} must be an integer <= {MAX_BIG}")
    return kind, value, None


def _parse_token(token: str) -> Directive:
    words = token.split()
    if not words:
        raise ValueError("empty directive [[]]")
    kind, value, word = _kind_and_value(token, words[0])
    mods: dict[str, str] = {}
    for modifier in words[1:]:
        key, sep, mod_value = modifier.partition("=")
        if key not in _STATUS_MODIFIERS | {"times"} or not sep or not mod_value:
            raise ValueError(f"bad modifier {modifier!r} in [[{token}]]")
        mods[key] = mod_value
    if kind != "status" and mods.keys() - {"times"}:
        raise ValueError(f"only [[status=...]] takes {', '.join(sorted(_STATUS_MODIFIERS))}")
    times: int | None = None
    if "times" in mods:
        times_f = _number(mods["times"], "times")
        if not times_f.is_integer():
            raise ValueError(f"directive times={mods['times']!r} must be an integer")
        times = int(times_f)
    return Directive(
        kind=kind,
        value=value,
        word=word,
        times=times,
        retry_after=mods.get("retry_after"),
        retry_after_ms=mods.get("retry_after_ms"),
        should_retry=mods.get("should_retry"),
        code=mods.get("code"),
    )


@functools.lru_cache(maxsize=4096)
def parse_directives(user_prompt: str) -> tuple[Directive, ...]:
    """Parse every ``[[...]]`` directive in a user prompt, in textual order.

    Example: ``parse_directives("hi [[drop times=1]]")`` ->
    ``(Directive(kind="drop", times=1),)``.

    Raises:
        ValueError: a ``[[...]]`` token is not a valid directive.
    """
    if "[[" not in user_prompt:
        return ()
    return tuple(_parse_token(m.group(1)) for m in _DIRECTIVE_RE.finditer(user_prompt))


def expected_answer(system_prompt: str, user_prompt: str, structured: bool = False) -> str:
    """Return the exact assistant text the fake server answers for these prompts.

    Example: ``expected_answer("Be brief.", "hello")`` ->
    ``"echo: hello [<12 hex chars>]"``; with ``structured=True`` it is
    ``json.dumps({"answer": <that text>})`` (what a request for JSON without a schema of
    its own gets).

    If the user prompt contains ``[[big=N]]`` the plain answer is padded with ``"x"``
    (or truncated) to exactly ``N`` characters; a structured answer wraps that
    padded text, so its ``"answer"`` field is ``N`` characters long.

    Raises:
        ValueError: the user prompt contains an invalid ``[[...]]`` directive.
    """
    digest = hashlib.sha256((system_prompt + "\x00" + user_prompt).encode()).hexdigest()[:12]
    text = f"echo: {user_prompt[:60]} [{digest}]"
    if "[[" in user_prompt:
        for directive in parse_directives(user_prompt):
            if directive.kind == "big":
                size = int(directive.value)
                text = text[:size] + "x" * (size - len(text))
    if structured:
        return json.dumps({"answer": text})
    return text
