"""The responder: the pure ``respond``, the threaded and the asyncio variants, pystun3."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import stun
import vectors as v
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import ConfigError
from reconciler.stun import message as m
from reconciler.stun.server import StunResponder, create_stun_endpoint, respond

SOURCE = ("198.51.100.7", 40000)
TXID = bytes(range(12))


def _answer(reply: bytes | None) -> m.BindingResponse:
    assert reply is not None
    msg = m.decode(reply)
    assert msg is not None
    answer = m.read_binding_response(msg)
    assert answer is not None
    return answer


def test_rfc5389_request_gets_xor_mapped_mapped_software_fingerprint():
    reply = respond(m.binding_request(TXID), SOURCE)
    msg = m.decode(reply)
    assert (msg.method, msg.cls, msg.transaction_id) == (m.BINDING, m.SUCCESS, TXID)
    assert m.decode_xor_address(msg.get(m.XOR_MAPPED_ADDRESS), TXID) == SOURCE
    assert m.decode_address(msg.get(m.MAPPED_ADDRESS)) == SOURCE
    assert msg.get(m.SOFTWARE) == b"meshops"
    assert m.verify_fingerprint(msg) is True


def test_ipv6_and_v4_mapped_sources():
    assert _answer(respond(m.binding_request(TXID), ("2001:db8::5", 7, 0, 0))).mapped == (
        "2001:db8::5", 7)
    assert _answer(respond(m.binding_request(TXID), ("::ffff:203.0.113.4", 9, 0, 0))).mapped == (
        "203.0.113.4", 9)


def test_rfc3489_request_gets_mapped_address_and_echoed_id():
    full_id = b"\x01\x02\x03\x04" + TXID
    reply = respond(struct.pack("!HH", 0x0001, 0) + full_id, SOURCE)
    msg = m.decode(reply)
    assert msg.classic and msg.full_id == full_id
    assert msg.get(m.XOR_MAPPED_ADDRESS) is None
    assert m.decode_address(msg.get(m.MAPPED_ADDRESS)) == SOURCE
    assert len(msg.get(m.SOFTWARE)) % 4 == 0  # RFC 3489 readers do not skip padding


def test_change_request_for_another_address_is_not_answered():
    change = (m.CHANGE_REQUEST, struct.pack("!I", 0x6))
    assert respond(m.encode(m.BINDING, m.REQUEST, TXID, [change]), SOURCE) is None
    keep = (m.CHANGE_REQUEST, struct.pack("!I", 0))
    assert _answer(respond(m.encode(m.BINDING, m.REQUEST, TXID, [keep]), SOURCE)).mapped == SOURCE


def test_unknown_comprehension_required_attribute_gets_420():
    # RFC 5769 2.1 carries PRIORITY (0x0024), an ICE attribute a plain STUN server does not know
    reply = respond(v.SAMPLE_REQUEST, SOURCE)
    msg = m.decode(reply)
    assert _answer(reply).error[0] == 420
    assert msg.get(m.UNKNOWN_ATTRIBUTES) == b"\x00\x24"
    assert m.verify_fingerprint(msg) is True


def test_other_method_gets_400_and_non_requests_are_ignored():
    reply = m.decode(respond(m.encode(0x003, m.REQUEST, TXID), SOURCE))
    assert (reply.method, reply.cls) == (0x003, m.ERROR)
    assert m.decode_error_code(reply.get(m.ERROR_CODE))[0] == 400
    assert respond(m.encode(m.BINDING, m.INDICATION, TXID), SOURCE) is None
    assert respond(v.SAMPLE_IPV4_RESPONSE, SOURCE) is None
    assert respond(b"\x01\x00\x00\x00garbage", SOURCE) is None


def test_bad_fingerprint_is_ignored():
    raw = bytearray(m.binding_request(TXID))
    raw[-1] ^= 0xFF
    assert respond(bytes(raw), SOURCE) is None


@settings(max_examples=300)
@given(st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=100).map(lambda b: struct.pack("!HHI", 1, len(b) & ~3, m.MAGIC_COOKIE)
                                + TXID + b[: len(b) & ~3]),
))
def test_respond_never_raises_on_garbage(data):
    reply = respond(data, SOURCE)
    assert reply is None or m.decode(reply) is not None


def test_threaded_responder_answers_pystun3_and_survives_garbage():
    with StunResponder("127.0.0.1", 0) as server:
        assert server.port > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(2)
            for junk in (b"", b"\xff" * 3, b"\x00\x01\x00\x04" + b"\0" * 16):
                s.sendto(junk, ("127.0.0.1", server.port))
            stun._initialize()
            port = s.getsockname()[1]
            result = stun.stun_test(s, "127.0.0.1", server.port, "127.0.0.1", port)
        assert result["Resp"] is True
        assert (result["ExternalIP"], result["ExternalPort"]) == ("127.0.0.1", port)
        assert server.stats.answered == 1
        assert server.stats.ignored >= 3


def test_busy_port_is_a_config_error():
    with StunResponder("127.0.0.1", 0) as first, \
            pytest.raises(ConfigError, match="already in use"):
        StunResponder("127.0.0.1", first.port).start()


def test_asyncio_endpoint_answers():
    async def scenario() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, protocol = await create_stun_endpoint(loop, "127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                await loop.sock_sendto(s, m.binding_request(TXID), ("127.0.0.1", port))
                data = await asyncio.wait_for(loop.sock_recv(s, 2048), 2)
                assert protocol.stats.answered == 1
                mapped = _answer(data).mapped
                assert mapped == s.getsockname()
                return mapped
        finally:
            transport.close()

    assert asyncio.run(scenario())[0] == "127.0.0.1"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=15))
def test_threaded_responder_keeps_answering_after_fuzzed_datagrams(junk):
    with StunResponder("127.0.0.1", 0, poll=0.02) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        for datagram in junk:
            s.sendto(datagram, ("127.0.0.1", server.port))
        s.sendto(m.binding_request(TXID), ("127.0.0.1", server.port))
        while True:  # fuzzed datagrams may be valid requests too: skip their answers
            data, _ = s.recvfrom(2048)
            msg = m.decode(data)
            if msg is not None and msg.transaction_id == TXID and msg.cls == m.SUCCESS:
                break
        assert m.decode_xor_address(msg.get(m.XOR_MAPPED_ADDRESS), TXID) == s.getsockname()
