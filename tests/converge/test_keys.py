"""converge.keys: X25519 through cryptography, strict key decoding, no key cache."""

from __future__ import annotations

import base64
import gc
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.converge import keys
from reconciler.converge.keys import decode_key, public_key, short


def _pair() -> tuple[str, str]:
    k = X25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


def test_public_key_matches_cryptography() -> None:
    for _ in range(20):
        private, public = _pair()
        assert public_key(private) == public


@pytest.mark.parametrize(
    ("private_hex", "public_hex"),
    [  # RFC 7748 section 6.1: Alice's and Bob's key pairs
        ("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
         "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
        ("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
         "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
    ],
)
def test_rfc7748_vectors(private_hex: str, public_hex: str) -> None:
    private = base64.b64encode(bytes.fromhex(private_hex)).decode()
    assert public_key(private) == base64.b64encode(bytes.fromhex(public_hex)).decode()


def test_unclamped_scalars_are_clamped_like_wireguard() -> None:
    # wg genkey clamps; keys from elsewhere may not be. X25519 clamps on use,
    # so the clamped and the unclamped form of one scalar share a public key.
    raw = bytearray(range(32))
    clamped = bytearray(raw)
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    assert public_key(base64.b64encode(bytes(raw)).decode()) == public_key(
        base64.b64encode(bytes(clamped)).decode())


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) not installed")
def test_matches_wg_pubkey() -> None:
    for _ in range(3):
        private = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        want = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
        assert public_key(private) == want


def test_no_private_key_is_cached() -> None:
    # The module keeps nothing per call: no functools cache on any function and
    # no module-level container that grows.
    private, _ = _pair()
    public_key(private)
    for name in dir(keys):
        obj = getattr(keys, name)
        assert not hasattr(obj, "cache_info"), f"{name} is cached"
        if isinstance(obj, dict | list | set):
            assert private not in obj and private not in repr(obj)
    gc.collect()
    referrers = [r for r in gc.get_referrers(private) if r is not globals() and r is not locals()]
    assert not any(getattr(r, "__module__", None) == keys.__name__ for r in referrers)


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"short").decode(),
                                 base64.b64encode(bytes(33)).decode(), "AAAA\n"])
def test_bad_keys_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_key(bad)
    with pytest.raises(ValueError, match="private key") as info:
        public_key(bad)
    assert bad not in str(info.value) or not bad


def test_short() -> None:
    assert short("wXyzABCDEF") == "wXyz…"
