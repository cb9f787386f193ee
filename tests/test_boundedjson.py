"""reconciler.boundedjson: every refusal has its reason, valid JSON passes."""

import json

import pytest

from reconciler.boundedjson import loads, nesting_depth
from reconciler.errors import InputRefused


def test_valid_document_round_trips():
    doc = {"a": [1, 2, {"b": "x[y{z"}], "c": None, "d": "\\\"]]]"}
    assert loads(json.dumps(doc).encode(), what="t", max_bytes=1000) == doc


@pytest.mark.parametrize("depth", [65, 1000, 200_000])
def test_deep_arrays_and_objects_are_refused_without_recursion(depth):
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        data = (opener * depth + "1" + closer * depth).encode()
        with pytest.raises(InputRefused) as err:
            loads(data, what="manifest from https://hub", max_bytes=10**7)
        assert err.value.reason == "too-deep"
        assert "manifest from https://hub" in str(err.value)


def test_brackets_inside_strings_do_not_count():
    data = json.dumps({"s": "[" * 500 + "{" * 500}).encode()
    assert nesting_depth(data) == 1
    assert loads(data, what="t", max_bytes=10**6)["s"].startswith("[[")


def test_escaped_quotes_do_not_end_a_string():
    data = b'{"s": "\\"[[[[\\"", "t": [[1]]}'
    assert nesting_depth(data) == 3


@pytest.mark.parametrize("data,reason", [
    (b"x" * 101, "too-large"),
    (b"{\"a\": NaN}", "not-json"),
    (b"[Infinity]", "not-json"),
    (b"\xff\xfe[]", "not-json"),
    (b"{\"a\": 1", "not-json"),
    (b"9" * 5000, "not-json"),
])
def test_refusals(data, reason):
    limit = 100 if reason == "too-large" else 10**6
    with pytest.raises(InputRefused) as err:
        loads(data, what="body", max_bytes=limit)
    assert err.value.reason == reason


def test_depth_limit_is_inclusive():
    data = b"[" * 64 + b"]" * 64
    assert loads(data, what="t", max_bytes=1000) is not None
    with pytest.raises(InputRefused):
        loads(data, what="t", max_bytes=1000, max_depth=63)


def _reference_depth(data: bytes) -> int:
    """The obvious scan: strings skipped byte by byte, brackets counted."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def test_nesting_depth_matches_a_byte_by_byte_scan() -> None:
    """The fast passes (escapes dropped, quotes paired, pairs peeled) agree with
    the obvious scan on documents full of brackets, quotes and backslashes."""
    import random

    rng = random.Random(13)
    texts = ["", "a[b", '\\"[', "x\\\\", '"{}"', "\\\\\\\"", "]]", "{", "[]"]

    def gen(depth: int = 0) -> object:
        r = rng.random()
        if depth > 8 or r < 0.3:
            return rng.choice([1, None, *texts])
        if r < 0.6:
            return [gen(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(texts) + str(i): gen(depth + 1) for i in range(rng.randint(0, 3))}

    for _ in range(5000):
        data = json.dumps(gen()).encode()
        assert nesting_depth(data) == _reference_depth(data), data
    deep = b"[" * 100 + b"{}" + b"]" * 100  # deeper than the peeling rounds
    assert nesting_depth(deep) == _reference_depth(deep) == 101
