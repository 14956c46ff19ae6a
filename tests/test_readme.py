"""The README's examples run as pasted, and its claims about start methods hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def run(code: str, tmp_path: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


@pytest.mark.timeout(120)
def test_the_async_example_runs_as_pasted(tmp_path: Path) -> None:
    [example] = [block for block in python_blocks() if "asyncio.run(main(" in block]
    out = run(example, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "20 answers in input order" in out.stdout
    assert "Future exception was never retrieved" not in out.stderr


UNGUARDED = """
from pathlib import Path
from batch_stream_openai import OpenAIRequest, run_batch
from batch_stream_openai.testing import FakeOpenAIServer

with Path("imports.log").open("a") as log:
    print(__name__, file=log)
with FakeOpenAIServer() as server:
    run_batch([OpenAIRequest("s", "u", model="gpt-4o-mini")], workers=1,
              base_url=server.base_url, api_key="sk-local")
"""


@pytest.mark.timeout(120)
def test_workers_import_the_main_module_with_the_default_start_method_and_say_so(
    tmp_path: Path,
) -> None:
    out = run(UNGUARDED, tmp_path)
    assert out.returncode != 0
    assert "'forkserver' (the default)" in out.stderr and "__mp_main__" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr
    imports = (tmp_path / "imports.log").read_text().split()
    assert imports[0] == "__main__" and "__mp_main__" in imports[1:]
