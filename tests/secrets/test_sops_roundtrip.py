"""Our own encrypt -> decrypt round trip, layout of what we write, crypt rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.errors import SecretsError
from reconciler.secrets import formats, sops
from reconciler.secrets.gpg import Gpg
from reconciler.secrets.rules import CryptRules
from reconciler.secrets.values import Comment, is_encrypted

FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DOC = {
    "name": "hub",
    "port": 51820,
    "ratio": 0.25,
    "enabled": True,
    "nothing": None,
    "empty": "",
    "unicode": "grüße 😀",
    "nested": {"list": [1, "two", False, {"deep": "x"}], "public_unencrypted": "clear"},
}


def test_round_trip_yaml(gpg: Gpg) -> None:
    text = sops.encrypt(DOC, [FP_MAIN], gpg=gpg, now=NOW)
    loaded = formats.loads(text, "yaml")
    assert is_encrypted(loaded["name"]) and str(loaded["port"]).endswith("type:int]")
    assert str(loaded["enabled"]).endswith("type:bool]")
    assert loaded["nothing"] is None and loaded["empty"] == ""
    assert loaded["nested"]["public_unencrypted"] == "clear"  # type: ignore[index]
    meta = loaded["sops"]
    assert meta["lastmodified"] == "2026-01-02T03:04:05Z"  # type: ignore[index]
    assert meta["unencrypted_suffix"] == "_unencrypted"  # type: ignore[index]
    assert [p["fp"] for p in meta["pgp"]] == [FP_MAIN]  # type: ignore[index]
    assert meta["pgp"][0]["created_at"] == "2026-01-02T03:04:05Z"  # type: ignore[index]
    assert sops.decrypt(text, gpg=gpg) == DOC


def test_round_trip_json_keeps_order(gpg: Gpg) -> None:
    text = sops.encrypt(DOC, [FP_MAIN, FP_SECOND], gpg=gpg, fmt="json", now=NOW)
    raw = json.loads(text)
    assert list(raw) == [*DOC, "sops"]
    assert len(raw["sops"]["pgp"]) == 2
    back = sops.decrypt(text, gpg=gpg, fmt="json")
    assert back == DOC and list(back) == list(DOC)


def test_comments_are_encrypted_and_restored(gpg: Gpg) -> None:
    doc = formats.loads("# top\na: 1\nb:\n    # inner secret\n    c: 2\n", "yaml")
    text = sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW)
    assert "inner secret" not in text and "#ENC[AES256_GCM," in text
    back = sops.decrypt(text, gpg=gpg, keep_comments=True)
    assert formats.dumps(back, "yaml") == "# top\na: 1\nb:\n    # inner secret\n    c: 2\n"
    assert sops.decrypt(text, gpg=gpg) == {"a": 1, "b": {"c": 2}}


def test_injected_randomness_is_used(gpg: Gpg) -> None:
    calls: list[int] = []

    def fake_random(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    text = sops.encrypt({"a": "x"}, [FP_MAIN], gpg=gpg, now=NOW, random=fake_random)
    assert calls == [32, 32, 32]  # data key, one value nonce, the MAC nonce
    assert sops.decrypt(text, gpg=gpg) == {"a": "x"}


@pytest.mark.parametrize(
    ("rules", "clear"),
    [
        (CryptRules(unencrypted_suffix="_pub"), {"host_pub"}),
        (CryptRules(encrypted_suffix="_secret"), {"host_pub", "plain"}),
        (CryptRules(unencrypted_regex="^host"), {"host_pub"}),
        (CryptRules(encrypted_regex="^(db_secret|plain)$"), {"host_pub"}),
    ],
)
def test_crypt_rules(gpg: Gpg, rules: CryptRules, clear: set[str]) -> None:
    doc = {"host_pub": "db.example", "db_secret": {"password": "pw"}, "plain": "p"}
    text = sops.encrypt(doc, [FP_MAIN], gpg=gpg, rules=rules, now=NOW)
    loaded = formats.loads(text, "yaml")
    seen_clear = {k for k in doc if not is_encrypted(loaded[k]) and not isinstance(
        loaded[k], dict)}
    if not isinstance(loaded["db_secret"], dict) or not is_encrypted(
            loaded["db_secret"]["password"]):
        seen_clear.add("db_secret")
    assert seen_clear == clear
    assert sops.decrypt(text, gpg=gpg) == doc


def test_mac_only_encrypted(gpg: Gpg) -> None:
    rules = CryptRules(encrypted_regex="^secret$", mac_only_encrypted=True)
    text = sops.encrypt({"secret": "s", "note": "n"}, [FP_MAIN], gpg=gpg, rules=rules, now=NOW)
    assert "mac_only_encrypted: true" in text
    # with mac_only_encrypted the clear values are outside the MAC (sops semantics)
    assert sops.decrypt(text.replace("note: n", "note: m"), gpg=gpg) == {"secret": "s", "note": "m"}


def test_refusals(gpg: Gpg) -> None:
    with pytest.raises(SecretsError, match="already has a top-level 'sops' key"):
        sops.encrypt({"sops": {}}, [FP_MAIN], gpg=gpg)
    with pytest.raises(SecretsError, match="at least one PGP recipient"):
        sops.encrypt({"a": 1}, [], gpg=gpg)
    with pytest.raises(SecretsError, match="cannot encrypt the data key to 00112233"):
        sops.encrypt({"a": 1}, ["0011223344556677889900112233445566778899"], gpg=gpg)
    with pytest.raises(SecretsError, match="not a PGP fingerprint"):
        sops.encrypt({"a": 1}, ["not-hex"], gpg=gpg)
    with pytest.raises(SecretsError, match="only string keys"):
        sops.encrypt({1: "a"}, [FP_MAIN], gpg=gpg)  # type: ignore[dict-item]
    with pytest.raises(SecretsError, match="cannot write this document as JSON"):
        formats.dumps({"a": float("nan")}, "json")


def test_hand_edited_clear_value_in_encrypted_path(gpg: Gpg) -> None:
    text = sops.encrypt({"a": "x", "b": "y"}, [FP_MAIN], gpg=gpg, now=NOW)
    loaded = formats.loads(text, "yaml")
    edited = text.replace(str(loaded["b"]), "plain")
    with pytest.raises(SecretsError, match="'b:' is not encrypted"):
        sops.decrypt(edited, gpg=gpg)


def test_files(gpg: Gpg, tmp_path: Path) -> None:
    plain = tmp_path / "s.yml"
    plain.write_text("# note\nkey: value\n")
    text = sops.encrypt_file(plain, [FP_MAIN], gpg=gpg, now=NOW)
    enc = tmp_path / "s.enc.yaml"
    enc.write_text(text)
    assert sops.decrypt_file(enc, gpg) == {"key": "value"}
    kept = sops.decrypt_file(enc, gpg, keep_comments=True)
    assert isinstance(next(iter(kept)), Comment)
    with pytest.raises(SecretsError, match="--input-type"):
        sops.decrypt_file(tmp_path / "s.txt", gpg)
    with pytest.raises(SecretsError, match="cannot read"):
        sops.decrypt_file(tmp_path / "missing.yaml", gpg)
