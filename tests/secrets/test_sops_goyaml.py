"""Tests for go-yaml-compatible YAML handling (reconciler.secrets.goyaml)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SecretsError
from reconciler.secrets import goyaml
from reconciler.secrets.values import Comment, Timestamp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("True", True), ("TRUE", True), ("false", False),
        ("yes", "yes"), ("no", "no"), ("on", "on"), ("y", "y"),
        ("null", None), ("~", None), ("", None), ("Null", None),
        ("12", 12), ("-3", -3), ("+4", 4), ("0755", 0o755), ("0o17", 15), ("0x1F", 31),
        ("0b101", 5), ("1_000", 1000),
        ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("1.", 1.0), ("-.inf", -math.inf),
        ("2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43.10 -5"), ("2001-13-01", "2001-13-01"),
        ("3.6.1", "3.6.1"), ("0x", "0x"), ("1e", "1e"), ("NaN", "NaN"), ("09", 9.0),
    ],
)
def test_go_resolve(text: str, expected: object) -> None:
    got = goyaml.go_resolve(text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2001-12-14", "2001-12-14T00:00:00Z"),
        ("2001-12-14T21:59:43Z", "2001-12-14T21:59:43Z"),
        ("2001-12-14t21:59:43.50+02:00", "2001-12-14T21:59:43.5+02:00"),
        ("2001-1-2 3:4:5.1234567891", "2001-01-02T03:04:05.123456789Z"),
        ("2001-12-14T21:59:43.000+00:00", "2001-12-14T21:59:43Z"),
    ],
)
def test_timestamps_resolve_like_go_time(text: str, canonical: str) -> None:
    value = goyaml.go_resolve(text)
    assert isinstance(value, Timestamp) and value == canonical
    assert goyaml.load(goyaml.dump({"t": value})) == {"t": canonical}
    assert goyaml.load(f"t: '{text}'\n") == {"t": text}  # quoted: a plain string


def test_go_resolve_nan() -> None:
    value = goyaml.go_resolve(".nan")
    assert isinstance(value, float) and math.isnan(value)


def test_load_types_and_quoting() -> None:
    doc = goyaml.load("a: yes\nb: '12'\nc: 12\nd: !!str 5\ne:\nf: '2020-01-01'\n")
    assert doc == {"a": "yes", "b": "12", "c": 12, "d": "5", "e": None, "f": "2020-01-01"}


def test_comments_attach_to_their_block() -> None:
    text = (
        "# top\n"
        "a: 1\n"
        "b:\n"
        "    # first in b\n"
        "    c: 2\n"
        "    # last in b\n"
        "d:\n"
        "    - x\n"
        "    # in list\n"
        "    - y\n"
        "key: |\n"
        "    # not a comment\n"
        "    body\n"
        "# end\n"
    )
    doc = goyaml.load(text)
    top = list(doc)
    assert isinstance(top[0], Comment) and top[0].text == " top"
    assert isinstance(top[-1], Comment) and top[-1].text == " end"
    inner = list(doc["b"])  # type: ignore[arg-type]
    assert [k.text if isinstance(k, Comment) else k for k in inner] == [
        " first in b", "c", " last in b"]
    items = doc["d"]
    assert isinstance(items, list) and items[0] == "x" and items[2] == "y"
    assert isinstance(items[1], Comment) and items[1].text == " in list"
    assert doc["key"] == "# not a comment\nbody\n"
    assert goyaml.load(text, keep_comments=False)["b"] == {"c": 2}


def test_dump_writes_comments_back() -> None:
    text = "# top\na: 1\nb:\n    # inner\n    c: x\n"
    assert goyaml.dump(goyaml.load(text)) == text


@pytest.mark.parametrize(
    "text",
    ["yes", "No", "12", "0o17", "1e3", "null", "", " lead", "trail ", "a: b", "x #y", "#x",
     "-", "- a", "[x]", "{x}", "*a", "&a", "!t", "'q'", '"q"', "%p", "@a", "`a", "a\tb",
     "multi\nline\n", "two\n\n", "no-newline\nend", " lead\nline", "tab\t\nx",
     "ctrl\x01", "nel\x85x", "bom\ufeff", "ls\u2028x", "emoji 😀", "日本語", "...", "---",
     "<<", "2001-12-14", "2001-12-14T21:59:43Z", "ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]", "a:b", "1.2.3", "back\\slash"],
)
def test_tricky_strings_round_trip(text: str) -> None:
    dumped = goyaml.dump({"k": text, text or "empty": [text]})
    assert goyaml.load(dumped) == {"k": text, text or "empty": [text]}


def test_dump_layout_matches_sops() -> None:
    doc = {"a": [{"x": 1, "y": [True, None]}, [], {}], "b": {"c": -1.5}, "e": {}}
    assert goyaml.dump(doc) == (
        "a:\n"
        "    - x: 1\n"
        "      y:\n"
        "          - true\n"
        "          - null\n"
        "    - []\n"
        "    - {}\n"
        "b:\n"
        "    c: -1.5\n"
        "e: {}\n"
    )


def test_bad_documents_are_refused() -> None:
    with pytest.raises(SecretsError, match="not valid YAML"):
        goyaml.load("a: [\n")
    with pytest.raises(SecretsError, match="root is a mapping"):
        goyaml.load("- a\n")
    with pytest.raises(SecretsError, match="exactly one document"):
        goyaml.load("a: 1\n---\nb: 2\n")
    with pytest.raises(SecretsError, match="only string keys"):
        goyaml.load("1: a\n")


_scalars = (
    st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none()
    | st.floats(allow_nan=False)
)
_keys = st.text(min_size=1, max_size=8)
_trees = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_keys, kids, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _trees, max_size=4))
def test_dump_load_round_trip(doc: dict[str, object]) -> None:
    assert goyaml.load(goyaml.dump(doc)) == doc
