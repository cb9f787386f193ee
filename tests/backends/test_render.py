"""wg-quick rendering: golden text, the phone apps' key set, parse round trip,
RenderBackend converges (and migrates old files), and real wireguard-tools
(``wg-quick strip`` | ``wg setconf``, and ``wg-quick up`` with wireguard-go in a
network namespace of our own) accept the file."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from converge.cases import NOW, PRIVATE, desired, key, peer

from reconciler import structs
from reconciler.backends import open_backend
from reconciler.backends.render import (
    INTERFACE_KEYS,
    PEER_KEYS,
    parse_wg_quick,
    render_wg_quick,
)
from reconciler.converge import plan, public_key
from reconciler.errors import BackendError

GOLDEN = Path(__file__).parent / "data" / "wg-mesh.conf"
RELAY_GOLDEN = Path(__file__).parent / "data" / "wg-relay.conf"
SITE = "192.168.50.0/24"


def _desired():
    db = peer(2, "db-1", "203.0.113.5:51820", 25)
    db = structs.replace(db, allowed_ips=(*db.allowed_ips, SITE))  # db-1 advertises SITE
    return desired(peer(3, "laptop-7"), db, routes=(SITE,))


def _relay():
    return structs.replace(_desired(), forwarding=True, addresses=("10.0.0.1/24", "fd00::1/64"))


def _variants():
    """Several interfaces: a mesh, a relay, IPv6 endpoints, no peers, no port or MTU."""
    v6 = structs.replace(peer(4, "v6", "[2001:db8::4]:51820", 15),
                             allowed_ips=("fd00::4/128", "10.0.0.4/32"))
    return {
        "mesh": _desired(),
        "relay": _relay(),
        "v6": desired(v6, addresses=("10.0.0.1/24", "fd00::1/64")),
        "lonely": desired(),
        "bare": desired(peer(5, "p"), listen_port=0, mtu=0),
    }


# -- what the apps accept ---------------------------------------------------------------------

APPLE_INTERFACE = {"privatekey", "listenport", "address", "dns", "mtu"}
APPLE_PEER = {"publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive"}
ANDROID_INTERFACE = APPLE_INTERFACE | {"includedapplications", "excludedapplications"}
REPEATABLE = {"address", "allowedips", "dns"}  # wireguard-apple keysWithMultipleEntriesAllowed


def app_parse(text: str, interface_keys: set[str], peer_keys: set[str]) -> list[dict[str, str]]:
    """The phone apps' parsing rules (wireguard-apple TunnelConfiguration+WgQuickConfig.swift,
    wireguard-android Config/Interface/Peer.java): '#' starts a comment anywhere on a
    line; lines are [Interface], [Peer] or Key = Value; a key outside the section's set,
    a repeated non-list key, or an interface without PrivateKey fails the import."""
    sections: list[dict[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower() in ("[interface]", "[peer]"):
            sections.append({"": line.lower()})
            continue
        assert "=" in line and sections, f"line {number}: invalid line {raw!r}"
        name, value = (part.strip() for part in line.split("=", 1))
        key_ = name.lower()
        allowed = interface_keys if sections[-1][""] == "[interface]" else peer_keys
        assert key_ in allowed, f"line {number}: unrecognized key {name!r}"
        assert key_ not in sections[-1] or key_ in REPEATABLE, f"line {number}: {name} twice"
        sections[-1][key_] = value
    interfaces = [s for s in sections if s[""] == "[interface]"]
    assert len(interfaces) == 1 and "privatekey" in interfaces[0]
    assert all("publickey" in s for s in sections if s[""] == "[peer]")
    return sections


def test_module_key_sets_are_the_apps_intersection() -> None:
    assert {k.lower() for k in INTERFACE_KEYS} == APPLE_INTERFACE == \
        ANDROID_INTERFACE - {"includedapplications", "excludedapplications"}
    assert {k.lower() for k in PEER_KEYS} == APPLE_PEER


@pytest.mark.parametrize("name", list(_variants()))
def test_rendered_file_imports_on_both_apps(name: str) -> None:
    d = _variants()[name]
    text = render_wg_quick(d)
    for interface_keys in (APPLE_INTERFACE, ANDROID_INTERFACE):
        sections = app_parse(text, interface_keys, APPLE_PEER)
    assert sections[0]["privatekey"] == d.private_key
    assert sorted(s["publickey"] for s in sections[1:]) == sorted(d.peers)
    assert "PostUp" not in text and "PostDown" not in text and "Table" not in text


@pytest.mark.parametrize("bad", [
    "PostUp = ip route replace 192.168.50.0/24 dev %i",
    "PostUp = sysctl -w net.ipv4.ip_forward=1",
    "Table = off",
    "SaveConfig = true",
    "FwMark = 51820",
])
def test_the_app_checker_refuses_what_the_apps_refuse(bad: str) -> None:
    text = render_wg_quick(_desired()).replace("MTU = 1420", f"MTU = 1420\n{bad}")
    with pytest.raises(AssertionError, match="unrecognized key"):
        app_parse(text, APPLE_INTERFACE, APPLE_PEER)


# -- golden files and the render backend ------------------------------------------------------


def test_golden_render() -> None:
    text = render_wg_quick(_desired())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert "does not enforce the mesh policy" in text.splitlines()[1]


def test_golden_render_relay() -> None:
    text = render_wg_quick(_relay())
    if os.environ.get("UPDATE_GOLDEN"):
        RELAY_GOLDEN.write_text(text)
    assert text == RELAY_GOLDEN.read_text()
    assert "# meshops: forwarding: this device relays; turn on net.ipv4.ip_forward=1 and " \
        "net.ipv6.conf.all.forwarding=1\n" in text
    assert "forwarding" not in render_wg_quick(_desired())  # only relays
    v4_only = structs.replace(_relay(), addresses=("10.0.0.1/24", "fe80::1/64"))
    assert "ipv6" not in render_wg_quick(v4_only)


def test_render_backend_converges_a_relay(tmp_path: Path) -> None:
    backend = open_backend("render", path=tmp_path / "wg-mesh.conf")
    d = _relay()
    assert parse_wg_quick(render_wg_quick(d)).forwarding
    backend.apply(plan(d, backend.observe(d.name), NOW))
    assert backend.observe(d.name).forwarding is True
    assert plan(d, backend.observe(d.name), NOW) == ()
    assert (tmp_path / "wg-mesh.conf").read_text() == render_wg_quick(d)
    plain = structs.replace(d, forwarding=False)  # never turned off
    assert plan(plain, backend.observe(d.name), NOW) == ()


def test_parse_round_trip() -> None:
    cfg = parse_wg_quick(render_wg_quick(_desired()))
    assert cfg.private_key == PRIVATE and cfg.listen_port == 51820 and cfg.mtu == 1420
    assert cfg.addresses == ["10.0.0.1/24"] and cfg.routes == [SITE]
    by_key = {p.public_key: p for p in cfg.peers}
    assert by_key[key(2)].name == "db-1" and by_key[key(2)].keepalive == 25
    assert by_key[key(2)].endpoint == "203.0.113.5:51820"
    assert by_key[key(2)].allowed_ips == ("10.0.0.2/32", SITE)
    assert by_key[key(3)].endpoint is None and by_key[key(3)].allowed_ips == ("10.0.0.3/32",)


def test_render_backend_converges_and_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "out" / "wg-mesh.conf"
    backend = open_backend("render", path=path)
    d = _desired()
    ops = plan(d, backend.observe(d.name), NOW)
    assert ops and type(ops[0]).__name__ == "CreateInterface"
    backend.apply(ops)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == render_wg_quick(d)
    assert plan(d, backend.observe(d.name), NOW) == ()

    changed = structs.replace(d, peers={key(4): peer(4, "printer")}, private_key=key(8),
                                  routes=())
    backend.apply(plan(changed, backend.observe(d.name), NOW))
    assert plan(changed, backend.observe(d.name), NOW) == ()
    text = path.read_text()
    assert "# printer" in text and key(2) not in text and key(8) in text
    assert "route" not in text


OLD_FORMAT = """\
# Written by meshops; changes are overwritten on the next run.
[Interface]
PrivateKey = {private}
Address = 10.0.0.1/24, fd00::1/64
ListenPort = 51820
MTU = 1420
PostUp = sysctl -w net.ipv4.ip_forward=1
PostUp = sysctl -w net.ipv6.conf.all.forwarding=1
PostUp = ip route replace 192.168.50.0/24 dev %i
"""


def test_a_file_from_an_older_meshops_is_rewritten_without_postup(tmp_path: Path) -> None:
    path = tmp_path / "wg-mesh.conf"
    peers = render_wg_quick(_relay()).split("\n\n", 1)[1]  # the [Peer] sections are unchanged
    path.write_text(OLD_FORMAT.format(private=PRIVATE) + "\n" + peers)
    backend = open_backend("render", path=path)
    d = _relay()
    ops = plan(d, backend.observe(d.name), NOW)
    assert {type(op).__name__ for op in ops} == {"AddRoute", "SetForwarding"}
    backend.apply(ops)
    assert path.read_text() == render_wg_quick(d)
    assert plan(d, backend.observe(d.name), NOW) == ()


@pytest.mark.parametrize(("text", "message"), [
    ("[Interface]\nPrivateKey = x\nListenPort = many\n", "x.conf:3: ListenPort: 'many'"),
    ("[Interface]\nMTU = 1e3\n", "x.conf:2: MTU: '1e3'"),
    ("[Interface]\nPrivateKey = x\n[Peer]\nAllowedIPs = 10.0.0.2/32\n", "x.conf: a [Peer] has no"),
    ("[Interface]\nPrivateKey\n", "x.conf:2: expected 'Key = Value'"),
    ("[Peer]\nPublicKey = k\nPersistentKeepalive = often\n", "PersistentKeepalive: 'often'"),
])
def test_parse_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(BackendError, match=re.escape(message)):
        parse_wg_quick(text, "x.conf")


# -- real wireguard-tools ---------------------------------------------------------------------

_seq = count()
needs_tools = pytest.mark.skipif(
    not (shutil.which("wg") and shutil.which("wg-quick")), reason="wireguard-tools not installed")


def _ifname() -> str:
    return f"mowq{os.getpid() % 100000}{next(_seq)}"[:15]


@needs_tools
@pytest.mark.parametrize("name", list(_variants()))
def test_wg_quick_strip_accepts_the_file(tmp_path: Path, name: str) -> None:
    d = _variants()[name]
    conf = tmp_path / f"{_ifname()}.conf"
    conf.write_text(render_wg_quick(d))
    conf.chmod(0o600)
    out = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True,
                         check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    stripped = out.stdout
    assert f"PrivateKey = {d.private_key}" in stripped
    for wg_quick_only in ("Address", "MTU", "DNS"):  # comments stay: `wg` skips them
        assert f"{wg_quick_only} =" not in stripped
    assert stripped.count("[Peer]") == len(d.peers)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace and a wireguard-go interface")
    if not shutil.which("wireguard-go"):
        pytest.skip("wireguard-go not installed")
    name = f"mo-wq-{os.getpid()}-{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _in(ns: str, *cmd: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                         check=False, timeout=60, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr}"
    return out.stdout


@pytest.mark.root
@needs_tools
def test_wg_setconf_and_wg_quick_up_take_the_file(tmp_path: Path, netns: str) -> None:
    d = _relay()
    ifname = _ifname()
    conf = tmp_path / f"{ifname}.conf"
    conf.write_text(render_wg_quick(d))
    conf.chmod(0o600)
    env = {**os.environ, "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go",
           "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    _in(netns, "wg-quick", "up", str(conf), env=env)
    try:
        # wg-quick set the device from `wg-quick strip` | `wg setconf`; read it back
        dump = _in(netns, "wg", "show", ifname, "dump").splitlines()
        # (wg shows the private key clamped, RFC 7748; the public key is the same)
        assert dump[0].split("\t")[1:3] == [public_key(d.private_key), "51820"]
        peers = {line.split("\t")[0]: line.split("\t") for line in dump[1:]}
        assert set(peers) == set(d.peers)
        assert peers[key(2)][2] == "203.0.113.5:51820" and peers[key(2)][7] == "25"
        assert sorted(peers[key(2)][3].split(",")) == sorted(["10.0.0.2/32", SITE])
        # and set the interface up the way the file says: addresses, MTU, routes
        addrs = _in(netns, "ip", "-o", "addr", "show", "dev", ifname)
        assert "10.0.0.1/24" in addrs and "fd00::1/64" in addrs
        assert "mtu 1420" in _in(netns, "ip", "link", "show", "dev", ifname)
        routes = _in(netns, "ip", "-4", "route", "show", "dev", ifname)
        assert SITE in routes  # routed from AllowedIPs: no PostUp needed
        # `wg setconf` on its own takes the stripped file too (same device)
        stripped = tmp_path / "stripped.conf"
        stripped.write_text(_in(netns, "wg-quick", "strip", str(conf)))
        _in(netns, "wg", "setconf", ifname, str(stripped))
        assert _in(netns, "wg", "show", ifname, "dump").splitlines()[0].split("\t")[1] == \
            public_key(d.private_key)
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "wg-quick", "down", str(conf)],
                       capture_output=True, check=False, timeout=60, env=env)
