"""JSON from peers and files, read within bounds: size, nesting depth, encoding.

``loads(data, what=..., max_bytes=..., max_depth=...)`` is the one JSON reader
for anything a peer, a server or a file on disk supplies: the agent (manifests,
the feed, certificates, its own state and config), ``pki`` (envelopes,
manifest payloads) and the hub (request bodies). The standard library parser
recurses once per nesting level, so a 200,000-deep document ends in a
``RecursionError``; here the depth is measured first, in linear time, over the
document with its strings removed, and a document over ``max_depth`` is
refused before it is parsed (the scan works on the bytes in C-speed passes). Every refusal is an ``InputRefused`` whose
``reason`` is stable (``too-large``, ``too-deep``, ``not-json``) and whose
message names ``what`` was read. The document is parsed by ``structs.json_loads``
(msgspec, 2-3x faster on the agent's megabyte manifests and state files); what
that stricter parser does not take (``NaN``, lone surrogate escapes, numbers
out of its range, anything malformed) goes to the standard library's parser,
which accepts or refuses it exactly as before and names the line and column.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.errors import InputRefused
from reconciler.structs import json_loads

DEFAULT_MAX_DEPTH = 64
_KEEP_BRACKETS_AND_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_PEEL_ROUNDS = 16  # real documents are shallower; deeper ones are counted
_OPEN = frozenset(b"[{")


def nesting_depth(data: bytes) -> int:
    """The deepest ``[``/``{`` nesting of ``data`` outside strings.

    Linear, in C-speed passes (a 10,000-peer document is megabytes, mostly
    strings): escaped backslashes, then escaped quotes are dropped (runs of
    backslashes pair up left to right, as in JSON), so every quote left
    delimits a string; everything but brackets and quotes is dropped;
    adjacent quotes are dropped in pairs (an empty string, or the end of one
    string and the start of the next: the quotes after them still alternate),
    and what remains alternates outside/inside strings between quotes. The
    brackets outside strings are then peeled: each round removes every
    innermost pair at once, so the number of rounds is the depth (a hostile
    document falls back to one counting pass after ``_PEEL_ROUNDS``)."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = data.translate(None, _KEEP_BRACKETS_AND_QUOTES).replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    rounds = 0
    while brackets and rounds < _PEEL_ROUNDS:
        peeled = brackets.replace(b"[]", b"0").replace(b"{}", b"0").replace(b"0", b"")
        if len(peeled) == len(brackets):
            break  # unbalanced: not JSON; counted below, refused by the parser
        brackets, rounds = peeled, rounds + 1
    depth = deepest = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return rounds + deepest


def check(raw: bytes, *, what: str, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Refuse (``InputRefused``) more than ``max_bytes`` bytes or nesting deeper
    than ``max_depth``, without parsing: for a caller whose own typed reader
    parses the bytes next (``agent.memory.Memory.decode``)."""
    if len(raw) > max_bytes:
        raise InputRefused("too-large", f"{what}: {len(raw)} bytes is over the limit of "
                                        f"{max_bytes} bytes")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise InputRefused("too-deep", f"{what}: JSON nested {depth} levels deep, over the "
                                       f"limit of {max_depth}")


def loads(data: bytes | str, *, what: str, max_bytes: int,
          max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse ``data`` as JSON, refusing more than ``max_bytes`` bytes, nesting
    deeper than ``max_depth``, invalid UTF-8 and invalid JSON (including
    ``NaN``/``Infinity``, which JSON does not have)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    check(raw, what=what, max_bytes=max_bytes, max_depth=max_depth)
    try:  # the fast parser (``structs``) first; it is stricter than the standard one
        return json_loads(raw)
    except ValueError:  # not JSON, or JSON it does not take
        return _standard_loads(raw, what)


def _standard_loads(raw: bytes, what: str) -> Any:
    """The standard library's parser: it decides what the fast one refused,
    and names why it refuses (line and column)."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InputRefused("not-json", f"{what}: not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InputRefused("not-json", f"{what}: not JSON: {exc.msg} at line {exc.lineno} "
                                       f"column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # a constant, or an int over 4,300 digits
        raise InputRefused("not-json", f"{what}: not acceptable JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
