"""Print the oldest release of each dependency that pyproject.toml allows, as pins.

``.ci/run`` installs these after the full test suite has run against the newest releases,
and runs the SDK contract tests and a smoke batch against them, so the lower bounds in
pyproject.toml are versions that were really tested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
for requirement in project["project"]["dependencies"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)>=([0-9][^,;\s]*)", requirement)
    if match is None:
        raise SystemExit(f"pyproject.toml: {requirement!r} has no plain lower bound (>=X)")
    print(f"{match.group(1)}=={match.group(2)}")
