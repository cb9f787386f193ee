"""Unit tests for the SOPS value cipher (reconciler.secrets.values)."""

from __future__ import annotations

import base64
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SecretsError
from reconciler.secrets.values import (
    AuthenticationFailed,
    Comment,
    decrypt_value,
    encrypt_value,
    go_format_float,
    is_encrypted,
    mac_bytes,
)

KEY = bytes(range(32))


def counter_random(n: int) -> bytes:
    return bytes([7]) * n


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (25.4, "25.4"),
        (1234568000.0, "1234568000"),
        (1e21, "1000000000000000000000"),
        (1e-7, "0.0000001"),
        (-0.5, "-0.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_go_format_float(value: float, expected: str) -> None:
    assert go_format_float(value) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_format_float_round_trips(value: float) -> None:
    text = go_format_float(value)
    assert "e" not in text.lower()
    assert float(text) == value


def test_encrypted_value_layout() -> None:
    text = encrypt_value("bar", KEY, "foo:", random=counter_random)
    assert text.startswith("ENC[AES256_GCM,data:") and text.endswith(",type:str]")
    fields = dict(part.split(":", 1) for part in text[len("ENC[AES256_GCM,"):-1].split(","))
    assert len(base64.b64decode(fields["iv"])) == 32
    assert len(base64.b64decode(fields["tag"])) == 16
    assert len(base64.b64decode(fields["data"])) == 3  # GCM: ciphertext as long as plaintext
    assert is_encrypted(text)


@pytest.mark.parametrize(
    ("value", "kind"),
    [("s", "str"), (42, "int"), (-7, "int"), (2.5, "float"), (True, "bool"), (False, "bool"),
     (b"\x00\xff", "bytes")],
)
def test_typed_round_trip(value: object, kind: str) -> None:
    text = encrypt_value(value, KEY, "a:b:", random=counter_random)
    assert text.endswith(f"type:{kind}]")
    back = decrypt_value(text, KEY, "a:b:")
    assert back == value and type(back) is type(value)


def test_comment_round_trip() -> None:
    text = encrypt_value(Comment(" hi"), KEY, ":", random=counter_random)
    assert text.endswith("type:comment]")
    back = decrypt_value(text, KEY, ":")
    assert isinstance(back, Comment) and back.text == " hi"


def test_wrong_aad_or_key_is_refused() -> None:
    text = encrypt_value("secret", KEY, "a:", random=counter_random)
    with pytest.raises(AuthenticationFailed):
        decrypt_value(text, KEY, "b:")
    with pytest.raises(AuthenticationFailed):
        decrypt_value(text, bytes(32), "a:")


def test_not_an_encrypted_value() -> None:
    with pytest.raises(SecretsError, match="not a sops-encrypted value"):
        decrypt_value("plain", KEY, "a:")
    with pytest.raises(SecretsError, match="base64"):
        decrypt_value("ENC[AES256_GCM,data:!!,iv:AA==,tag:AA==,type:str]", KEY, "a:")


def test_mac_bytes_follow_sops_to_bytes() -> None:
    assert mac_bytes(True) == b"True" and mac_bytes(False) == b"False"
    assert mac_bytes(3) == b"3" and mac_bytes(3.0) == b"3" and mac_bytes("x") == b"x"
    assert mac_bytes("") == b""


def test_comments_are_identity_keyed() -> None:
    first, second = Comment("same"), Comment("same")
    assert {first: None, second: None}.keys() == {first, second}
