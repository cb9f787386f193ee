"""reconciler.config.yamlload: safe loading with per-field lines."""

from __future__ import annotations

import pytest

from reconciler.config.yamlload import MAX_BYTES, Document, load_yaml, resolve_plain
from reconciler.errors import Problem


def ok(text: str) -> Document:
    doc = load_yaml(text.encode(), "f.yaml")
    assert isinstance(doc, Document), doc
    return doc


def refused(text: str | bytes) -> Problem:
    data = text.encode() if isinstance(text, str) else text
    problem = load_yaml(data, "f.yaml")
    assert isinstance(problem, Problem), problem
    assert problem.file == "f.yaml"
    return problem


def test_values_and_lines_of_every_field():
    doc = ok("kind: Device\nwireguard:\n  public_key: abc\ntunnel_ips:\n  - 10.0.0.1\n"
             "  - fd00::1\ntags: [a, b]\n")
    assert doc.value == {"kind": "Device", "wireguard": {"public_key": "abc"},
                         "tunnel_ips": ["10.0.0.1", "fd00::1"], "tags": ["a", "b"]}
    assert doc.lines["kind"] == 1
    assert doc.lines["wireguard.public_key"] == 3
    assert doc.lines["tunnel_ips"] == 4
    assert doc.lines["tunnel_ips.0"] == 5
    assert doc.lines["tunnel_ips.1"] == 6
    assert doc.lines["tags.1"] == 7


@pytest.mark.parametrize("text, value", [
    ("true", True), ("false", False), ("yes", "yes"), ("on", "on"), ("~", None),
    ("null", None), ("", None), ("42", 42), ("-7", -7), ("0x1f", 31), ("0o17", 15),
    ("1.5", 1.5), ("2026-01-01", "2026-01-01"), ("8000-8100", "8000-8100"),
    ("10.0.0.1", "10.0.0.1"), ("fd00::1", "fd00::1"), ("0", 0), ("0x10", 16),
    ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -2**63), ("1e308", 1e308),
    ("007", 7),
])
def test_plain_scalars_resolve_like_go_yaml(text, value):
    assert resolve_plain(text) == value


def test_quoted_scalars_stay_strings():
    assert ok("a: '42'\nb: \"true\"\n").value == {"a": "42", "b": "true"}


def test_empty_file_is_null_document():
    assert ok("").value is None


def test_bom_is_accepted():
    assert load_yaml(b"\xef\xbb\xbfa: 1\n", "f").value == {"a": 1}


@pytest.mark.parametrize("text, code, line", [
    ("a: &x 1\nb: 2\n", "E-YAML-ALIAS", 1),
    ("a: 1\nb: &x [1]\nc: *x\n", "E-YAML-ALIAS", 2),
    ("a: 1\nb:\n  c: !!python/object:os.system x\n", "E-YAML-TAG", 3),
    ("a: !custom 1\n", "E-YAML-TAG", 1),
    ("a: !!map {}\n", "E-YAML-TAG", 1),
    ("a: 1\na: 2\n", "E-YAML-DUPKEY", 2),
    ("a: 1\n---\nb: 2\n", "E-YAML-MULTIDOC", 2),
    ("a: [1, 2\nb: 3\n", "E-YAML-SYNTAX", 2),
    ("a: b: c\n", "E-YAML-SYNTAX", 1),
    ("? [1, 2]\n: x\n", "E-YAML-KEY", 1),
])
def test_refusals_name_code_and_line(text, code, line):
    problem = refused(text)
    assert (problem.code, problem.line) == (code, line), problem
    assert problem.remedy


def test_billion_laughs_is_refused_at_the_first_anchor():
    text = "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in
                                      zip("abcdefgh", "bcdefghi"))
    problem = refused(text)
    assert problem.code == "E-YAML-ALIAS" and problem.line == 1


def test_oversize_file_is_refused_before_parsing():
    problem = refused(b"a: " + b"x" * MAX_BYTES + b"\n")
    assert problem.code == "E-FILE-TOO-LARGE"
    assert ok("a: " + "x" * 1000 + "\n").value["a"] == "x" * 1000


def test_non_utf8_is_refused_with_its_line():
    problem = refused(b"a: 1\nb: caf\xe9\n")
    assert (problem.code, problem.line) == ("E-FILE-ENCODING", 2)


def test_deep_nesting_is_refused():
    assert refused("a: " + "[" * 40 + "]" * 40 + "\n").code == "E-YAML-DEPTH"


@pytest.mark.parametrize("text, line", [
    ("a: 1\nb: " + "9" * 5000 + "\n", 2),
    ("a: [1, " + "9" * 5000 + "]\n", 1),
    ("a:\n  - -" + "9" * 20 + "\n", 2),
    ("a: 0x" + "f" * 17 + "\n", 1),
    ("a: 0o" + "7" * 30 + "\n", 1),
    ("a: 9223372036854775808\n", 1),
    ("a: -9223372036854775809\n", 1),
    ("a: .nan\n", 1), ("a: .NaN\n", 1), ("a: .inf\n", 1), ("a: -.Inf\n", 1), ("a: +.INF\n", 1),
    ("a: 1e999\n", 1), ("a: -1e400\n", 1), ("a: " + "9" * 400 + ".5\n", 1),
    ("a:\n  b:\n    c: .nan\n", 3),
])
def test_numbers_no_field_can_hold_are_refused_with_their_line(text, line):
    problem = refused(text)
    assert (problem.code, problem.line) == ("E-YAML-NUMBER", line), problem
    assert len(problem.message) < 120  # a 5,000-digit number is not echoed in full


def test_quoted_numbers_stay_strings():
    assert ok("a: '.nan'\nb: \"" + "9" * 5000 + "\"\n").value["a"] == ".nan"


@pytest.mark.parametrize("text, line, char", [
    ('a: "x\\0y"\n', 1, "U+0000"),
    ("a: \"x\\ey\"\n", 1, "U+001B"),
    ('a: "x\\x7f"\n', 1, "U+007F"),
    ('a: "x\\x85"\n', 1, "U+0085"),
    ('a: "x\\u202ey"\n', 1, "U+202E"),
    ('a: "x\\u2066y"\n', 1, "U+2066"),
    ('a: "x\\u2028y"\n', 1, "U+2028"),
    ('a: "x\\ry"\n', 1, "U+000D"),
    ('"k\\x01": 1\n', 1, "U+0001"),
    ("a: 1\nb: |\n  one\n  two\x1b\n", 4, "U+001B"),
    ("a:\n  - 'x'\n  - \"\\a\"\n", 3, "U+0007"),
])
def test_control_characters_are_refused_in_quoted_and_block_strings(text, line, char):
    problem = refused(text)
    assert (problem.code, problem.line) == ("E-YAML-CONTROL-CHAR", line), problem
    assert char in problem.message


def test_tabs_and_newlines_stay_in_free_text():
    doc = ok("description: |\n  line one\n  \tindented\n")
    assert doc.value["description"] == "line one\n\tindented\n"
