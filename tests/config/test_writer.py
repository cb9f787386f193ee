"""add_device / render_device against a copy of example-repo and the real loader."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from reconciler.config import load
from reconciler.config.writer import NewDevice, add_device, render_device, scalar
from reconciler.errors import UsageError, ValidationError
from reconciler.model.repo import Device

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE, dst)
    return dst


def req(name: str = "laptop-7", org: str = "acme", **kw) -> NewDevice:
    kw.setdefault("wireguard_key", key("wg" + name))
    kw.setdefault("identity_key", key("id" + name))
    return NewDevice(org=org, name=name, **kw)


def used_ips(repo: Path, org: str) -> set[str]:
    result = load(repo)
    assert result.repo is not None, result.problems
    return {ip for d in result.repo.orgs[org].devices.values() for ip in d.tunnel_ips}


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file()}


def test_adds_lowest_free_ips_and_loads(repo: Path):
    before = load(repo).repo
    assert before is not None
    acme = before.orgs["acme"]
    added = add_device(repo, req(tags=("web", "laptop")))
    assert added.rel_path == "orgs/acme/devices/laptop-7.yaml"
    assert added.owner == acme.organization.owners[0]
    v4, v6 = added.tunnel_ips
    assert v4 not in used_ips_of(acme) and v6 not in used_ips_of(acme)
    after = load(repo).repo
    assert after is not None
    dev = after.orgs["acme"].devices["laptop-7"]
    assert dev.tunnel_ips == (v4, v6) and dev.tags == ("web", "laptop")
    for name, old in acme.devices.items():  # nobody renumbered
        assert after.orgs["acme"].devices[name].tunnel_ips == old.tunnel_ips
    assert not list(repo.rglob(".*.tmp"))


def used_ips_of(state) -> set[str]:
    return {ip for d in state.devices.values() for ip in d.tunnel_ips}


def test_lowest_free_is_exact(repo: Path):
    from reconciler.config.allocate import next_free

    state = load(repo).repo.orgs["globex"]
    want = next_free(state, 4)
    added = add_device(repo, req(org="globex", name="tv"))
    assert added.tunnel_ips[0] == want
    assert len(added.tunnel_ips) == (2 if state.organization.cidr_v6 else 1)


def test_file_layout_is_stable(repo: Path):
    add_device(repo, req(name="edge-1", relay=True, endpoint="198.51.100.20:51820",
                         tags=("relay",), owner="bob", description="edge relay"))
    text = (repo / "orgs/acme/devices/edge-1.yaml").read_text()
    dev = load(repo).repo.orgs["acme"].devices["edge-1"]
    assert text == (
        "kind: Device\n"
        "name: edge-1\n"
        "owner: bob\n"
        'description: "edge relay"\n'
        "wireguard:\n"
        f"  public_key: {key('wgedge-1')}\n"
        "identity:\n"
        f"  public_key: {key('idedge-1')}\n"
        "tunnel_ips:\n"
        f"  - {dev.tunnel_ips[0]}\n"
        f"  - {dev.tunnel_ips[1]}\n"
        "tags: [relay]\n"
        "relay: true\n"
        "endpoint: 198.51.100.20:51820\n"
    )
    assert dev.relay and dev.endpoint == "198.51.100.20:51820" and dev.owner == "bob"


@pytest.mark.parametrize("mutate,code", [
    (lambda r, s: req(name=next(iter(s.devices))), "E-DUP-NAME"),
    (lambda r, s: req(wireguard_key=next(iter(s.devices.values())).wireguard_public_key),
     "E-DUP-KEY"),
    (lambda r, s: req(identity_key=next(iter(s.devices.values())).identity_public_key),
     "E-DUP-KEY"),
    (lambda r, s: req(wireguard_key=key("same"), identity_key=key("same")), "E-DUP-KEY"),
])
def test_refuses_duplicates_and_writes_nothing(repo: Path, mutate, code):
    state = load(repo).repo.orgs["acme"]
    before = snapshot(repo)
    with pytest.raises(ValidationError) as info:
        add_device(repo, mutate(repo, state))
    assert code in {p.code for p in info.value.problems}
    assert snapshot(repo) == before


def test_invalid_result_is_rolled_back(repo: Path):
    before = snapshot(repo)
    with pytest.raises(ValidationError) as info:
        add_device(repo, req(wireguard_key="not-a-key"))
    assert any(p.file == "orgs/acme/devices/laptop-7.yaml" for p in info.value.problems)
    assert snapshot(repo) == before


def test_invalid_repo_is_refused_first(repo: Path):
    (repo / "orgs/acme/devices/web-1.yaml").write_text("kind: Device\nname: web-1\n")
    before = snapshot(repo)
    with pytest.raises(ValidationError):
        add_device(repo, req())
    assert snapshot(repo) == before


@pytest.mark.parametrize("request_,fragment", [
    (req(org="initech"), "no org 'initech'"),
    (req(owner="mallory"), "no user 'mallory'"),
    (req(name="../../evil"), "not a DNS label"),
    (req(name="Laptop"), "not a DNS label"),
    (req(relay=True), "needs a static endpoint"),
])
def test_usage_errors(repo: Path, request_, fragment):
    before = snapshot(repo)
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        add_device(repo, request_)
    assert snapshot(repo) == before


def test_disabled_device_address_is_not_reused(repo: Path):
    state = load(repo).repo.orgs["acme"]
    disabled = [d for d in state.devices.values() if d.disabled]
    assert disabled, "example-repo keeps a disabled device"
    added = add_device(repo, req())
    assert not set(added.tunnel_ips) & {ip for d in disabled for ip in d.tunnel_ips}


@pytest.mark.parametrize("text,plain", [
    ("web", True), ("10.1.2.3", True), ("fd10:10::6", True), (key("k"), True),
    ("yes", False), ("1e5", False), ("123", False), ("a: b", False),
    ("[2001:db8::1]:51820", False), ("2001:10:20:30:40:50:1:2", False),
])
def test_scalar_quotes_what_yaml_could_misread(text, plain):
    assert (scalar(text) == text) is plain


def test_render_round_trips_through_the_loader_yaml():
    from reconciler.config.yamlload import load_yaml

    dev = Device(name="x", org="acme", owner="yes", wireguard_public_key=key("a"),
                 identity_public_key=key("b"), tunnel_ips=("10.0.0.1", "fd00::1"),
                 tags=("123", "on"), endpoint="[2001:db8::1]:51820", description='say "hi": #1')
    doc = load_yaml(render_device(dev).encode(), "x.yaml")
    assert doc.value["owner"] == "yes" and doc.value["tags"] == ["123", "on"]
    assert doc.value["endpoint"] == "[2001:db8::1]:51820"
    assert doc.value["description"] == 'say "hi": #1'
    assert doc.value["tunnel_ips"] == ["10.0.0.1", "fd00::1"]
