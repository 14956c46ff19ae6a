"""The Batch API JSONL formats, in-process: input lines, output lines, resume state."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from batch_stream_openai import APIError, OpenAIRequest, RawRequest, Result
from batch_stream_openai.files.jsonl import (
    InputLine,
    LineError,
    OutputState,
    compact_output,
    custom_id_digest,
    id_key,
    output_line,
    parse_input_line,
    recover_output,
    request_sha256,
)

pytestmark = [pytest.mark.fast, pytest.mark.timeout(10)]

CHAT = "/v1/chat/completions"


def batch_line(custom_id: str, **body: object) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(line).encode()


def test_a_batch_api_line_becomes_a_raw_request_sent_as_given() -> None:
    raw = batch_line("q1", model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    line = parse_input_line(raw, 1, None)
    assert isinstance(line, InputLine) and line.custom_id == "q1"
    assert line.request == RawRequest(CHAT, json.loads(raw)["body"], custom_id="q1")
    assert line.request_sha256 == request_sha256(line.request)


def test_a_prompt_line_becomes_an_openai_request_with_the_default_model() -> None:
    raw = b'{"system_prompt": "Be brief.", "user_prompt": "Hi", "api": "chat"}'
    line = parse_input_line(raw, 7, "gpt-4o-mini")
    assert isinstance(line, InputLine)
    assert line.custom_id == "line-7"
    assert line.request == OpenAIRequest("Be brief.", "Hi", model="gpt-4o-mini", api="chat")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (batch_line("q", messages=[]), "body has no 'model'"),
        (
            b'{"custom_id": "q", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
            "method must be 'POST'",
        ),
        (b'{"custom_id": "", "system_prompt": "s", "user_prompt": "u"}', "non-empty string"),
        (b'{"custom_id": "\\ud800", "system_prompt": "s", "user_prompt": "u"}', "lone surrogate"),
        (b'{"system_prompt": "s", "user_prompt": "u", "colour": "red"}', "unknown key 'colour'"),
    ],
)
def test_a_bad_line_is_a_line_error_naming_its_number(raw: bytes, message: str) -> None:
    error = parse_input_line(raw, 12, None)
    assert isinstance(error, LineError) and error.number == 12
    assert message in error.message
    assert str(error).startswith("line 12: ")


def test_equal_requests_have_equal_digests_and_any_change_shows() -> None:
    one = RawRequest(CHAT, {"model": "m", "messages": [], "temperature": 0.5})
    same = RawRequest(CHAT, {"temperature": 0.5, "messages": [], "model": "m"})
    other = RawRequest(CHAT, {"model": "m", "messages": [], "temperature": 0.6})
    assert request_sha256(one) == request_sha256(same) != request_sha256(other)
    assert id_key(custom_id_digest("q1")) != id_key(custom_id_digest("q2"))


def test_output_lines_follow_the_batch_api_shape() -> None:
    ok = json.loads(output_line("q1", "abc", Result(0, text="t", status_code=200, body={"id": 1})))
    assert ok["custom_id"] == "q1" and ok["error"] is None and ok["x_request_sha256"] == "abc"
    assert ok["response"] == {"status_code": 200, "request_id": None, "body": {"id": 1}}
    error = APIError("bad", status_code=400, code="invalid", attempts=1)
    failed = json.loads(output_line("q2", "def", Result(1, status_code=400, error=error)))
    assert failed["error"] == {
        "type": "APIError",
        "code": "invalid",
        "message": "bad",
        "attempts": 0,
    }
    assert failed["response"]["status_code"] == 400


def lines(*records: dict[str, object]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def record(custom_id: str, error: object = None, sha: str = "s") -> dict[str, object]:
    return {"custom_id": custom_id, "error": error, "x_request_sha256": sha}


def test_recovery_cuts_only_a_torn_last_line_and_the_latest_line_wins() -> None:
    data = lines(record("a", error={"type": "x"}), record("b"), record("a", sha="t"))
    output = io.BytesIO(data + b'{"custom_id": "c", "err')
    state = recover_output(output, "out.jsonl")
    assert state.torn_bytes == len(b'{"custom_id": "c", "err')
    assert output.getvalue() == data
    key_a = id_key(custom_id_digest("a"))
    assert state.done[key_a] == "t" and key_a not in state.failed
    assert state.superseded == 1
    broken = io.BytesIO(b"garbage\n" + data)
    with pytest.raises(ValueError, match=r"out\.jsonl:1: unreadable output line"):
        recover_output(broken, "out.jsonl")


def test_compaction_keeps_the_latest_line_of_each_custom_id(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(
        lines(record("a", error={"type": "x"}), record("b"), record("a"), record("c"), record("a"))
    )
    with path.open("a+b") as output:
        state = recover_output(output, str(path))
        assert state.superseded == 2
        dropped = compact_output(output, path, state)
    assert dropped == 2
    kept = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["custom_id"] for r in kept] == ["b", "c", "a"]
    assert all(r["error"] is None for r in kept)
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_written_line_for_a_custom_id_already_done_is_counted_as_superseding() -> None:
    state = OutputState()
    state.add(json.dumps(record("a")).encode() + b"\n")
    state.note_written("b")
    assert state.superseded == 0
    state.note_written("a")
    assert state.superseded == 1
