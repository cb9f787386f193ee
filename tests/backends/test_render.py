"""wg-quick rendering: golden text, parse round trip, RenderBackend converges."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from converge.cases import NOW, PRIVATE, desired, key, peer

from reconciler.backends import open_backend
from reconciler.backends.render import parse_wg_quick, render_wg_quick
from reconciler.converge import plan

GOLDEN = Path(__file__).parent / "data" / "wg-mesh.conf"
RELAY_GOLDEN = Path(__file__).parent / "data" / "wg-relay.conf"


def _desired():
    return desired(
        peer(3, "laptop-7"),
        peer(2, "db-1", "203.0.113.5:51820", 25),
        routes=("192.168.50.0/24",),
    )


def test_golden_render() -> None:
    text = render_wg_quick(_desired())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def _relay():
    return dataclasses.replace(_desired(), forwarding=True, addresses=("10.0.0.1/24", "fd00::1/64"))


def test_golden_render_relay() -> None:
    text = render_wg_quick(_relay())
    if os.environ.get("UPDATE_GOLDEN"):
        RELAY_GOLDEN.write_text(text)
    assert text == RELAY_GOLDEN.read_text()
    assert "PostUp = sysctl -w net.ipv4.ip_forward=1\n" in text
    assert "ip_forward" not in render_wg_quick(_desired())  # only relays
    v4_only = dataclasses.replace(_relay(), addresses=("10.0.0.1/24", "fe80::1/64"))
    assert "ipv6" not in render_wg_quick(v4_only)


def test_render_backend_converges_a_relay(tmp_path: Path) -> None:
    backend = open_backend("render", path=tmp_path / "wg-mesh.conf")
    d = _relay()
    assert parse_wg_quick(render_wg_quick(d)).forwarding
    backend.apply(plan(d, backend.observe(d.name), NOW))
    assert backend.observe(d.name).forwarding is True
    assert plan(d, backend.observe(d.name), NOW) == ()
    assert (tmp_path / "wg-mesh.conf").read_text() == render_wg_quick(d)
    plain = dataclasses.replace(d, forwarding=False)  # never turned off
    assert plan(plain, backend.observe(d.name), NOW) == ()


def test_parse_round_trip() -> None:
    cfg = parse_wg_quick(render_wg_quick(_desired()))
    assert cfg.private_key == PRIVATE and cfg.listen_port == 51820 and cfg.mtu == 1420
    assert cfg.addresses == ["10.0.0.1/24"] and cfg.routes == ["192.168.50.0/24"]
    by_key = {p.public_key: p for p in cfg.peers}
    assert by_key[key(2)].name == "db-1" and by_key[key(2)].keepalive == 25
    assert by_key[key(2)].endpoint == "203.0.113.5:51820"
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

    changed = dataclasses.replace(d, peers={key(4): peer(4, "printer")}, private_key=key(8))
    backend.apply(plan(changed, backend.observe(d.name), NOW))
    assert plan(changed, backend.observe(d.name), NOW) == ()
    text = path.read_text()
    assert "# printer" in text and key(2) not in text and key(8) in text
