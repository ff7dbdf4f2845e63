"""What ARP needs from Python 3.10+ on the oldest Python it runs on (3.9, Debian's PyPy)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import TypeVar

T = TypeVar("T")


def slots_dataclass(cls: type[T]) -> type[T]:
    """``@dataclass(slots=True)``, also on Python 3.9: no per-instance ``__dict__``."""
    if sys.version_info >= (3, 10):
        return dataclass(slots=True)(cls)
    return with_slots(dataclass(cls))


def with_slots(cls: type[T]) -> type[T]:
    """The dataclass ``cls`` rebuilt with ``__slots__`` for its fields, as 3.10's ``dataclass`` does."""
    names = tuple(f.name for f in fields(cls))
    namespace = dict(cls.__dict__)
    for name in (*names, "__dict__", "__weakref__"):
        namespace.pop(name, None)  # defaults live in __init__ now; slots replace the class attributes
    namespace["__slots__"] = names
    slotted = type(cls)(cls.__name__, cls.__bases__, namespace)
    slotted.__qualname__ = cls.__qualname__
    return slotted
