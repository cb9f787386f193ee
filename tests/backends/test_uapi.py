"""UAPI codec against replies recorded from Debian's wireguard-go 0.0.20220316."""

from __future__ import annotations

from pathlib import Path

import pytest
from converge.cases import key, peer

from reconciler.backends import uapi
from reconciler.converge import (
    AddPeer,
    CreateInterface,
    RemovePeer,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
    public_key,
)
from reconciler.errors import BackendError, BackendUnavailable

DATA = Path(__file__).parent / "data"


def test_decode_recorded_get_reply() -> None:
    obs = uapi.decode_get("wg0", (DATA / "get_reply.txt").read_text())
    assert obs.exists and obs.name == "wg0"
    assert obs.public_key == public_key(key(1))  # wireguard-go returns the clamped key
    assert obs.listen_port == 51820
    assert set(obs.peers) == {key(2), key(3)}
    p2, p3 = obs.peers[key(2)], obs.peers[key(3)]
    assert p2.allowed_ips == ("10.0.0.2/32", "192.168.7.0/24")
    assert p2.endpoint == "203.0.113.5:51820" and p2.keepalive == 25
    assert p2.last_handshake is None
    assert p3.endpoint == "[2001:db8::3]:51820" and p3.allowed_ips == ("fd00::3/128",)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("set_einval.txt", BackendError),
        ("set_eproto.txt", BackendError),
        ("set_remove_allowed_ip.txt", BackendError),
    ],
)
def test_recorded_error_replies(name: str, error: type[Exception]) -> None:
    code = uapi.reply_errno((DATA / name).read_text())
    assert code < 0
    with pytest.raises(error):
        uapi.check_errno(code, "set wg0")


def test_eaddrinuse_is_temporary() -> None:
    with pytest.raises(BackendUnavailable, match="listen port"):
        uapi.check_errno(uapi.reply_errno("errno=-98\n\n"), "set wg0")
    uapi.check_errno(uapi.reply_errno("errno=0\n\n"), "set wg0")


def test_reply_without_errno() -> None:
    with pytest.raises(BackendError):
        uapi.reply_errno("private_key=00\n")


def test_handshake_time_decoded() -> None:
    reply = f"public_key={'02' * 32}\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\nerrno=0\n\n"
    obs = uapi.decode_get("wg0", reply)
    assert obs.public_key is None
    assert obs.peers[key(2)].last_handshake == pytest.approx(1_700_000_000.5)


def test_transactions_device_then_peers() -> None:
    ops = [
        CreateInterface("wg0", 51820, key(1)),
        SetMtu("wg0", 1420),  # link op: not UAPI
        RemovePeer("wg0", key(4)),
        UpdatePeer("wg0", key(3), allowed_ips=("10.0.0.3/32",), keepalive=0),
        AddPeer("wg0", peer(2, endpoint="[2001:DB8::5]:51820", keepalive=25)),
    ]
    device, main = uapi.transactions(ops)
    assert device == [f"private_key={'01' * 32}", "listen_port=51820"]
    assert main == [
        f"public_key={'04' * 32}",
        "remove=true",
        f"public_key={'03' * 32}",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.3/32",
        "persistent_keepalive_interval=0",
        f"public_key={'02' * 32}",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.2/32",
        "endpoint=[2001:db8::5]:51820",
        "persistent_keepalive_interval=25",
    ]
    assert uapi.encode_set(device) == f"set=1\nprivate_key={'01' * 32}\nlisten_port=51820\n\n".encode()
    assert uapi.transactions([SetMtu("wg0", 1)]) == []
    # Without a port change: one transaction, key first.
    (only,) = uapi.transactions([SetPrivateKey("wg0", key(5)), RemovePeer("wg0", key(4))])
    assert only == [f"private_key={'05' * 32}", f"public_key={'04' * 32}", "remove=true"]


def test_device_keys_precede_peer_lines() -> None:
    # After a public_key line wireguard-go reads every key as a peer key (-22).
    lines = uapi.set_lines([AddPeer("wg0", peer(2)), SetListenPort("wg0", 7), SetPrivateKey("wg0", key(5))])
    assert lines[:2] == [f"private_key={'05' * 32}", "listen_port=7"]
    assert lines[2].startswith("public_key=")


def test_allowed_ip_removal_is_a_full_replacement() -> None:
    lines = uapi.set_lines([UpdatePeer("wg0", key(2), allowed_ips=())])
    assert lines == [f"public_key={'02' * 32}", "replace_allowed_ips=true"]
    assert not any(line.startswith("allowed_ip=-") for line in lines)


def test_set_private_key_and_port() -> None:
    lines = uapi.set_lines([SetListenPort("wg0", 5), SetPrivateKey("wg0", key(7))])
    assert lines == [f"private_key={'07' * 32}", "listen_port=5"]


@pytest.mark.parametrize("bad", ["vpn.example.com:51820", "203.0.113.5", "203.0.113.5:0", "[::1]"])
def test_endpoint_must_be_ip_literal(bad: str) -> None:
    with pytest.raises(BackendError):
        uapi.uapi_endpoint(bad)


def test_bad_key_is_backend_error() -> None:
    with pytest.raises(BackendError):
        uapi.key_to_hex("bm90IGEga2V5")


def test_client_against_fake_socket(tmp_path: Path) -> None:
    from backends.fakeuapi import FakeUapi

    reply = (DATA / "get_reply.txt").read_text()
    fake = FakeUapi(str(tmp_path / "wg0.sock"), lambda req: reply if req.startswith("get") else "errno=-22\n\n")
    try:
        client = uapi.UapiClient(fake.path, timeout=2)
        assert client.alive()
        assert set(client.get("wg0").peers) == {key(2), key(3)}
        with pytest.raises(BackendError, match="-22"):
            client.set(["public_key=zz"], "set wg0")
        assert fake.requests[-1] == "set=1\npublic_key=zz\n\n"
    finally:
        fake.close()
    assert not uapi.UapiClient(fake.path).alive()
    with pytest.raises(BackendUnavailable):
        uapi.UapiClient(fake.path).get("wg0")


def _reorder(reply: str) -> str:
    """The same peers with each block's lines in another order (not wireguard-go's)."""
    head, *blocks = reply.split("public_key=")
    out = [head]
    for block in blocks:
        lines = block.rstrip("\n").split("\n")
        tail = [ln for ln in lines[1:] if ln.startswith("errno=") or not ln]
        body = [ln for ln in lines[1:] if ln not in tail]
        out.append("\n".join([lines[0], *reversed(body), *tail]) + "\n")
    return "public_key=".join(out) + ("\n" if reply.endswith("\n\n") else "")


def test_decode_any_order_equals_wireguard_go_order() -> None:
    reply = (DATA / "get_reply.txt").read_text()
    reply = reply.replace("last_handshake_time_sec=0\nlast_handshake_time_nsec=0",
                          "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5", 1)
    reply = reply.replace("rx_bytes=0", "rx_bytes=123", 1)
    fast, slow = uapi.decode_get("wg0", reply), uapi.decode_get("wg0", _reorder(reply))
    assert _reorder(reply) != reply
    assert fast == slow
    assert fast.peers[key(2)].rx_bytes == 123
    assert fast.peers[key(2)].last_handshake == pytest.approx(1_700_000_000.000000005)


def test_decode_malformed_line_is_refused() -> None:
    reply = (DATA / "get_reply.txt").read_text().replace("protocol_version=1\n",
                                                         "protocol_version=1\ngarbage\n", 1)
    with pytest.raises(BackendError, match="malformed"):
        uapi.decode_get("wg0", reply)
