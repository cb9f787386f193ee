"""The stdlib X25519 derivation matches the reference implementation."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.converge.keys import decode_key, public_key, short


def test_public_key_matches_cryptography() -> None:
    for _ in range(20):
        k = X25519PrivateKey.generate()
        raw = k.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert public_key(base64.b64encode(raw).decode()) == base64.b64encode(pub).decode()


def test_rfc7748_vector() -> None:
    # RFC 7748 section 6.1, Alice's key pair.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    want = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(base64.b64encode(alice).decode()) == base64.b64encode(want).decode()


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_bad_keys_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_key(bad)


def test_short() -> None:
    assert short("wXyzABCDEF") == "wXyz…"
