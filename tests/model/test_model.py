"""reconciler.model: the shared data types (pure, stdlib only)."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import Device, Organization, OrgState, Source
from reconciler.model.wg import DesiredInterface


def _dev(name: str, *, disabled: bool = False) -> Device:
    return Device(name=name, org="acme", owner="alice", wireguard_public_key=f"wg-{name}",
                  identity_public_key=f"id-{name}", tunnel_ips=("10.0.0.1",), disabled=disabled)


def test_source_line_falls_back_to_the_nearest_parent_then_the_document():
    src = Source("orgs/acme/devices/a.yaml", {"": 1, "wireguard": 4, "tunnel_ips.1": 9})
    assert src.line("tunnel_ips.1") == 9
    assert src.line("wireguard.public_key") == 4  # parent
    assert src.line("tags.0") == 1  # nothing closer: the document
    assert Source("x.yaml").line("anything") == 1


def test_enabled_devices_sorted_without_disabled_and_computed_once():
    state = OrgState(Organization("acme", "10.0.0.0/24"),
                     devices={"b": _dev("b"), "a": _dev("a"), "c": _dev("c", disabled=True)})
    first = state.enabled_devices()
    assert [d.name for d in first] == ["a", "b"]
    assert state.enabled_devices() is first  # cached on the immutable state


def test_model_objects_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _dev("a").name = "b"  # type: ignore[misc]


def test_manifest_device_lookup():
    m = Manifest(org="acme", serial=1, commit="c", issued_at=0, not_after=1, cidr_v4="10.0.0.0/24",
                 cidr_v6=None, listen_port=51820, keepalive=25,
                 devices=(ManifestDevice("a", "k", ("10.0.0.1",), "fp"),))
    assert m.device("a") is m.devices[0]
    assert m.device("zz") is None


def test_desired_interface_never_shows_its_private_key():
    d = DesiredInterface(name="wg0", private_key="SECRET-KEY-MATERIAL", listen_port=1,
                         addresses=(), peers={})
    assert "SECRET-KEY-MATERIAL" not in repr(d)
