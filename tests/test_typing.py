"""Types an editor sees: with the README's install, mypy on a user's script finds the
package, and the batch functions say what they yield."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
from batch_stream_openai import EmbeddingRequest, OpenAIRequest, run_batch, stream_batch

requests = [OpenAIRequest("s", "u", model="gpt-4o-mini")]
for index, value in stream_batch(requests):
    reveal_type(value)
for index, result in stream_batch(requests, return_results=True):
    reveal_type(result)
reveal_type(run_batch(requests))
reveal_type(run_batch([EmbeddingRequest("x")]))
reveal_type(run_batch(requests, postprocess=len))
"""


@pytest.mark.timeout(180)
def test_mypy_on_a_user_script_finds_the_package_and_what_it_yields(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "script.py",
        ],
        cwd=tmp_path,  # not the project: the package must come from the install
        capture_output=True,
        text=True,
        timeout=170,
    )
    revealed = [
        line.split("Revealed type is ")[1]
        for line in checked.stdout.splitlines()
        if "Revealed type is" in line
    ]
    assert "import-not-found" not in checked.stdout, checked.stdout
    assert revealed == [
        '"str | Exception"',
        '"batch_stream_openai.results.Result"',
        '"list[str | Exception]"',
        '"list[list[float] | list[list[float]] | Exception]"',
        '"list[int | Exception]"',
    ], checked.stdout
