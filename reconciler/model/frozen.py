"""Build frozen model dataclasses fast, from values already checked.

A frozen dataclass's ``__init__`` sets every field through
``object.__setattr__``: about 2 us an instance with a dozen fields, 20 ms
for a 10,000-device manifest on every agent pass. ``make(cls, values)``
fills the instance's ``__dict__`` in one call instead. It runs no
``__post_init__`` and applies no defaults, so it is only for classes without
a ``__post_init__``, with every field given, by code that built the values
from data it has just checked (``pki.manifest.manifest_from_dict``).
Equality, hashing and ``repr`` are the dataclass's own. It pays from about
four fields on (with two, ``__init__`` is as fast). Stdlib only.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def make(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of ``cls`` holding ``values`` (every field, nothing else)."""
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    return obj


def field_names(cls: type) -> frozenset[str]:
    """The field names of dataclass ``cls`` (for tests that check ``make``'s callers)."""
    return frozenset(f.name for f in fields(cls))


__all__ = ["field_names", "make"]
