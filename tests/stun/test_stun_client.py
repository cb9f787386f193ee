"""``discover`` and ``binding`` on loopback against real responders (no root)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from reconciler.errors import ConfigError
from reconciler.model.endpoints import Candidate
from reconciler.stun import message as m
from reconciler.stun.client import Discovery, binding, classify, discover, split_server
from reconciler.stun.localaddr import InterfaceAddress, lan_addresses
from reconciler.stun.server import StunResponder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fake_server(reply: Callable[[bytes, tuple], bytes | None]) -> Iterator[int]:
    """A UDP server answering every datagram with ``reply(data, source)``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except OSError:
                continue
            out = reply(data, source)
            if out is not None:
                sock.sendto(out, source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def _classic_reply(data: bytes, mapped: tuple[str, int], *, error: bool = False) -> bytes:
    req = m.decode(data)
    assert req is not None
    if error:
        attrs = [(m.ERROR_CODE, m.encode_error_code(400, "Bad Request"))]
        return m.encode(m.BINDING, m.ERROR, req.transaction_id, attrs, cookie=req.cookie)
    attrs = [(m.MAPPED_ADDRESS, m.encode_address(*mapped))]
    return m.encode(m.BINDING, m.SUCCESS, req.transaction_id, attrs, cookie=req.cookie)


def test_discover_two_responders_on_loopback_is_independent():
    port = _free_port()
    with StunResponder("127.0.0.1", 0) as a, StunResponder("127.0.0.1", 0) as b:
        found = discover(port, [f"127.0.0.1:{a.port}", ("127.0.0.1", b.port)], timeout=2)
    assert found.mapping == "independent"
    assert found.public_ip == "127.0.0.1"
    assert [addr for _, addr in found.mapped] == [f"127.0.0.1:{port}"] * 2
    assert {server for server, _ in found.mapped} == {f"127.0.0.1:{a.port}",
                                                      f"127.0.0.1:{b.port}"}
    assert found.candidates()[0] == Candidate("stun", f"127.0.0.1:{port}")
    assert all(c.kind == "local" for c in found.candidates()[1:])
    assert found.problems == ()


def test_different_mapped_ports_mean_dependent_mapping():
    with fake_server(lambda d, s: _classic_reply(d, (s[0], s[1]))) as honest, \
            fake_server(lambda d, s: _classic_reply(d, (s[0], s[1] + 1))) as shifted:
        found = discover(_free_port(), [("127.0.0.1", honest), ("127.0.0.1", shifted)])
    assert found.mapping == "dependent"
    assert len(found.mapped) == 2


def test_busy_listen_port_probes_from_an_ephemeral_port():
    with StunResponder("127.0.0.1", 0) as a, StunResponder("127.0.0.1", 0) as b, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", 0))  # stands in for wireguard-go
        busy = holder.getsockname()[1]
        found = discover(busy, [("127.0.0.1", a.port), ("127.0.0.1", b.port)])
    assert found.mapping == "independent"
    assert found.mapped == ()
    assert "in use" in found.note
    assert all(c.kind == "local" for c in found.candidates())


def test_one_silent_server_gives_unknown_within_the_timeout():
    with StunResponder("127.0.0.1", 0) as a, fake_server(lambda d, s: None) as silent:
        start = time.monotonic()
        found = discover(_free_port(), [("127.0.0.1", a.port), ("127.0.0.1", silent)],
                         timeout=0.6)
        elapsed = time.monotonic() - start
    assert found.mapping == "unknown"
    assert len(found.mapped) == 1
    assert any("no answer" in p for p in found.problems)
    assert elapsed < 5  # a hang check, not a benchmark


def test_error_response_does_not_hang_pystun3():
    with fake_server(lambda d, s: _classic_reply(d, s, error=True)) as failing, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        start = time.monotonic()
        answer = binding(sock, ("127.0.0.1", failing), timeout=0.5)
    assert answer.mapped is None
    assert "error response 400" in (answer.error or "")
    assert time.monotonic() - start < 5


def test_answers_from_other_sources_are_never_accepted():
    with fake_server(lambda d, s: None) as silent, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        sock.bind(("127.0.0.1", 0))
        forged = m.encode(m.BINDING, m.SUCCESS, b"\0" * 12,
                          [(m.MAPPED_ADDRESS, m.encode_address("203.0.113.66", 1))])
        spoofer.sendto(forged, sock.getsockname())
        answer = binding(sock, ("127.0.0.1", silent), timeout=0.4)
    assert answer.mapped is None


def test_no_servers_and_bad_port():
    found = discover(_free_port(), [])
    assert found == Discovery((), "unknown", None, found.local, "no STUN servers configured")
    with pytest.raises(ConfigError):
        discover(0, [("127.0.0.1", 3478)])
    with pytest.raises(ConfigError, match="cannot bind"):
        discover(_free_port(), [("127.0.0.1", 3478)], bind_ip="203.0.113.250")


def test_classify_and_split_server():
    assert classify([]) == "unknown"
    assert classify([("1.2.3.4", 5)]) == "unknown"
    assert classify([("1.2.3.4", 5), ("1.2.3.4", 5)]) == "independent"
    assert classify([("1.2.3.4", 5), ("1.2.3.4", 6)]) == "dependent"
    assert classify([("1.2.3.4", 5), ("1.2.3.9", 5)]) == "dependent"
    assert split_server("stun.example:3479") == ("stun.example", 3479)
    assert split_server("[2001:db8::1]:3478") == ("2001:db8::1", 3478)
    assert split_server("192.0.2.1") == ("192.0.2.1", 3478)


def test_lan_addresses_filtering():
    table = [
        InterfaceAddress("lo", "127.0.0.1", 8),
        InterfaceAddress("eth0", "192.168.1.10", 24),
        InterfaceAddress("eth0", "fe80::1", 64),
        InterfaceAddress("eth0", "2001:db8::10", 64),
        InterfaceAddress("wg0", "10.77.0.5", 16),
        InterfaceAddress("eth1", "10.77.9.9", 24),
        InterfaceAddress("eth1", "169.254.3.3", 16),
    ]
    assert lan_addresses(addresses=table) == ("192.168.1.10", "10.77.0.5", "10.77.9.9",
                                              "2001:db8::10")
    assert lan_addresses(["wg0"], ["10.77.0.0/16"], addresses=table) == ("192.168.1.10",
                                                                         "2001:db8::10")
