"""The codec against RFC 5769's test vectors, plus round trips and garbage."""

from __future__ import annotations

import struct

import pytest
import vectors as v
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import ConfigError
from reconciler.stun import message as m

SHORT_KEY = m.short_term_key(v.PASSWORD)


def test_sample_request_rfc5769_2_1():
    msg = m.decode(v.SAMPLE_REQUEST)
    assert msg is not None and not msg.classic
    assert (msg.method, msg.cls) == (m.BINDING, m.REQUEST)
    assert msg.transaction_id == v.TRANSACTION_ID
    assert msg.get(m.SOFTWARE) == b"STUN test client"
    assert msg.get(m.USERNAME) == b"evtj:h6vY"
    assert msg.get(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY
    assert m.verify_fingerprint(msg) is True
    assert m.verify_integrity(msg, SHORT_KEY) is True
    assert m.verify_integrity(msg, b"wrong password") is False


@pytest.mark.parametrize(
    ("raw", "mapped"),
    [(v.SAMPLE_IPV4_RESPONSE, v.IPV4_MAPPED), (v.SAMPLE_IPV6_RESPONSE, v.IPV6_MAPPED)],
    ids=["ipv4-2.2", "ipv6-2.3"],
)
def test_sample_responses_rfc5769(raw, mapped):
    msg = m.decode(raw)
    assert msg is not None and (msg.method, msg.cls) == (m.BINDING, m.SUCCESS)
    answer = m.read_binding_response(msg)
    assert answer is not None
    assert answer.mapped == mapped
    assert answer.software == "test vector"
    assert answer.error is None
    assert m.verify_fingerprint(msg) is True
    assert m.verify_integrity(msg, SHORT_KEY) is True
    # our encoder produces the same XOR-MAPPED-ADDRESS value
    assert m.encode_xor_address(*mapped, v.TRANSACTION_ID) == msg.get(m.XOR_MAPPED_ADDRESS)


def test_long_term_request_rfc5769_2_4_saslprep_and_byte_exact_encode():
    assert m.saslprep(v.LONG_TERM_PASSWORD) == "TheMatrIX"
    key = m.long_term_key(v.LONG_TERM_USERNAME, v.LONG_TERM_REALM, v.LONG_TERM_PASSWORD)
    msg = m.decode(v.SAMPLE_LONG_TERM_REQUEST)
    assert msg is not None
    assert m.verify_fingerprint(msg) is None
    assert m.verify_integrity(msg, key) is True
    assert m.verify_integrity(msg, m.long_term_key(v.LONG_TERM_USERNAME, "example.org",
                                                   "thematrix")) is False
    again = m.encode(
        m.BINDING, m.REQUEST, v.LONG_TERM_TRANSACTION_ID,
        [(m.USERNAME, v.LONG_TERM_USERNAME.encode()), (m.NONCE, v.LONG_TERM_NONCE.encode()),
         (m.REALM, v.LONG_TERM_REALM.encode())],
        integrity_key=key,
    )
    assert again == v.SAMPLE_LONG_TERM_REQUEST


def test_saslprep_refuses_prohibited_characters():
    with pytest.raises(ConfigError, match="U\\+0007"):
        m.saslprep("bell\x07")


def test_flipped_bit_breaks_fingerprint_and_integrity():
    raw = bytearray(v.SAMPLE_IPV4_RESPONSE)
    raw[30] ^= 0x01  # inside the SOFTWARE value
    msg = m.decode(bytes(raw))
    assert msg is not None
    assert m.verify_fingerprint(msg) is False
    assert m.verify_integrity(msg, SHORT_KEY) is False


def test_encode_round_trip_with_integrity_and_fingerprint():
    txid = bytes(range(12))
    raw = m.encode(m.BINDING, m.SUCCESS, txid,
                   [(m.XOR_MAPPED_ADDRESS, m.encode_xor_address("203.0.113.9", 51820, txid)),
                    (m.SOFTWARE, b"abc")],
                   integrity_key=b"k", add_fingerprint=True)
    assert struct.unpack("!H", raw[:2])[0] == 0x0101
    msg = m.decode(raw)
    assert msg is not None
    assert m.read_binding_response(msg).mapped == ("203.0.113.9", 51820)
    assert m.verify_integrity(msg, b"k") is True
    assert m.verify_fingerprint(msg) is True
    assert msg.get(m.SOFTWARE) == b"abc"


def test_message_type_bits_follow_rfc5389_figure_3():
    assert m.message_type(m.BINDING, m.REQUEST) == 0x0001
    assert m.message_type(m.BINDING, m.INDICATION) == 0x0011
    assert m.message_type(m.BINDING, m.SUCCESS) == 0x0101
    assert m.message_type(m.BINDING, m.ERROR) == 0x0111
    assert m.message_type(0x003, m.ERROR) == 0x0113  # TURN Allocate error
    assert m.split_type(0x3FFF) == (0xFFF, m.ERROR)


def test_rfc3489_response_with_changed_address():
    full_id = bytes(range(16))
    body = (struct.pack("!HH", m.MAPPED_ADDRESS, 8) + m.encode_address("198.51.100.7", 40000)
            + struct.pack("!HH", m.CHANGED_ADDRESS, 8) + m.encode_address("203.0.113.2", 3479))
    raw = struct.pack("!HH", 0x0101, len(body)) + full_id + body
    msg = m.decode(raw)
    assert msg is not None and msg.classic and msg.full_id == full_id
    answer = m.read_binding_response(msg)
    assert answer.mapped == ("198.51.100.7", 40000)
    assert answer.changed == ("203.0.113.2", 3479)


def test_error_response_is_read():
    txid = b"x" * 12
    raw = m.encode(m.BINDING, m.ERROR, txid, [(m.ERROR_CODE, m.encode_error_code(420, "Unknown"))])
    answer = m.read_binding_response(m.decode(raw))
    assert answer.error == (420, "Unknown") and answer.mapped is None
    with pytest.raises(ValueError):
        m.encode_error_code(200, "OK")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\xc0" + v.SAMPLE_REQUEST[1:], "most significant"),
        (v.SAMPLE_REQUEST[:-1], "length"),
        (v.SAMPLE_REQUEST + b"\0\0\0\0", "does not match"),
        (v.SAMPLE_REQUEST[:2] + b"\x00\x04" + v.SAMPLE_REQUEST[4:20] + b"\x00\x01\x00\x09",
         "overruns"),
    ],
)
def test_malformed_input_is_refused_with_a_reason(data, reason):
    result = m.parse(data)
    assert isinstance(result, str) and reason in result
    assert m.decode(data) is None


def test_attributes_after_integrity_are_ignored_except_fingerprint():
    txid = b"y" * 12
    signed = m.encode(m.BINDING, m.REQUEST, txid, [], integrity_key=b"k")
    extra = struct.pack("!HH", m.SOFTWARE, 4) + b"evil"
    raw = signed[:2] + struct.pack("!H", len(signed) - 20 + 8) + signed[4:] + extra
    msg = m.decode(raw)
    assert msg.get(m.SOFTWARE) is None
    assert m.verify_integrity(msg, b"k") is True


@given(st.binary(max_size=200))
def test_decode_never_raises(data):
    msg = m.decode(data)
    if msg is not None:
        m.read_binding_response(msg)
        m.verify_fingerprint(msg)
        m.verify_integrity(msg, b"k")


@given(st.ip_addresses().filter(lambda ip: getattr(ip, "ipv4_mapped", None) is None),
       st.integers(0, 65535), st.binary(min_size=12, max_size=12))
def test_address_round_trips(ip, port, txid):
    assert m.decode_address(m.encode_address(str(ip), port)) == (str(ip), port)
    assert m.decode_xor_address(m.encode_xor_address(str(ip), port, txid), txid) == (str(ip), port)
