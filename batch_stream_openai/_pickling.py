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
from typing import Any, TypeVar

__all__ = ["pickles_fast"]

_T = TypeVar("_T")
# {class: its slot descriptors in field order}: they set what the frozen __setattr__ refuses.
_SLOTS: dict[type, tuple[Any, ...]] = {}


def pickles_fast(cls: type[_T]) -> type[_T]:
    """Class decorator: pickle a frozen, slotted dataclass as the tuple of its fields.

    Every result crosses a pipe. The default pickling of such a class runs Python code
    per field on both sides; a tuple of values rebuilt through the slot descriptors
    (which set what the frozen ``__setattr__`` refuses) costs a fraction of that.
    """
    slots = tuple(cls.__dict__[field.name] for field in dataclasses.fields(cls))  # type: ignore[arg-type]

    def __reduce__(self: _T) -> tuple[Any, ...]:
        if type(self) is not cls:  # a subclass may have more fields: the dataclass way
            return (copyreg.__newobj__, (type(self),), self.__getstate__())  # type: ignore[attr-defined]
        return (_rebuild, (cls, tuple(slot.__get__(self) for slot in slots)))

    _SLOTS[cls] = slots
    cls.__reduce__ = __reduce__  # type: ignore[method-assign,assignment]
    return cls


def _rebuild(cls: type[_T], values: tuple[Any, ...]) -> _T:
    obj = object.__new__(cls)
    for slot, value in zip(_SLOTS[cls], values, strict=True):
        slot.__set__(obj, value)
    return obj
