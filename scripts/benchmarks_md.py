"""Sections of BENCHMARKS.md that scripts other than bench.py own, between markers.

Each script replaces only its own section (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``),
so running one benchmark never erases another's figures.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["MARKDOWN", "medians", "owned_sections", "save_section"]

MARKDOWN = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
_SECTION = re.compile(r"<!-- (?P<name>[\w-]+):start -->.*?<!-- (?P=name):end -->", re.DOTALL)


def save_section(name: str, body: str, markdown: Path = MARKDOWN) -> None:
    """Replace section `name` of the file with `body` (append it, or create the file)."""
    block = f"<!-- {name}:start -->\n{body.strip()}\n<!-- {name}:end -->"
    text = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    pattern = re.compile(
        rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.DOTALL
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    markdown.write_text(text)


def owned_sections(markdown: Path = MARKDOWN, exclude: frozenset[str] = frozenset()) -> str:
    """Every marked section in the file except `exclude`, markers kept, in file order."""
    if not markdown.exists():
        return ""
    text = markdown.read_text()
    return "\n\n".join(m.group(0) for m in _SECTION.finditer(text) if m["name"] not in exclude)


def medians(samples: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """The median of each figure over each label's runs: ``{label: {figure: median}}``."""
    return {
        label: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for label, runs in samples.items()
    }
