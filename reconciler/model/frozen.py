"""Build frozen model dataclasses fast, from values already checked.

A frozen dataclass's ``__init__`` sets every field through
``object.__setattr__``: about 2 us an instance with a dozen fields, 20 ms
for a 10,000-device manifest on every agent pass. ``make(cls, values)``
gives the instance ``values`` as its ``__dict__`` instead, in one call: the
instance owns that dict from then on, so callers pass a dict they build for
it and keep no reference (a dict literal at the call). It runs no
``__post_init__`` and applies no defaults, so it is only for classes without
a ``__post_init__``, with every field given, by code that built the values
from data it has just checked (``pki.manifest.manifest_from_dict``).
Equality, hashing and ``repr`` are the dataclass's own. It pays from about
three fields on (with two, ``__init__`` is about as fast). Stdlib only.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def make(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of ``cls`` whose ``__dict__`` is ``values`` (every field,
    nothing else; the instance owns the dict: see the module docstring)."""
    obj = _new(cls)
    _set(obj, "__dict__", values)  # object's own setattr: the frozen one refuses
    return obj


_new, _set = object.__new__, object.__setattr__


def field_names(cls: type) -> frozenset[str]:
    """The field names of dataclass ``cls`` (for tests that check ``make``'s callers)."""
    return frozenset(f.name for f in fields(cls))


__all__ = ["field_names", "make"]
