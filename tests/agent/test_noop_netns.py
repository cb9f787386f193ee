"""A pass where nothing changed does nothing, against real wireguard-go (root).

Issue 13: with ~300 peers on a real wireguard-go interface in a throwaway
network namespace (real ``ip``, real ``nft``), from a ``file://`` manifest,
as a plain device and as a relay:

* passes 2, 3 and 4 send only ``get=1`` over UAPI (no ``set``) and run no
  ``nft -f``; passes 3 and 4 write nothing in the state dir (every file keeps
  its inode, size and mtime). Pass 2 may write ``peering.json`` alone: it is
  the first to observe the peers pass 1 created, and notes their liveness;
* a manifest that changes one peer (a new serial) sends ``set`` requests that
  touch exactly that peer;
* drift is still seen: a peer removed behind the agent's back (``wg set ...
  remove`` through UAPI) and a flushed ``inet meshops`` table come back on the
  next pass.

Behaviour only, never timings (``scripts/bench agent_apply_noop_10k`` has
those). The UAPI requests are recorded by wrapping ``UapiClient.send`` (every
request, ``get`` and ``set``, goes out through it) and
the nft runs by the ``Nftables`` runner; both still reach the real daemons.
Teardown deletes the namespace and stops only the wireguard-go this test
started (its pid file).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from reconciler.agent.reconcile import reconcile_once
from reconciler.agent.runtime import make_fetcher, open_agent_backend
from reconciler.backends import uapi
from reconciler.net import nftables
from reconciler.net.iproute import IPRouteLinks
from reconciler.structs import replace

from .helpers import NOW, Org, device, write_agent

pytestmark = [pytest.mark.root, pytest.mark.slow]

PEERS = 300
NS = f"mo-noop-{os.getpid()}"
IFACE = f"mon{os.getpid() % 100000}"


def _public(i: int) -> str:
    """Distinct X25519 public keys beyond 255 devices (hashed seeds)."""
    key = X25519PrivateKey.from_private_bytes(hashlib.sha256(i.to_bytes(8, "big")).digest())
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw,
                                                          PublicFormat.Raw)).decode()


def _devices(peers: int, relay: bool = False) -> list[Any]:
    me = device("alpha", 1, "10.77.0.1", relay=relay)
    # no endpoints: wireguard-go sends nothing (and logs nothing) for these peers
    return [me, *(replace(device(f"p{i}", 2, f"10.77.{i // 250}.{i % 250 + 2}"),
                          wireguard_public_key=_public(i)) for i in range(peers))]


@pytest.fixture
def world(tmp_path, monkeypatch):
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None or \
            shutil.which("nft") is None:
        pytest.skip("needs root, wireguard-go and nft")
    org = Org()
    subprocess.run(["ip", "netns", "add", NS], check=True)
    config = write_agent(tmp_path, org, netns=NS, interface=IFACE, stun_servers=())
    requests: list[str] = []
    nft_runs: list[list[str]] = []
    real_send = uapi.UapiClient.send

    def recording_send(self: uapi.UapiClient, data: bytes) -> Any:
        requests.append(data.decode("ascii"))
        return real_send(self, data)

    def recording_nft(cmd: list[str], stdin: str | None) -> Any:
        nft_runs.append(cmd)
        return nftables._run(cmd, stdin)

    monkeypatch.setattr(uapi.UapiClient, "send", recording_send)
    state = Path(config.state_dir)
    world = {"org": org, "config": config, "tmp": tmp_path, "state": state,
             "requests": requests, "nft": nft_runs, "recording_nft": recording_nft}
    try:
        yield world
    finally:
        pid_file = state / "wireguard" / f"{IFACE}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            if IFACE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass  # already gone
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def _publish(world: dict[str, Any], devices: list[Any], serial: int) -> None:
    out = world["tmp"] / "pub" / "acme"
    out.mkdir(parents=True, exist_ok=True)
    manifest = world["org"].manifest(devices, serial=serial, now=NOW, cidr_v6=None)
    manifest = replace(manifest, cidr_v4="10.77.0.0/16")
    (out / "manifest.json").write_bytes(world["org"].sign(manifest))


def _pass(world: dict[str, Any]) -> Any:
    config = world["config"]
    backend = open_agent_backend(config)
    firewall = nftables.Nftables(netns=NS, run=world["recording_nft"])
    routing = IPRouteLinks(netns=NS)
    try:
        return reconcile_once(config, fetch=make_fetcher(config), backend=backend,
                              now=NOW + 60, firewall=firewall, routing=routing)
    finally:
        backend.close()
        routing.close()


def _files(state: Path) -> dict[str, tuple[int, int, int]]:
    """Every file the agent keeps: inode, size, mtime. wireguard-go's own log is
    left out (the daemon writes it, not the agent)."""
    return {str(p.relative_to(state)): (p.stat().st_ino, p.stat().st_size,
                                        p.stat().st_mtime_ns)
            for p in sorted(state.rglob("*"))
            if p.is_file() and not p.name.endswith((".log", ".log.1"))}


def _peer_keys(request: str) -> list[str]:
    return [line for line in request.splitlines() if line.startswith("public_key=")]


@pytest.mark.parametrize("relay", [False, True], ids=["plain", "relay"])
def test_noop_passes_read_only_and_one_peer_change_is_one_peer(world, relay) -> None:
    devices = _devices(PEERS, relay)
    _publish(world, devices, serial=1)
    first = _pass(world)
    assert first.applied > PEERS  # created: the interface, every peer, the table
    assert any(r.startswith("set=1") for r in world["requests"])
    assert any("-f" in cmd for cmd in world["nft"])

    for n in (2, 3, 4):
        world["requests"].clear()
        world["nft"].clear()
        before = _files(world["state"])
        result = _pass(world)
        assert result.applied == 0 and result.operations == ()
        assert world["requests"] and all(r == "get=1\n\n" for r in world["requests"])
        assert not any("-f" in cmd for cmd in world["nft"])
        after = _files(world["state"])
        if n == 2:  # the first look at the peers pass 1 created: their liveness is noted
            assert {k for k in after if after[k] != before.get(k)} <= {"peering.json"}
        else:
            assert after == before  # nothing written, nothing replaced

    # one peer changes (a new endpoint) in a new serial: one peer over UAPI
    devices[7] = replace(devices[7], endpoint="192.0.2.7:51820")
    _publish(world, devices, serial=2)
    world["requests"].clear()
    world["nft"].clear()
    result = _pass(world)
    sets = [r for r in world["requests"] if r.startswith("set=1")]
    assert result.applied == 1 and len(sets) == 1
    touched = {key for r in sets for key in _peer_keys(r)}
    assert touched == {f"public_key={uapi.key_to_hex(devices[7].wireguard_public_key)}"}
    assert "endpoint=192.0.2.7:51820" in sets[0]
    assert not any("-f" in cmd for cmd in world["nft"])  # the table did not change


def test_noop_pass_still_sees_drift(world) -> None:
    devices = _devices(PEERS)
    _publish(world, devices, serial=1)
    _pass(world)
    _pass(world)
    gone = devices[42].wireguard_public_key
    # someone removes a peer behind the agent's back, and flushes the table
    client = uapi.UapiClient(f"/var/run/wireguard/{IFACE}.sock")
    client.set([f"public_key={uapi.key_to_hex(gone)}", "remove=true"], "drift")
    subprocess.run(["ip", "netns", "exec", NS, "nft", "flush", "table", "inet", "meshops"],
                   check=True)
    world["requests"].clear()
    world["nft"].clear()
    result = _pass(world)
    assert result.applied == 2  # the peer added back, the table replaced
    sets = [r for r in world["requests"] if r.startswith("set=1")]
    assert {key for r in sets for key in _peer_keys(r)} == {f"public_key={uapi.key_to_hex(gone)}"}
    assert any("-f" in cmd for cmd in world["nft"])
    assert gone in client.get(IFACE).peers
    world["requests"].clear()
    assert _pass(world).applied == 0
    assert all(r == "get=1\n\n" for r in world["requests"])
