"""reconciler.config.schema: the schema files, the fast path, error lines."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import schema
from reconciler.config.yamlload import load_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
CORPUS = ROOT / "tests" / "data" / "invalid"


def _objects(node, path="$"):
    """Every sub-schema that declares properties, with where it is."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


@pytest.mark.parametrize("kind", schema.KINDS)
def test_schema_file_is_draft_2020_12_with_id(kind):
    doc = schema.load_schema(kind)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://meshops.dev/schemas/{kind.lower()}.schema.json"
    assert doc["properties"]["kind"]["const"] == kind
    assert "kind" in doc["required"]


@pytest.mark.parametrize("kind", schema.KINDS)
def test_every_object_is_closed_and_every_property_described(kind):
    doc = schema.load_schema(kind)
    objects = list(_objects(doc))
    assert objects
    for path, node in objects:
        assert node.get("additionalProperties") is False, path
        for name, prop in node["properties"].items():
            assert prop.get("description"), f"{path}.{name} has no description"
    groups = doc["properties"].get("groups")
    if groups:  # a map of name -> object: its value schema is closed too
        assert groups["additionalProperties"]["additionalProperties"] is False


def test_schemas_are_found_where_the_package_is():
    assert (schema.schema_dir() / "device.schema.json").is_file()
    on_disk = json.loads((ROOT / "schemas" / "device.schema.json").read_text())
    assert schema.load_schema("Device") == on_disk


def test_every_schema_compiles_to_a_fast_validator():
    for kind in schema.KINDS:
        assert schema.fast_validator(kind) is not None, kind


def _documents():
    for path in sorted(list(EXAMPLE.rglob("*.yaml")) + list(CORPUS.rglob("*.yaml"))):
        if path.name in ("expected.yaml", ".pre-commit-config.yaml"):
            continue
        doc = load_yaml(path.read_bytes(), str(path))
        if hasattr(doc, "value") and isinstance(doc.value, dict) and \
                doc.value.get("kind") in schema.KINDS:
            yield doc.value["kind"], doc.value


DOCS = list(_documents())


def test_fast_path_agrees_with_jsonschema_on_every_known_document():
    assert len(DOCS) > 100
    verdicts = set()
    for kind, value in DOCS:
        fast = schema.fast_validator(kind)(value)
        assert fast == schema.is_valid(kind, value), (kind, value)
        verdicts.add(fast)
    assert verdicts == {True, False}


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000),
                     st.floats(), st.sampled_from(
                         ["", "x", "tcp", "icmp", "*", "tag:web", "10.0.0.1", "a-b",
                          "8000-8100", "Device", "accept", "https://h", "1.2.3.4:99",
                          "a\n", "tag:web\n", "https://h\n", "22\n"]))


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, 10_000), key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1,
                                                  max_size=12), value=_scalars,
       drop=st.booleans())
def test_fast_path_agrees_with_jsonschema_on_mutations(index, key, value, drop):
    kind, doc = DOCS[index % len(DOCS)]
    doc = copy.deepcopy(doc)
    target = doc
    # walk to a nested mapping chosen by the index, then mutate one key there
    for k in sorted(doc):
        if isinstance(doc[k], dict) and index % 3 == 0:
            target = doc[k]
            break
        if isinstance(doc[k], list) and doc[k] and isinstance(doc[k][0], dict) and index % 3 == 1:
            target = doc[k][0]
            break
    keys = sorted(target)
    if drop and keys:
        target.pop(keys[index % len(keys)])
    elif keys and index % 2:
        target[keys[index % len(keys)]] = value
    else:
        target[key] = value
    assert schema.fast_validator(kind)(doc) == schema.is_valid(kind, doc)


def _lines(text: str):
    doc = load_yaml(text.encode(), "d.yaml")
    return doc.value, doc.lines


DEVICE = """kind: Device
name: a
owner: alice
wireguard:
  public_key: H68knQ+MlukXL0Qf5sS2i/l+Y7yweVjgpR1m1TjdFGc=
identity:
  public_key: vWmRMN3LDJ2EMRWzLHtwvfFq369F9Hnn+Xr3ubXN8ws=
tunnel_ips: [10.0.0.1]
"""


def test_valid_device_has_no_problems():
    value, lines = _lines(DEVICE)
    assert schema.check("Device", value, "d.yaml", lines) == []


def test_all_errors_are_reported_at_their_lines():
    value, lines = _lines(DEVICE + "relay: maybe\nkeepalive: -1\ncolour: red\nsize: 3\n")
    got = [(p.code, p.line) for p in schema.check("Device", value, "d.yaml", lines)]
    assert got == [("E-SCHEMA-TYPE", 9), ("E-SCHEMA-RANGE", 10),
                   ("E-SCHEMA-UNKNOWN-FIELD", 11), ("E-SCHEMA-UNKNOWN-FIELD", 12)]


def test_unknown_field_message_names_the_field_but_never_its_value():
    value, lines = _lines(DEVICE.replace("wireguard:\n", "wireguard:\n  private_key: s3cr3t\n"))
    (problem,) = schema.check("Device", value, "d.yaml", lines)
    assert problem.code == "E-SCHEMA-UNKNOWN-FIELD" and problem.line == 5
    assert "private_key" in problem.message and "s3cr3t" not in str(problem)


def test_pattern_errors_get_field_codes():
    value, lines = _lines(DEVICE.replace("name: a", "name: ../x").replace(
        "H68knQ+MlukXL0Qf5sS2i/l+Y7yweVjgpR1m1TjdFGc=", "short"))
    got = sorted((p.code, p.line) for p in schema.check("Device", value, "d.yaml", lines))
    assert got == [("E-KEY-INVALID", 5), ("E-NAME-INVALID", 2)]


def test_required_points_at_the_object():
    value, lines = _lines(DEVICE.replace("  public_key: vWmRMN3LDJ2EMRWzLHtwvfFq369F9Hnn+Xr3ubXN8ws=\n",
                                         "  {}\n").replace("identity:\n  {}", "identity: {}"))
    (problem,) = schema.check("Device", value, "d.yaml", lines)
    assert problem.code == "E-SCHEMA-REQUIRED" and problem.line == 6
    assert "public_key" in problem.message


def test_policy_port_items_accept_numbers_and_ranges():
    doc = yaml.safe_load("kind: Policy\nrules:\n  - src: ['*']\n    dst: ['*']\n"
                         "    ports: [80, '8000-8100']\n")
    assert schema.is_valid("Policy", doc)
    doc["rules"][0]["ports"] = [True]
    assert not schema.is_valid("Policy", doc)
    assert not schema.fast_validator("Policy")(doc)


# --- patterns end at the true end of the string; numbers are typed strictly -----------


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


ALL_SCHEMAS = sorted(p.name for p in (ROOT / "schemas").glob("*.schema.json"))


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_pattern_is_anchored_at_both_ends(name):
    patterns = list(_patterns(json.loads((ROOT / "schemas" / name).read_text())))
    assert patterns
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("$"), (name, pattern)
        # \d, \w and \b mean different things in ECMA-262 and Python's re
        assert not any(t in pattern for t in ("\\d", "\\w", "\\b")), (name, pattern)


@pytest.mark.parametrize("pattern, text, matches", [
    ("^a$", "a", True), ("^a$", "a\n", False), ("^a$", "a\r\n", False),
    ("^[$]$", "$", True), ("^\\$$", "$", True), ("^\\$$", "$\n", False),
    ("^a$|^b$", "b\n", False), ("^[]$]x$", "$x", True), ("^[^$]$", "x\n", False),
    ("^https://", "https://x\n", True),  # no $: the rest is free
])
def test_ecma_regex_makes_dollar_the_true_end(pattern, text, matches):
    assert (schema.ecma_regex(pattern).search(text) is not None) is matches


@pytest.mark.parametrize("kind, path, value", [
    ("Device", ("name",), "a\n"),
    ("Device", ("owner",), "alice\n"),
    ("Device", ("tags",), ["web\n"]),
    ("Device", ("wireguard", "public_key"), "H68knQ+MlukXL0Qf5sS2i/l+Y7yweVjgpR1m1TjdFGc=\n"),
    ("Device", ("endpoint",), "203.0.113.1:51820\n"),
    ("Device", ("keepalive",), 25.0),
    ("Device", ("keepalive",), True),
    ("Device", ("relay",), 1),
    ("Mesh", ("cert_renew_fraction",), float("nan")),
    ("Mesh", ("cert_renew_fraction",), float("inf")),
    ("Mesh", ("cert_renew_fraction",), True),
    ("Mesh", ("cert_renew_fraction",), 0.05),
    ("Mesh", ("cert_lifetime_days",), 30.0),
    ("Mesh", ("hub_url",), "https://hub.example.com\n"),
    ("Mesh", ("hub_url",), "https://hub.example.com/\x00"),
    ("Mesh", ("pgp_recipients",), ["97A75CABDC50A83D2C4A0E2DDB0237F019A9D31D\n"]),
    ("User", ("email",), "a@b\n"),
    ("User", ("oidc", "subject"), "10 01"),
    ("User", ("oidc", "subject"), "x" * 256),
    ("Organization", ("owners",), ["alice\n"]),
    ("Organization", ("defaults",), {"listen_port": 51820.0}),
])
def test_both_checks_refuse_hostile_values(kind, path, value):
    base = {"Device": DEVICE, "Mesh": "kind: Mesh\nhub_url: https://h\n",
            "User": "kind: User\nname: a\nemail: a@b\noidc: {issuer: https://i, subject: '1'}\n",
            "Organization": "kind: Organization\nname: o\ncidr_v4: 10.0.0.0/24\n"}[kind]
    doc = load_yaml(base.encode(), "d.yaml").value
    assert schema.fast_validator(kind)(doc) and schema.is_valid(kind, doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert schema.fast_validator(kind)(doc) is False
    assert schema.is_valid(kind, doc) is False
    problems = schema.check(kind, doc, "d.yaml", {})
    assert problems and all(p.remedy for p in problems)


def test_integer_fields_accept_ints_and_number_fields_accept_finite_floats():
    doc = load_yaml(b"kind: Mesh\nhub_url: https://h\ncert_renew_fraction: 0.5\n"
                    b"cert_lifetime_days: 30\n", "m").value
    assert schema.fast_validator("Mesh")(doc) and schema.is_valid("Mesh", doc)
    doc["cert_renew_fraction"] = 1  # an int is a number
    assert schema.fast_validator("Mesh")(doc) is False  # but out of 0.1..0.95
    doc["cert_renew_fraction"] = 0.95
    assert schema.fast_validator("Mesh")(doc) and schema.is_valid("Mesh", doc)
