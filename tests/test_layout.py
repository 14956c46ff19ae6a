"""The package's shape: imports run one way between its rooms, and every module, class
and function stays short enough to read at once (the rooms are drawn in `pool.py`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parents[1] / "batch_stream_openai"

# The rooms, top to bottom: a room may import only its own layer and the layers after it.
LAYERS: list[set[str]] = [
    {"cli", "__main__"},
    {"files"},
    {"api", "__init__"},
    {"pool"},
    {"_core"},
    {"_batchapi"},
    {"_observe"},
    {"_backends"},
    {"_worker"},
    {"_spending"},
    {"_policy"},
    {"_wire"},
    {"stream", "results", "request", "errors"},
    {"_pickling", "_images", "_signals"},
]
# The bundled server is a room of its own: it imports only the wire formats and the
# public types, and only the command line (`serve`, `demo`) imports it.
TESTING = "testing"

MAX_MODULE_LINES = 420
MAX_CLASS_LINES = 330
MAX_FUNCTION_LINES = 60  # the body, after its docstring
# A declaration table (one entry per option, data rather than code) may be longer.
DECLARATIONS = {"_core/options.py": 520}


def _modules() -> Iterator[tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    return module.split(".")[0] if module else "__init__"


def _imported(path: Path, module: str) -> Iterator[str]:
    """The package's modules `path` imports (relative imports resolved), by dotted name."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".") if module else []
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            names = [alias.name for alias in node.names] if not node.module else [""]
            for name in names:
                yield ".".join(part for part in (target, name) if part)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name.startswith("batch_stream_openai."):
                    yield name.removeprefix("batch_stream_openai.")


def _layer(room: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if room in layer)


def test_every_room_has_a_layer() -> None:
    rooms = {_room(module) for _, module in _modules()} - {TESTING}
    assert rooms <= set().union(*LAYERS), rooms - set().union(*LAYERS)


def test_imports_run_one_way_between_the_rooms() -> None:
    upward = []
    for path, module in _modules():
        room = _room(module)
        for target in _imported(path, module):
            other = _room(target)
            if other == room:
                continue
            if room == TESTING:
                allowed = other in {"_wire", "request", "results", "errors", "_pickling"}
            elif other == TESTING:
                allowed = room == "cli"
            else:
                allowed = _layer(other) >= _layer(room)
            if not allowed:
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(body) > 1:
        body = body[1:]  # the docstring helps reading; it is not counted
    return (node.end_lineno or node.lineno) - body[0].lineno + 1


def test_no_module_class_or_function_outgrows_a_reading() -> None:
    too_long = []
    for path, _ in _modules():
        name = str(path.relative_to(PACKAGE))
        lines = len(path.read_text().splitlines())
        if lines > DECLARATIONS.get(name, MAX_MODULE_LINES):
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_long.append(f"{name}: class {node.name}, {size} lines")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                (size := _body_lines(node)) > MAX_FUNCTION_LINES
            ):
                too_long.append(f"{name}: {node.name}(), {size} lines")
    assert not too_long, "\n".join(too_long)
