"""Frozen records and fast JSON: the one module that imports msgspec.

Why msgspec (docs/architecture.md, "Libraries"): the agent's whole-process
pass at 10,000 peers spent ~60 ms of its ~0.5 s creating classes.
``dataclasses`` writes each class's ``__init__``, ``__eq__``, ``__hash__``,
``__repr__`` and frozen ``__setattr__`` as source text and compiles it when the
module is imported (~0.8 ms a class, 77 classes on the agent's path), every
time a short-lived ``meshops agent apply`` starts. A ``msgspec.Struct`` class
is built in C in ~0.02 ms, its instances are created and compared in C, and
its JSON codec reads and writes the agent's megabyte state files 2-10x faster
than the standard library.

* ``Record``: the base of every frozen model record on the agent's path
  (``class Peer(Record): ...``; class keywords ``order=True`` and
  ``dict=True`` (for ``functools.cached_property``) as msgspec takes them).
  Fields are declared as in a dataclass; mutable defaults through ``field``.
  Equality compares type and every field; instances are hashable when their
  fields are.
* ``field``, ``replace``, ``field_names``, ``as_dict`` and ``force_setattr``
  (for ``__post_init__`` normalisation) work on records, and ``replace``,
  ``field_names`` and ``as_dict`` also on the dataclasses that remain
  elsewhere (the repository model).
* ``repr_without(*names)``: a ``__repr__`` that leaves fields out (private keys:
  never logged).
* ``json_loads(data)``, ``json_dumps_sorted(obj)`` and ``json_dumps(obj)``: the
  decoder behind ``boundedjson.loads`` (which checks size and depth first) and
  the compact encoders (keys sorted, or in the order given) for the agent's
  state files. Signed payloads keep ``pki``'s own canonical encoder.
* ``json_decoder(type)``: JSON read straight into typed records, checked in C
  (``agent.memory`` reads the 10,000-peer ``peering.json`` this way).

Bottom layer, beside ``errors``: imported by ``model``, ``converge``,
``policy``, ``pki`` and ``agent``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import msgspec.json
import msgspec.structs

T = TypeVar("T")


class Record(msgspec.Struct, frozen=True):
    """A frozen record: fields, equality, hashing and ``repr`` built in C."""


field = msgspec.field
force_setattr = msgspec.structs.force_setattr
DecodeError = msgspec.DecodeError  # a ValueError; so is its ValidationError


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` (a ``Record`` or a dataclass) with ``changes`` applied."""
    if isinstance(obj, msgspec.Struct):
        return msgspec.structs.replace(obj, **changes)
    import dataclasses  # the repository model's classes

    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of a ``Record`` or dataclass class, in order."""
    names = getattr(cls, "__struct_fields__", None)
    if names is not None:
        return tuple(names)
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(cls))


def as_dict(obj: Any) -> dict[str, Any]:
    """Field name -> value, one level deep (nested records stay records)."""
    if isinstance(obj, msgspec.Struct):
        return msgspec.structs.asdict(obj)
    return {name: getattr(obj, name) for name in field_names(type(obj))}


def repr_without(*hidden: str) -> Callable[[Any], str]:
    """A ``__repr__`` for a record class that leaves the ``hidden`` fields out."""

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}"
                          for name in type(self).__struct_fields__ if name not in hidden)
        return f"{type(self).__name__}({shown})"

    return __repr__


_decode = msgspec.json.Decoder().decode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_encode = msgspec.json.Encoder().encode


def json_loads(data: bytes | str) -> Any:
    """Parse JSON (``DecodeError``, a ``ValueError``, when it is not JSON)."""
    return _decode(data)


def json_decoder(type_: Any) -> Callable[[bytes], Any]:
    """A reader of JSON straight into ``type_`` (records, ``dict[str, X]``,
    tuples, numbers...), every value's type checked in C as it is read; it
    raises ``DecodeError`` (a ``ValueError``) on the first value that does not
    fit. Unknown object keys are skipped, a record field left out takes its
    default, and ints are taken where floats are asked for."""
    return msgspec.json.Decoder(type_).decode


def json_dumps_sorted(obj: Any) -> bytes:
    """Compact JSON with every object's keys sorted, as UTF-8."""
    return _encode_sorted(obj)


def json_dumps(obj: Any) -> bytes:
    """Compact JSON with keys in the order given, as UTF-8."""
    return _encode(obj)


__all__ = ["DecodeError", "Record", "as_dict", "field", "field_names", "force_setattr",
           "json_decoder", "json_dumps", "json_dumps_sorted", "json_loads", "replace", "repr_without"]
