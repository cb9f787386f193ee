"""JSON Schema checks for repository files: the only jsonschema user.

Called by ``reconciler.config.loader`` once per parsed file (results are cached
by blob id there). The schemas live in ``schemas/*.schema.json`` (Draft 2020-12);
``schema_dir()`` finds them in the source tree or in the installed package.

Speed: jsonschema needs ~80 µs per device document, too slow for 10,000
devices in a cold ``meshops validate``. So each schema is also compiled into a
small closure tree (``_compile``) that answers only "valid or not" for the
keywords our schemas use. A document the fast check accepts is valid; for any
other document the full jsonschema validator runs and reports every error, so
jsonschema alone decides the messages. ``tests/config/test_schema.py`` checks
that both always agree.

Each jsonschema error becomes a ``Problem`` whose line is that of the offending
field (the extra key for an unknown field), with a stable code.

Both checks read two keywords more strictly than Python's jsonschema does by
default, and agree with each other on it:

- ``pattern`` is ECMA-262, as JSON Schema specifies: ``$`` is the end of the
  string. Python's ``$`` also matches before a final newline, which let
  ``"admins\\n"`` through; ``ecma_regex`` compiles ``$`` as ``\\Z``.
- ``integer`` is an ``int`` and never a ``bool`` or a float (``22.0`` is refused
  rather than handed to code that expects an int); ``number`` is an ``int`` or a
  finite float, never a bool, NaN or an infinity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from reconciler.errors import Problem

KINDS = ("Mesh", "Organization", "User", "Device", "Policy")
_FILES = {kind: f"{kind.lower()}.schema.json" for kind in KINDS}

# Field-specific codes for pattern errors, keyed by (kind, path without list indices).
_FIELD_CODES: dict[tuple[str, str], tuple[str, str]] = {
    ("Device", "wireguard.public_key"): (
        "E-KEY-INVALID", "use the 44-character base64 key printed by `wg pubkey`"),
    ("Device", "identity.public_key"): (
        "E-IDENTITY-KEY-INVALID",
        "use the base64 Ed25519 public key printed by `meshops agent init`"),
    ("Device", "endpoint"): ("E-ENDPOINT-INVALID", "write the endpoint as host:port"),
    ("Mesh", "stun_servers"): ("E-ENDPOINT-INVALID", "write each STUN server as host:port"),
    ("Policy", "rules.src"): (
        "E-SELECTOR-INVALID",
        "use *, group:NAME, tag:NAME, device:NAME, user:NAME, route:CIDR or internet"),
    ("Policy", "rules.dst"): (
        "E-SELECTOR-INVALID",
        "use *, group:NAME, tag:NAME, device:NAME, user:NAME, route:CIDR or internet"),
}
_NAME_REMEDY = ("use a DNS label: lowercase letters, digits and '-', at most 63 characters, "
                "no dots or slashes")

DNS_LABEL_PATTERN = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

Validator = Callable[[Any], bool]


def schema_dir() -> Path:
    """The directory holding ``*.schema.json``: packaged copy, else the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent.parent / "schemas"):
        if (candidate / "device.schema.json").is_file():
            return candidate
    raise FileNotFoundError(f"meshops JSON schemas not found next to {here}")


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (as data) for ``kind``."""
    return json.loads((schema_dir() / _FILES[kind]).read_text(encoding="utf-8"))


@cache
def _full_validator(kind: str) -> Any:
    return ecma_validator(load_schema(kind))


def ecma_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` with JSON Schema's own semantics where
    Python's differ: ECMA-262 ``$`` (``ecma_regex``), and strict ``integer`` /
    ``number`` (no bools, no floats as integers, no NaN). Also used by tests for
    the manifest schema."""
    # Imported here: jsonschema costs ~0.13 s to import, and a valid repository never
    # needs it (the fast path accepts every valid document).
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)

    def pattern(validator: Any, arg: str, instance: Any, _schema: Any) -> Any:
        if validator.is_type(instance, "string") and not ecma_regex(arg).search(instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {arg!r}")

    checker = base.TYPE_CHECKER.redefine_many({
        "integer": lambda _c, v: _TYPES["integer"](v),
        "number": lambda _c, v: _TYPES["number"](v),
    })
    cls = jsonschema.validators.extend(base, validators={"pattern": pattern},
                                       type_checker=checker)
    return cls(schema)


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile a JSON Schema (ECMA-262) ``pattern`` for Python's ``re``: an unescaped
    ``$`` outside a character class becomes ``\\Z``, the true end of the string."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i: i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[i + 1: i + 2] == "]":  # "[]...]" : a literal ] first
                out.append("[]")
                i += 2
                continue
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out))


@cache
def fast_validator(kind: str) -> Validator | None:
    """A closure answering ``is_valid`` quickly, or None if the schema uses a keyword
    the compiler does not know (then jsonschema alone is used)."""
    schema = load_schema(kind)
    try:
        return _compile(schema, schema)
    except _Unsupported:
        return None


def check(kind: str, value: Any, file: str, lines: Mapping[str, int]) -> list[Problem]:
    """Every schema problem of one document (empty when valid)."""
    fast = fast_validator(kind)
    if fast is not None and fast(value):
        return []
    problems = []
    for error in _full_validator(kind).iter_errors(value):
        problems.extend(_to_problems(kind, error, file, lines))
    problems.sort(key=lambda p: (p.line, p.code, p.message))
    return problems


def is_valid(kind: str, value: Any) -> bool:
    """The full jsonschema verdict (used by tests to cross-check the fast path)."""
    return bool(_full_validator(kind).is_valid(value))


def _line(lines: Mapping[str, int], path: str) -> int:
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return lines.get("", 1)


def _to_problems(kind: str, error: Any, file: str, lines: Mapping[str, int]) -> list[Problem]:
    parts = [str(p) for p in error.absolute_path]
    path = ".".join(parts)
    field = ".".join(p for p in parts if not p.isdigit())
    shown = path or "(top level)"
    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extras = sorted(k for k in error.instance if k not in allowed)
        if error.schema.get("additionalProperties") is False and extras:
            prefix = path + "." if path else ""
            return [Problem(file, _line(lines, prefix + key), "E-SCHEMA-UNKNOWN-FIELD",
                            f"unknown field {key!r} in {kind}{' ' + path if path else ''}",
                            "remove it or fix its spelling; allowed: "
                            + ", ".join(sorted(allowed)))
                    for key in extras]
    line = _line(lines, path)
    if validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else "a field"
        return [Problem(file, line, "E-SCHEMA-REQUIRED", f"{shown}: required field {name!r} "
                        "is missing", f"add {name!r}")]
    if validator == "type":
        remedy = f"use a value of type {error.validator_value}"
        if type(error.instance) is float and "integer" in error.validator_value:
            remedy = "write a whole number without a decimal point"
        elif type(error.instance) is bool and error.validator_value != "boolean":
            remedy += " (true and false are booleans, not numbers or strings)"
        return [Problem(file, line, "E-SCHEMA-TYPE", f"{shown}: {error.message}", remedy)]
    if validator == "pattern":
        if error.validator_value == DNS_LABEL_PATTERN:  # names, tags, owners, members
            return [Problem(file, line, "E-NAME-INVALID",
                            f"{shown}: {error.instance!r} is not a DNS label", _NAME_REMEDY)]
        code, remedy = _FIELD_CODES.get((kind, field), ("E-SCHEMA-FORMAT", ""))
        return [Problem(file, line, code, f"{shown}: {error.instance!r} is malformed",
                        remedy or f"match the pattern {error.validator_value}")]
    if validator in ("enum", "const"):
        return [Problem(file, line, "E-SCHEMA-VALUE", f"{shown}: {error.message}",
                        "use one of the allowed values")]
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                     "minItems", "maxItems", "minLength", "maxLength"):
        return [Problem(file, line, "E-SCHEMA-RANGE", f"{shown}: {error.message}",
                        "bring the value within the allowed range")]
    if validator == "uniqueItems":
        return [Problem(file, line, "E-SCHEMA-DUPLICATE", f"{shown}: {error.message}",
                        "remove the repeated entry")]
    if validator == "anyOf" and error.context:
        return _to_problems(kind, _best(error.context), file, lines)
    return [Problem(file, line, "E-SCHEMA", f"{shown}: {error.message}",
                    "see docs/repo-format.md")]


def _best(errors: Any) -> Any:
    """Pick the most telling branch error of an anyOf (a non-type error if any)."""
    errors = list(errors)
    for error in errors:
        if error.validator != "type":
            return error
    return errors[0]


# --- the fast-path compiler -------------------------------------------------


class _Unsupported(Exception):
    """The schema uses a keyword the fast compiler does not implement."""


_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$defs", "default",
                          "examples", "$comment"})


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "integer": lambda v: type(v) is int,  # not bool, not 22.0
    "number": lambda v: type(v) is int or (type(v) is float and math.isfinite(v)),
}


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise _Unsupported(ref)
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _json_equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    return a == b


def _compile(schema: Any, root: dict[str, Any]) -> Validator:
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    checks: list[Validator] = []
    for key, arg in schema.items():
        if key in _ANNOTATIONS or key in ("properties", "additionalProperties", "items"):
            continue
        if key == "type":
            types = [arg] if isinstance(arg, str) else list(arg)
            fns = [_TYPES[t] for t in types]
            if len(fns) == 1:
                checks.append(fns[0])
            else:
                checks.append(lambda v, fns=fns: any(f(v) for f in fns))
        elif key == "const":
            checks.append(lambda v, c=arg: _json_equal(v, c))
        elif key == "enum":
            checks.append(lambda v, opts=arg: any(_json_equal(v, o) for o in opts))
        elif key == "pattern":
            rx = ecma_regex(arg)
            checks.append(lambda v, rx=rx: type(v) is not str or rx.search(v) is not None)
        elif key in ("minLength", "maxLength"):
            op = (lambda n, a: n >= a) if key == "minLength" else (lambda n, a: n <= a)
            checks.append(lambda v, a=arg, op=op: type(v) is not str or op(len(v), a))
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            ops = {"minimum": lambda x, a: x >= a, "maximum": lambda x, a: x <= a,
                   "exclusiveMinimum": lambda x, a: x > a,
                   "exclusiveMaximum": lambda x, a: x < a}
            checks.append(lambda v, a=arg, op=ops[key]:
                          type(v) not in (int, float) or op(v, a))
        elif key in ("minItems", "maxItems"):
            op = (lambda n, a: n >= a) if key == "minItems" else (lambda n, a: n <= a)
            checks.append(lambda v, a=arg, op=op: type(v) is not list or op(len(v), a))
        elif key == "uniqueItems":
            if arg:
                checks.append(lambda v: type(v) is not list or _unique(v))
        elif key == "required":
            checks.append(lambda v, req=tuple(arg): type(v) is not dict
                          or all(r in v for r in req))
        elif key == "propertyNames":
            sub = _compile(arg, root)
            checks.append(lambda v, sub=sub: type(v) is not dict or all(sub(k) for k in v))
        elif key == "$ref":  # local, non-recursive refs only (all our schemas)
            checks.append(_compile(_resolve(arg, root), root))
        elif key in ("anyOf", "oneOf", "allOf"):
            subs = [_compile(s, root) for s in arg]
            if key == "anyOf":
                checks.append(lambda v, subs=subs: any(s(v) for s in subs))
            elif key == "allOf":
                checks.append(lambda v, subs=subs: all(s(v) for s in subs))
            else:
                checks.append(lambda v, subs=subs: sum(1 for s in subs if s(v)) == 1)
        else:
            raise _Unsupported(key)
    if "properties" in schema or "additionalProperties" in schema:
        props = {k: _compile(s, root) for k, s in schema.get("properties", {}).items()}
        extra_schema = schema.get("additionalProperties", True)
        extra = None if extra_schema is True else _compile(extra_schema, root)

        def check_object(v: Any, props: dict[str, Validator] = props,
                         extra: Validator | None = extra) -> bool:
            if type(v) is not dict:
                return True
            for k, item in v.items():
                sub = props.get(k)
                if sub is not None:
                    if not sub(item):
                        return False
                elif extra is not None and not extra(item):
                    return False
            return True

        checks.append(check_object)
    if "items" in schema:
        item = _compile(schema["items"], root)

        def check_items(v: Any, item: Validator = item) -> bool:
            if type(v) is not list:
                return True
            for x in v:
                if not item(x):
                    return False
            return True

        checks.append(check_items)
    if len(checks) == 1:
        return checks[0]

    def check_all(v: Any, checks: tuple[Validator, ...] = tuple(checks)) -> bool:
        for c in checks:
            if not c(v):
                return False
        return True

    return check_all


def _unique(items: list[Any]) -> bool:
    try:
        keys = [json.dumps(x, sort_keys=True) if type(x) in (dict, list) else (type(x) is bool, x)
                for x in items]
        return len(set(keys)) == len(keys)
    except TypeError:
        return False
