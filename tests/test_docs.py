"""Every example in the package's docstrings runs, as a doctest: against the bundled server
where it sends requests (``OPENAI_BASE_URL`` points there), in a fresh folder where it
writes files. None is left as a code block nobody runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import batch_stream_openai
from batch_stream_openai.testing import FakeOpenAIServer

from .helpers import TEST_API_KEY, ask

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(batch_stream_openai.__path__, "batch_stream_openai.")
    if not info.name.endswith("__main__")
)
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name: str, globs: dict[str, Any]) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module, globs={**vars(module), **globs}) if test.examples]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_run(
    name: str, fake: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    monkeypatch.chdir(tmp_path)
    requests = [ask(f"What is {i} + {i}?") for i in range(3)]
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    for test in _examples(name, {"requests": requests, "server": fake}):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


@pytest.mark.fast
def test_every_example_is_a_doctest() -> None:
    package = Path(batch_stream_openai.__file__).parent
    untested = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "Example::" in path.read_text() or "Examples::" in path.read_text()
    ]
    assert not untested, f"examples written as code blocks, not doctests: {untested}"
