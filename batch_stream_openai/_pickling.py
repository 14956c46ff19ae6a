"""Fast pickling for the frozen dataclasses that cross a pipe for every request.

The default pickling of a frozen, slotted dataclass runs Python code per field on both
sides (``__getstate__``/``__setstate__``), about 15 us for a `Result`; the tuple of its
field values, rebuilt through the slot descriptors, costs a few. Tasks and outcomes are
pickled once per request on each side of the pipe, so this is the parent's and the
workers' CPU per request (see BENCHMARKS.md).
"""

from __future__ import annotations

import copyreg
import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["pickles_fast", "set_unshared"]

_T = TypeVar("_T")
# {class: its slot descriptors in field order}: they set what the frozen __setattr__ refuses.
_SLOTS: dict[type, tuple[Any, ...]] = {}
# {class: the function that makes an instance from the tuple of its field values}.
_BUILDERS: dict[type, Callable[[tuple[Any, ...]], Any]] = {}


def pickles_fast(cls: type[_T]) -> type[_T]:
    """Class decorator: pickle a frozen, slotted dataclass as the tuple of its fields.

    Every result crosses a pipe. The default pickling of such a class runs Python code
    per field on both sides; a tuple of values read by `operator.attrgetter` (in C) and
    set again by a function with one statement per field (made here, as `dataclasses`
    makes ``__init__``) costs a fraction of that.
    """
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    slots = tuple(cls.__dict__[name] for name in names)
    read = operator.attrgetter(*names)
    values_of = read if len(names) > 1 else (lambda obj: (read(obj),))

    def __reduce__(self: _T) -> tuple[Any, ...]:
        if type(self) is not cls:  # a subclass may have more fields: the dataclass way
            return (copyreg.__newobj__, (type(self),), self.__getstate__())  # type: ignore[attr-defined]
        return (_rebuild, (cls, values_of(self)))

    _SLOTS[cls] = slots
    _BUILDERS[cls] = _builder(cls, slots)
    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


def _builder(cls: type, slots: tuple[Any, ...]) -> Callable[[tuple[Any, ...]], Any]:
    """``build(values)``: an instance of `cls` from the tuple of its field values, each
    set through its slot descriptor by a statement of its own (no loop: half the time)."""
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, "count": len(slots)}
    lines = [
        "def build(values):",
        "    if len(values) != count:",
        "        raise TypeError(f'{cls.__name__} takes {count} values, got {len(values)}')",
        "    obj = new(cls)",
    ]
    for number, slot in enumerate(slots):
        namespace[f"set{number}"] = slot.__set__
        lines.append(f"    set{number}(obj, values[{number}])")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # our own text, as dataclasses makes __init__
    build: Callable[[tuple[Any, ...]], Any] = namespace["build"]
    return build


def _rebuild(cls: type[_T], values: tuple[Any, ...]) -> _T:
    built: _T = _BUILDERS[cls](values)
    return built


def set_unshared(obj: object, name: str, value: Any) -> None:
    """Set field `name` of a frozen object of a `pickles_fast` class that nothing else
    holds yet: one just unpickled from a worker's message, about to be handed on. A copy
    (`dataclasses.replace`) would cost ~12 us; the parent does this for every answer.
    """
    for slot in _SLOTS[type(obj)]:
        if slot.__name__ == name:
            slot.__set__(obj, value)
            return
    raise TypeError(f"{type(obj).__name__} has no field {name!r}")
