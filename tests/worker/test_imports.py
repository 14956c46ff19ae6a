"""What a batch imports: the `openai` SDK (~0.5 s, most of it ``openai.types``) is in
neither the parent nor a worker's hot path, once the SDK's own headers are known."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch_stream_openai.testing import FakeOpenAIServer

from ..helpers import TEST_API_KEY, run_script

_SCRIPT = """
import json, sys
from batch_stream_openai import OpenAIRequest, run_batch

def sdk_loaded(answer):
    import sys
    return "openai" in sys.modules

requests = [OpenAIRequest("s", f"q{i}", model="gpt-4o-mini") for i in range(8)]
options = dict(postprocess=sdk_loaded, base_url=sys.argv[1], api_key=sys.argv[2], workers=2)
first = run_batch(requests, **options)  # a worker takes the SDK's own headers, once
again = run_batch(requests, **options)  # new workers: the headers are known
print(json.dumps({"parent": "openai" in sys.modules, "first": first, "again": again}))
"""


@pytest.mark.timeout(90)
def test_neither_the_parent_nor_a_workers_hot_path_imports_the_sdk(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    script = _SCRIPT.replace("sys.argv[1]", repr(fake.base_url)).replace(
        "sys.argv[2]", repr(TEST_API_KEY)
    )
    done = run_script(script, timeout=80, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["parent"] is False
    assert any(seen["first"])  # the first run took the headers from the SDK itself
    assert seen["again"] == [False] * 8
    assert list((tmp_path / "batch-stream-openai" / "sdk-headers").glob("openai-*.json"))
