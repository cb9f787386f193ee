"""Tests for the python-gnupg wrapper (reconciler.secrets.gpg)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.errors import SecretsError
from reconciler.secrets.gpg import Gpg, normalize_fingerprint

FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"
FP_PUBLIC_ONLY = "B611A2F9F11D0FF82568805119F9B5DAEA91FF86"


def test_secret_fingerprints(gpg: Gpg) -> None:
    found = gpg.secret_fingerprints()
    assert FP_MAIN in found and FP_SECOND in found
    assert FP_PUBLIC_ONLY not in found


def test_data_key_round_trip(gpg: Gpg) -> None:
    key = bytes(range(32))
    wrapped = gpg.encrypt_data_key(key, [FP_MAIN, FP_SECOND.lower()])
    assert [fp for fp, _ in wrapped] == [FP_MAIN, FP_SECOND]
    for _fp, armored in wrapped:
        assert armored.startswith("-----BEGIN PGP MESSAGE-----")
        assert gpg.decrypt_data_key(armored) == key


def test_public_only_recipient_cannot_be_decrypted(gpg: Gpg) -> None:
    (_, armored), = gpg.encrypt_data_key(b"k" * 32, [FP_PUBLIC_ONLY])
    with pytest.raises(SecretsError, match="could not decrypt the data key"):
        gpg.decrypt_data_key(armored)


def test_import_errors(gpg: Gpg) -> None:
    with pytest.raises(SecretsError, match="imported no keys"):
        gpg.import_keys("not a key")


def test_missing_binary() -> None:
    with pytest.raises(SecretsError, match="cannot run"):
        Gpg(None, binary="/nonexistent/gpg")


def test_fingerprints_are_normalized() -> None:
    assert normalize_fingerprint("0xfbc7 b9e2") == "FBC7B9E2"
    with pytest.raises(SecretsError):
        normalize_fingerprint("")


def test_key_material_never_reaches_the_logs(
    gpg: Gpg, fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # python-gnupg logs the first 256 characters of imported key data at DEBUG
    caplog.set_level(logging.DEBUG)
    gpg.import_keys((fixtures_dir / "sops_functional_tests_key.asc").read_text())
    key = b"K" * 32
    (_, armored), = gpg.encrypt_data_key(key, [FP_MAIN])
    assert gpg.decrypt_data_key(armored) == key
    assert "PRIVATE KEY BLOCK" not in caplog.text
    assert "KKKKKKKK" not in caplog.text
