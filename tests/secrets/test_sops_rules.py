"""Unit tests for the crypt rules (reconciler.secrets.rules)."""

from __future__ import annotations

import pytest

from reconciler.errors import SecretsError
from reconciler.secrets.rules import CryptRules


def test_default_is_the_unencrypted_suffix() -> None:
    rules = CryptRules().effective()
    assert rules.unencrypted_suffix == "_unencrypted"
    assert rules.should_encrypt(["a", "b"])
    assert not rules.should_encrypt(["a_unencrypted", "b"])
    assert not rules.should_encrypt(["a", "b_unencrypted"])
    assert rules.metadata() == {"unencrypted_suffix": "_unencrypted"}


def test_no_rule_in_a_file_means_everything_is_encrypted() -> None:
    rules = CryptRules.from_metadata({"lastmodified": "x"})
    assert rules.should_encrypt(["anything_unencrypted"])


def test_encrypted_suffix_encrypts_only_marked_paths() -> None:
    rules = CryptRules(encrypted_suffix="_enc")
    assert rules.should_encrypt(["db_enc", "password"])
    assert not rules.should_encrypt(["db", "host"])
    assert not rules.should_encrypt([])  # top-level comments stay clear


def test_regexes_are_searched_not_anchored() -> None:
    assert not CryptRules(unencrypted_regex="^pub").should_encrypt(["x", "public"])
    assert CryptRules(unencrypted_regex="^pub").should_encrypt(["x", "repub"])
    rules = CryptRules(encrypted_regex="pass|key")
    assert rules.should_encrypt(["db", "my_password"])
    assert not rules.should_encrypt(["db", "host"])


def test_only_one_rule_and_valid_regexes() -> None:
    with pytest.raises(SecretsError, match="choose one crypt rule"):
        CryptRules(unencrypted_suffix="_u", encrypted_regex="x")
    with pytest.raises(SecretsError, match="not a valid regex"):
        CryptRules(encrypted_regex="(")


def test_metadata_round_trip() -> None:
    rules = CryptRules(encrypted_regex="^data$", mac_only_encrypted=True)
    assert CryptRules.from_metadata(rules.metadata()) == rules
    with pytest.raises(SecretsError, match="must be a string"):
        CryptRules.from_metadata({"encrypted_regex": 5})
