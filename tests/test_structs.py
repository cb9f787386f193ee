"""reconciler.structs: frozen records (msgspec) and the fast JSON codec."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
from functools import cached_property

import pytest

from reconciler.converge.ops import CreateInterface, SetPrivateKey
from reconciler.model.firewall import Match, Rule
from reconciler.model.manifest import ManifestDevice
from reconciler.model.wg import DesiredInterface
from reconciler.pki.manifest import manifest_from_dict
from reconciler.structs import (
    Record,
    as_dict,
    field,
    field_names,
    force_setattr,
    json_dumps_sorted,
    json_loads,
    replace,
    repr_without,
)

KEY = base64.b64encode(bytes(range(32))).decode()  # a valid X25519 private key


class Point(Record, order=True):
    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plain:
    a: int
    b: str = "b"


def test_records_are_frozen_compared_by_value_and_hashable():
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 3  # type: ignore[misc]
    assert p == Point(1, 2) and p != Point(1, 3) and Point(1) != Plain(1)
    with pytest.raises(TypeError):
        hash(Point(5, 6, {}))
    assert sorted([Point(2), Point(1, 5)]) == [Point(1, 5), Point(2)]
    assert Point(1).tags == {} and Point(1).tags is not Point(1).tags  # a fresh default
    assert pickle.loads(pickle.dumps(Point(3, 4))) == Point(3, 4)


def test_replace_field_names_and_as_dict_take_records_and_dataclasses():
    assert replace(Point(1, 2), y=7) == Point(1, 7)
    assert replace(Plain(1), b="c") == Plain(1, "c")
    assert field_names(Point) == ("x", "y", "tags") and field_names(Plain) == ("a", "b")
    assert as_dict(Point(1, 2)) == {"x": 1, "y": 2, "tags": {}}
    assert as_dict(Plain(1)) == {"a": 1, "b": "b"}
    with pytest.raises(TypeError):
        replace(Point(1), nope=1)


def test_force_setattr_normalises_in_post_init():
    class Named(Record):
        name: str = ""

        def __post_init__(self) -> None:
            if not self.name:
                force_setattr(self, "name", "default")

    assert Named().name == "default" and Named("x").name == "x"


def test_dict_records_keep_cached_properties_out_of_equality():
    class Squares(Record, dict=True):
        n: int

        @cached_property
        def square(self) -> int:
            return self.n * self.n

    a, b = Squares(3), Squares(3)
    assert a.square == 9 and a == b and hash(a) == hash(b)


@pytest.mark.parametrize("record", [
    CreateInterface("wg0", 51820, KEY),
    SetPrivateKey("wg0", KEY),
    DesiredInterface("wg0", KEY, 51820, (), {}),
])
def test_private_keys_never_reach_repr(record):
    assert KEY not in repr(record) and KEY not in str(record) and KEY not in f"{record!r}"
    assert record.private_key == KEY  # still a field: compared and replaced as before
    assert replace(record, private_key="x") != record


def test_repr_without_names_the_other_fields():
    class Secretive(Record):
        user: str
        token: str
        __repr__ = repr_without("token")

    assert repr(Secretive("ann", "s3cret")) == "Secretive(user='ann')"


def test_rule_comments_are_not_compared():
    m = (Match("meta", "iifname", ("wg0",)),)
    assert Rule(m, "accept", "one") == Rule(m, "accept", "two")
    assert hash(Rule(m, "accept", "one")) == hash(Rule(m, "accept", "two"))
    assert Rule(m, "accept") != Rule(m, "drop")


def test_manifest_devices_build_every_field():
    doc = {"version": 1, "org": "o", "serial": 1, "commit": "c", "issued_at": 0,
           "not_after": 1, "cidr_v4": "10.0.0.0/24", "listen_port": 51820, "keepalive": 25,
           "devices": [{"name": "a", "wg": "A" * 43 + "=", "ips": ["10.0.0.1"],
                        "fp": "A" * 43, "relay": True, "endpoint": "1.2.3.4:5"}]}
    manifest = manifest_from_dict(json.loads(json.dumps(doc)))
    assert manifest.devices[0] == ManifestDevice("a", "A" * 43 + "=", ("10.0.0.1",), "A" * 43,
                                                 relay=True, endpoint="1.2.3.4:5")
    assert manifest.device("a") is manifest.devices[0] and manifest.device("b") is None
    assert manifest == manifest_from_dict(doc)  # the name index is not compared


def test_a_device_with_only_the_required_keys_gets_every_default() -> None:
    doc = {"version": 1, "org": "o", "serial": 1, "commit": "c", "issued_at": 0,
           "not_after": 1, "cidr_v4": "10.0.0.0/24", "listen_port": 51820, "keepalive": 25,
           "devices": [{"name": "a", "wg": "A" * 43 + "=", "ips": ["10.0.0.1"], "fp": "A" * 43},
                       {"name": "b", "wg": "A" * 42 + "E=", "ips": ["10.0.0.2"], "fp": "B" * 43,
                        "keep_sources": True, "exit": True, "tags": ["t"]}]}
    a, b = manifest_from_dict(doc).devices
    assert a == ManifestDevice(
        name="a", wireguard_public_key="A" * 43 + "=", tunnel_ips=("10.0.0.1",),
        cert_sha256="A" * 43, routes=(), relay=False, endpoint=None, tags=(), labels=(),
        keepalive=None, exit_node=False, use_exit_node=None, masquerade_routes=True)
    assert (b.masquerade_routes, b.exit_node, b.tags) == (False, True, ("t",))


@pytest.mark.parametrize("doc", [
    {"b": [1, 2.5, None, True], "a": {"z": "é", "y": ""}}, [], "x", 0, -1, 10 ** 30,
])
def test_json_writes_what_the_standard_library_writes(doc):
    data = json_dumps_sorted(doc)
    assert json_loads(data) == json.loads(data) == doc
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()


@pytest.mark.parametrize("number", [1e-7, 1.5e300, 0.1, 1762000000.123456, -0.0])
def test_json_floats_round_trip_exactly(number):
    # the exponent may be written differently (1e-7, not 1e-07); the value is the same
    assert json.loads(json_dumps_sorted([number])) == [number] == json_loads(json.dumps([number]))


@pytest.mark.parametrize("bad", [b"[1,2", b"NaN", b"{\"a\":1} x", b"\xff", b"01"])
def test_json_loads_refuses_what_is_not_json(bad):
    with pytest.raises(ValueError):
        json_loads(bad)
