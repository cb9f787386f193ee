"""YAML the way sops (go-yaml v3) reads and writes it, for ``reconciler.secrets`` only.

``reconciler.secrets.sops`` calls :func:`load` and :func:`dump`. The org
repository has its own YAML loader (``reconciler.config.yamlload``); SOPS files
need go-yaml's rules instead, because the MAC covers the *typed* values:

* plain scalars resolve like go-yaml v3 into ``interface{}``: only
  ``true/True/TRUE`` and ``false/False/FALSE`` are booleans, ``0755`` is octal,
  ``1_000`` is an int, ``yes``/``no``/``on`` stay strings, and unquoted
  timestamps become :class:`~reconciler.secrets.values.Timestamp` (a ``str``
  in Go's RFC 3339 form: sops 3.11 encrypts them as ``type:time``);
* full-line comments are kept as :class:`~reconciler.secrets.values.Comment`
  keys (in mappings) or items (in lists), attached to the innermost collection
  whose items sit at or left of the comment's column - where go-yaml/sops puts
  them, so their key path (the encryption AAD) matches sops. Trailing comments
  after a value on the same line are dropped.

The dumper writes block style with 4-space indentation like sops 3.9+, quoting
every string that go-yaml or a YAML 1.1 reader would read as something else.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import SecretsError
from reconciler.secrets.values import Comment, Timestamp

_PLAIN = "!meshops/go-plain"
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_FLOAT = re.compile(
    r"^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|inf|infinity|nan)$", re.IGNORECASE
)
_MAP: dict[str, object] = {}
for _words, _val in (
    (("true", "True", "TRUE"), True),
    (("false", "False", "FALSE"), False),
    (("", "~", "null", "Null", "NULL"), None),
    ((".nan", ".NaN", ".NAN"), math.nan),
    ((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    (("-.inf", "-.Inf", "-.INF"), -math.inf),
):
    for _w in _words:
        _MAP[_w] = _val
_INT64 = (-(2**63), 2**64 - 1)  # ParseInt, then ParseUint


_BASE = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader  # libyaml: ~10x faster


class _Loader(_BASE):  # type: ignore[valid-type,misc]
    """SafeLoader whose plain scalars all carry one marker tag; :func:`go_resolve` types them."""


_Loader.yaml_implicit_resolvers = {}
_Loader.add_implicit_resolver(_PLAIN, re.compile(r"(?s).*"), None)


def _go_int(text: str) -> int | None:
    sign, body = "", text
    if body[:1] in "+-":
        sign, body = body[0], body[1:]
    low = body.lower()
    if re.fullmatch(r"0x[0-9a-f]+|0b[01]+|0o[0-7]+", low):
        value = int(body, 0)
    elif re.fullmatch(r"0[0-7]+", body):
        value = int(body, 8)  # Go's ParseInt(s, 0, 64): a leading 0 means octal
    elif re.fullmatch(r"0|[1-9][0-9]*", body):
        value = int(body, 10)
    else:
        return None
    value = -value if sign == "-" else value
    return value if _INT64[0] <= value <= _INT64[1] else None


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:[Tt](\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,](\d+))?(Z|[+-]\d{2}:\d{2}))"
    r"|(?: (\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,](\d+))?))?",
    re.ASCII,
)
_DIGITS = frozenset("0123456789")


def go_timestamp(text: str) -> Timestamp | None:
    """go-yaml's ``parseTimestamp`` (its four ``time.Parse`` layouts), as MarshalText text."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    g = match.groups()
    year, month, day = int(g[0]), int(g[1]), int(g[2])
    if g[3] is not None:
        hms, frac, zone = g[3:6], g[6], g[7]
    elif g[8] is not None:
        hms, frac, zone = g[8:11], g[11], "Z"
    else:
        hms, frac, zone = ("0", "0", "0"), None, "Z"
    hour, minute, second = (int(x) for x in hms)
    try:
        date(year, month, day)
    except ValueError:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    if zone != "Z" and (int(zone[1:3]) > 24 or int(zone[4:6]) > 59):
        return None
    if zone == "+00:00" or zone == "-00:00":
        zone = "Z"
    nanos = (frac or "")[:9].rstrip("0")
    fraction = f".{nanos}" if nanos else ""
    return Timestamp(
        f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"
    )


def go_resolve(text: str) -> object:
    """Type a plain scalar like go-yaml v3's ``resolve`` decoding into ``interface{}``."""
    if text in _MAP:
        return _MAP[text]
    first = text[:1]
    if first in _DIGITS:
        stamp = go_timestamp(text)
        if stamp is not None:
            return stamp
    if first == ".":
        if _GO_FLOAT.match(text):
            return float(text)
    elif first in _DIGITS or first in ("+", "-"):
        plain = text.replace("_", "")
        if plain:
            number = _go_int(plain)
            if number is not None:
                return number
            if _YAML_FLOAT.match(plain):
                return float(plain)
    return text


def _scalar(node: ScalarNode) -> object:
    if node.tag == _PLAIN:
        return go_resolve(node.value)
    if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"):
        return go_resolve(node.value)
    return node.value


def _comments(text: str) -> list[tuple[int, int, str]]:
    found = []
    for number, line in enumerate(text.splitlines()):
        stripped = line.lstrip(" ")
        if stripped.startswith("#"):
            found.append((number, len(line) - len(stripped), stripped[1:]))
    return found


class _Pairs(list):  # type: ignore[type-arg]
    """A mapping under construction: ordered (key, value) pairs, comments included."""


class _Builder:
    """Turns a composed node tree into dicts/lists and places full-line comments."""

    def __init__(self, comments: list[tuple[int, int, str]]) -> None:
        self.spans: list[tuple[int, int, int, int, Any, list[int]]] = []
        self.scalars: list[tuple[int, int, int]] = []  # multi-line scalars: start, end, end col
        self.comments = comments

    def build(self, node: Node, depth: int = 0, owner: int | None = None) -> object:
        """Convert ``node``; ``owner`` is the line of the key or ``-`` that holds it."""
        if isinstance(node, ScalarNode):
            if node.end_mark.line > node.start_mark.line:
                self.scalars.append(
                    (node.start_mark.line, node.end_mark.line, node.end_mark.column)
                )
            return _scalar(node)
        if isinstance(node, SequenceNode):
            items = [self.build(child, depth + 1, child.start_mark.line) for child in node.value]
            if node.value and not node.flow_style:
                lines = [child.start_mark.line for child in node.value]
                col = node.start_mark.column  # the first "-"
                self._span(node, owner, col, depth, items, lines)
            return items
        if isinstance(node, MappingNode):
            pairs = _Pairs()
            for key_node, value_node in node.value:
                key = self.build(key_node, depth + 1)
                if not isinstance(key, str):
                    raise SecretsError(
                        f"line {key_node.start_mark.line + 1}: only string keys are supported "
                        f"in sops files, got {key!r}"
                    )
                pairs.append((key, self.build(value_node, depth + 1, key_node.start_mark.line)))
            if node.value and not node.flow_style:
                lines = [k.start_mark.line for k, _ in node.value]
                col = node.value[0][0].start_mark.column
                self._span(node, owner, col, depth, pairs, lines)
            return pairs
        raise SecretsError(f"unsupported YAML node {node.tag}")

    def _span(
        self, node: Node, owner: int | None, col: int, depth: int, items: Any, lines: list[int]
    ) -> None:
        # a comment between "key:" and the first nested item belongs to the nested block
        start = node.start_mark.line if owner is None else min(owner, node.start_mark.line)
        self.spans.append((start, node.end_mark.line, col, depth, items, lines))

    def place_comments(self) -> None:
        for line, col, text in self.comments:
            if any(s < line and (line < e or (line == e and ec > col)) for s, e, ec in self.scalars):
                continue  # a '#' line inside a block or quoted scalar is content
            best = None
            for span in self.spans:
                start, end, item_col, depth, items, lines = span
                root = depth == 0
                fits = (root or start <= line <= end) and item_col <= col
                if fits and (best is None or (item_col, depth) > (best[2], best[3])):
                    best = span
            if best is None:
                continue
            items, lines = best[4], best[5]
            index = next((i for i, ln in enumerate(lines) if ln > line), len(lines))
            entry = (Comment(text), None) if isinstance(items, _Pairs) else Comment(text)
            items.insert(index, entry)
            lines.insert(index, line)


def _to_dicts(value: object) -> object:
    if isinstance(value, _Pairs):
        return {k: _to_dicts(v) for k, v in value}
    if isinstance(value, list):
        return [_to_dicts(v) for v in value]
    return value


def load(text: str, *, keep_comments: bool = True) -> dict[str, object]:
    """Parse one YAML document whose root is a mapping, with go-yaml typing.

    Raises :class:`SecretsError` on a syntax error, a non-mapping root,
    several documents or a non-string key.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise SecretsError(f"not valid YAML: {exc}") from exc
    if len(nodes) != 1 or not isinstance(nodes[0], MappingNode):
        raise SecretsError("a sops YAML file must hold exactly one document whose root is a mapping")
    builder = _Builder(_comments(text) if keep_comments else [])
    tree = builder.build(nodes[0])
    builder.place_comments()
    result = _to_dicts(tree)
    assert isinstance(result, dict)
    return result


# ---------------------------------------------------------------- dumping

# YAML-printable text without the extra line breaks (NEL, LS, PS) YAML readers split on
_PRINTABLE = re.compile("[\t\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
_YAML11 = yaml.SafeLoader("")
_PLAIN_OK = re.compile(r"^[^-?:,\[\]{}#&*!|>'\"%@`\s](?:[^\n\r\t]*[^\s:])?\Z")


def _double_quoted(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000 \
                or code in (0xFEFF, 0xFFFE, 0xFFFF, 0x2028, 0x2029):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _reads_as_str(text: str) -> bool:
    if type(go_resolve(text)) is not str or text.startswith(("---", "...")):
        return False
    tag = _YAML11.resolve(ScalarNode, text, (True, False))
    return bool(tag == "tag:yaml.org,2002:str")


def _string(text: str, indent: int, *, block: bool = True) -> str:
    if block and "\n" in text and _PRINTABLE.fullmatch(text) and text.strip("\n") \
            and not text.startswith((" ", "\t", "\n")) \
            and not any(line.endswith((" ", "\t")) for line in text.split("\n")):
        body = text.rstrip("\n")
        trailing = len(text) - len(body)
        chomp = "-" if trailing == 0 else ("" if trailing == 1 else "+")
        pad = " " * (indent + 4)
        lines = [pad + line if line else "" for line in text.split("\n")[: body.count("\n") + 1]]
        extra = ["" for _ in range(trailing - 1)] if chomp == "+" else []
        return "|" + chomp + "\n" + "\n".join(lines + extra)
    if _PLAIN_OK.match(text) and ": " not in text and " #" not in text \
            and _PRINTABLE.fullmatch(text) and _reads_as_str(text):
        return text
    return _double_quoted(text)


def scalar_text(value: object, indent: int = 0) -> str:
    """One scalar in YAML syntax that go-yaml reads back as the same typed value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, Timestamp) and go_timestamp(value) == value:
        return str(value)  # unquoted, so go-yaml reads a time again
    if isinstance(value, str):
        return _string(value, indent)
    if isinstance(value, bytes):
        return _string(value.decode("utf-8", "replace"), indent)
    raise SecretsError(f"cannot write a {type(value).__name__} value as YAML")


def _emit(value: object, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, Comment):
                out.append(f"{pad}#{key.text}")
                continue
            head = f"{pad}{_string(key, indent, block=False)}:"
            if _nonempty_collection(item):
                out.append(head)
                _emit(item, indent + 4, out)
            else:
                out.append(f"{head} {_leaf(item, indent)}")
        return
    assert isinstance(value, list)
    for item in value:
        if isinstance(item, Comment):
            out.append(f"{pad}#{item.text}")
        elif _nonempty_collection(item):
            nested: list[str] = []
            _emit(item, indent + 2, nested)
            first = next(i for i, line in enumerate(nested) if not line.lstrip().startswith("#"))
            out.extend(nested[:first])
            out.append(f"{pad}- {nested[first][indent + 2:]}")
            out.extend(nested[first + 1:])
        else:
            out.append(f"{pad}- {_leaf(item, indent)}")


def _nonempty_collection(value: object) -> bool:
    if isinstance(value, dict):
        return any(not isinstance(k, Comment) for k in value)
    return isinstance(value, list) and bool(value)


def _leaf(value: object, indent: int) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return scalar_text(value, indent)


def dump(doc: dict[str, object]) -> str:
    """Write a mapping (Comment keys/items become ``#`` lines) as block YAML."""
    out: list[str] = []
    _emit(doc, 0, out)
    return "\n".join(out) + "\n" if out else "{}\n"
