"""Safe YAML loading with a line number for every field: the only pyyaml user.

Called by ``reconciler.config.loader`` for every repository file. The document
is built straight from the parser's event stream (libyaml's C parser when it is
available), which is faster than pyyaml's composer + constructor and lets us
refuse, with the exact line, everything a repository file must not contain:

- anchors and aliases (the "billion laughs" YAML bomb needs them);
- explicit tags (``!!python/object``, ``!custom``): only plain data is allowed;
- more than one document, duplicate mapping keys, non-scalar keys;
- files over 1 MiB and files that are not UTF-8;
- numbers no field can hold: integers outside 64 bits (a 5,000-digit integer
  would otherwise end in Python's int-parsing limit), NaN and infinities
  (``.nan``, ``.inf``, ``1e999``): no repository field takes them;
- control characters in quoted and block scalars (``"admins\\n"``, ``"\\x00"``,
  ``"\\u202e"``): C0 except tab and newline, DEL, C1, Unicode line/paragraph
  separators and bidirectional controls (Trojan Source). Plain scalars cannot
  hold them, libyaml refuses them raw.

Scalars resolve the way go-yaml and YAML 1.2 do: only ``true``/``false`` are
booleans, ``null``/``~``/empty are null, decimal/octal/hex integers and floats
are numbers, and everything else (``yes``, ``on``, dates, ``8000-8100``) stays
a string.

``load_yaml(data, file)`` returns a ``Document`` (``value`` plus ``lines``, a
map from dotted field path such as ``"tunnel_ips.1"`` to its 1-based line) or a
``Problem`` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.errors import Problem

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 32

try:  # libyaml's C parser: several times faster than the pure-Python one.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how pyyaml was built
    _Loader = yaml.SafeLoader

_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+\Z")
_INT_OCT = re.compile(r"0o[0-7]+\Z")
_INT_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOATS = {
    ".inf": float("inf"), ".Inf": float("inf"), ".INF": float("inf"),
    "+.inf": float("inf"), "+.Inf": float("inf"), "+.INF": float("inf"),
    "-.inf": float("-inf"), "-.Inf": float("-inf"), "-.INF": float("-inf"),
    ".nan": float("nan"), ".NaN": float("nan"), ".NAN": float("nan"),
}
_NUMBER_START = frozenset("0123456789+-.")
# Integers are int64, as in go-yaml; the digit count is bounded before int() runs.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
_MAX_INT_CHARS = 22  # significant digits of an int64: at most 19 decimal, 16 hex, 22 octal
# Tab and newline are text; every other C0 control, DEL, C1, the Unicode line and
# paragraph separators, and bidirectional overrides/isolates (CVE-2021-42574) are not.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029"
                      "\u202a-\u202e\u2066-\u2069]")
_Scalar = yaml.ScalarEvent


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: plain data plus the line of every field path."""

    value: Any
    lines: dict[str, int]


class NumberRefused(ValueError):
    """A plain scalar that is a number no repository field can hold."""

    def __init__(self, text: str, why: str, remedy: str) -> None:
        super().__init__(why)
        self.text, self.why, self.remedy = text, why, remedy


def resolve_plain(text: str) -> Any:
    """Resolve an unquoted scalar (YAML 1.2 core schema, go-yaml compatible).

    Raises ``NumberRefused`` for an integer outside int64 and for NaN or an
    infinity (written as ``.nan``/``.inf`` or overflowing, like ``1e999``)."""
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if text and text[0] in _NUMBER_START:
        if _INT.match(text):
            return _int(text, 10)
        if _FLOAT.match(text):
            value = float(text)
            if value in (_INF, -_INF):
                raise NumberRefused(text, f"{_short(text)} is too large for a number",
                                    "write a value within the field's range")
            return value
        if text in _SPECIAL_FLOATS:
            raise NumberRefused(text, f"{text} (not a number or infinite) is not allowed",
                                "write a finite number within the field's range")
        if _INT_OCT.match(text):
            return _int(text, 8)
        if _INT_HEX.match(text):
            return _int(text, 16)
    return text


_INF = float("inf")


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


def _int(text: str, base: int) -> int:
    digits = text.lstrip("+-")
    if base != 10:
        digits = digits[2:]
    digits = digits.lstrip("0")
    # bound the text first: int() of a 5,000-digit string raises (or is slow)
    value = int(digits or "0", base) if len(digits) <= _MAX_INT_CHARS else INT_MAX + 1
    if text.startswith("-"):
        value = -value
    if not INT_MIN <= value <= INT_MAX:
        raise NumberRefused(text, f"integer {_short(text)} does not fit in 64 bits",
                            "write a value within the field's range")
    return value


class _Refused(Exception):
    """Internal: stops the event walk; turned into a ``Problem`` by ``load_yaml``."""

    def __init__(self, line: int, code: str, message: str, remedy: str) -> None:
        super().__init__(message)
        self.line, self.code, self.message, self.remedy = line, code, message, remedy


def _refuse_event(event: Any) -> None:
    line = event.start_mark.line + 1
    anchor = getattr(event, "anchor", None)
    if isinstance(event, yaml.AliasEvent):
        raise _Refused(line, "E-YAML-ALIAS", f"alias *{anchor} is not allowed",
                       "write the value out in full; anchors and aliases are refused "
                       "(YAML-bomb defence)")
    if anchor is not None:
        raise _Refused(line, "E-YAML-ALIAS", f"anchor &{anchor} is not allowed",
                       "remove the anchor and write values out in full; anchors and aliases "
                       "are refused (YAML-bomb defence)")
    tag = getattr(event, "tag", None)
    if tag is not None and tag != "!":
        raise _Refused(line, "E-YAML-TAG", f"tag {tag} is not allowed",
                       "remove the tag; repository files hold plain data only")


def _number_refused(event: Any, exc: NumberRefused) -> _Refused:
    return _Refused(event.start_mark.line + 1, "E-YAML-NUMBER", exc.why, exc.remedy)


def _plain(event: Any) -> Any:
    try:
        return resolve_plain(event.value)
    except NumberRefused as exc:
        raise _number_refused(event, exc) from None


def _styled(event: Any) -> str:
    """A quoted or block scalar: a string, refused if it holds a control character."""
    text: str = event.value
    found = _CONTROL.search(text)
    if found is not None:
        char = found.group()
        line = event.start_mark.line + 1 + text.count("\n", 0, found.start())
        if event.style in ("|", ">"):  # the block's text starts on the line after the marker
            line += 1
        raise _Refused(line, "E-YAML-CONTROL-CHAR",
                       f"control character U+{ord(char):04X} in a string",
                       "remove it; strings hold printable text (tab and newline only in "
                       "free text such as description)")
    return text


class _Builder:
    """Builds plain data from parser events, recording each path's line."""

    def __init__(self, next_event: Callable[[], Any]) -> None:
        self.next = next_event
        self.lines: dict[str, int] = {}

    def node(self, event: Any, path: str, depth: int) -> Any:
        cls = type(event)
        if cls is yaml.ScalarEvent:
            if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                _refuse_event(event)
            if event.implicit[0] and not event.style:
                return _plain(event)
            return _styled(event)
        if depth > MAX_DEPTH:
            raise _Refused(event.start_mark.line + 1, "E-YAML-DEPTH",
                           f"nesting deeper than {MAX_DEPTH} levels",
                           "flatten the document; no repository kind nests this deep")
        if cls is yaml.MappingStartEvent:
            if event.anchor is not None or event.tag is not None:
                _refuse_event(event)
            return self.mapping(path, depth)
        if cls is yaml.SequenceStartEvent:
            if event.anchor is not None or event.tag is not None:
                _refuse_event(event)
            return self.sequence(path, depth)
        _refuse_event(event)  # AliasEvent
        raise AssertionError(f"unexpected YAML event {cls.__name__}")  # pragma: no cover

    def mapping(self, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prefix = path + "." if path else ""
        lines = self.lines
        while True:
            key_event = self.next()
            if type(key_event) is yaml.MappingEndEvent:
                return out
            line = key_event.start_mark.line + 1
            if type(key_event) is not yaml.ScalarEvent:
                if isinstance(key_event, yaml.AliasEvent):
                    _refuse_event(key_event)
                raise _Refused(line, "E-YAML-KEY", "mapping keys must be plain scalars",
                               "use a plain name as the key")
            if key_event.anchor is not None or (key_event.tag not in (None, "!")):
                _refuse_event(key_event)
            key = _styled(key_event) if key_event.style else key_event.value
            if key in out:
                raise _Refused(line, "E-YAML-DUPKEY", f"duplicate key {key!r}",
                               "keep one of the two entries")
            child = prefix + key
            lines[child] = line
            value = self.next()
            # Inlined common case (a plain, untagged scalar value): ~30% faster loads.
            if (type(value) is _Scalar and not value.style and value.anchor is None
                    and value.tag is None):
                try:
                    out[key] = resolve_plain(value.value)
                except NumberRefused as exc:
                    raise _number_refused(value, exc) from None
            else:
                out[key] = self.node(value, child, depth + 1)

    def sequence(self, path: str, depth: int) -> list[Any]:
        out: list[Any] = []
        prefix = path + "." if path else ""
        lines = self.lines
        while True:
            event = self.next()
            if type(event) is yaml.SequenceEndEvent:
                return out
            child = prefix + str(len(out))
            lines[child] = event.start_mark.line + 1
            out.append(self.node(event, child, depth + 1))


def _walk(text: str) -> Document:
    loader = _Loader(text)
    try:
        next_event = loader.get_event
        next_event()  # StreamStartEvent
        event = next_event()
        if type(event) is yaml.StreamEndEvent:
            return Document(None, {"": 1})
        builder = _Builder(next_event)
        body = next_event()  # after DocumentStartEvent
        builder.lines[""] = body.start_mark.line + 1
        value = builder.node(body, "", 0)
        next_event()  # DocumentEndEvent
        event = next_event()
        if type(event) is not yaml.StreamEndEvent:
            raise _Refused(event.start_mark.line + 1, "E-YAML-MULTIDOC",
                           "more than one YAML document in the file",
                           "keep one document per file (remove the extra '---')")
        return Document(value, builder.lines)
    finally:
        loader.dispose()


def load_yaml(data: bytes, file: str) -> Document | Problem:
    """Parse one repository file. Never raises for bad input: returns a Problem."""
    if len(data) > MAX_BYTES:
        return Problem(file, 1, "E-FILE-TOO-LARGE",
                       f"file is {len(data)} bytes; the limit is {MAX_BYTES} (1 MiB)",
                       "split the content or remove what does not belong in the repository")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return Problem(file, line, "E-FILE-ENCODING",
                       f"file is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                       "save the file as UTF-8")
    text = text.removeprefix("\ufeff")
    try:
        return _walk(text)
    except _Refused as exc:
        return Problem(file, exc.line, exc.code, exc.message, exc.remedy)
    except yaml.reader.ReaderError as exc:  # a raw non-printable character in the stream
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return Problem(file, line, "E-YAML-CONTROL-CHAR",
                       f"control character U+{ord(char):04X} in the file",
                       "remove it; YAML files hold printable text")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        return Problem(file, line, "E-YAML-SYNTAX", f"YAML syntax error: {what}",
                       "fix the YAML syntax (indentation, quoting, colons)")
    except yaml.YAMLError as exc:
        return Problem(file, 1, "E-YAML-SYNTAX", f"YAML error: {exc}",
                       "fix the YAML syntax (indentation, quoting, colons)")
