"""Every SOPS test vector written by real sops releases decrypts and passes its MAC;
tampered copies are refused with a precise reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.errors import SecretsError
from reconciler.secrets import formats, sops
from reconciler.secrets.gpg import Gpg
from reconciler.secrets.values import Comment, is_encrypted

FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"
GOOD = [
    "comments.enc.yaml",
    "comments_unencrypted_comments.yaml",
    "example.json",
    "example.yaml",
    "format.enc.json",
    "format.enc.yaml",
    "multiple_keys.yaml",
]
EXPECTED = {
    "format.enc.yaml": {"foo": "bar"},
    "format.enc.json": {"foo": "bar"},
    "multiple_keys.yaml": {"message": "hello"},
    "comments.enc.yaml": {"lorem": "ipsum", "dolor": "sit"},
    "comments_unencrypted_comments.yaml": {"lorem": "ipsum", "dolor": "sit"},
}


def test_every_fixture_is_covered(fixtures_dir: Path) -> None:
    data_files = {p.name for p in fixtures_dir.iterdir() if p.suffix in (".yaml", ".json")}
    assert data_files == set(GOOD) | {"no_mac.yaml"}


@pytest.mark.parametrize("name", GOOD)
def test_fixture_decrypts_and_passes_its_mac(fixtures_dir: Path, gpg: Gpg, name: str) -> None:
    doc = sops.decrypt_file(fixtures_dir / name, gpg)
    assert "sops" not in doc
    if name in EXPECTED:
        assert doc == EXPECTED[name]
    assert not any(is_encrypted(v) for v in _leaves(doc))


def test_example_yaml_values(fixtures_dir: Path, gpg: Gpg) -> None:
    doc = sops.decrypt_file(fixtures_dir / "example.yaml", gpg)
    assert doc["myapp1"] == "t00m4nys3cr3tzupdated"
    assert doc["app2"]["db"] == {"user": "eve", "password": "c4r1b0u"}  # type: ignore[index]
    assert doc["number"] == 1234568000.0 and isinstance(doc["number"], float)
    assert doc["somebooleans"] == [True, False]
    assert doc["this"]["is"]["a"]["nested"]["value"] == "with something secret in it"  # type: ignore[index]
    assert doc["nested_unencrypted"] == {"this": {"is": {"all": "going to remain in clear text"}}}
    assert str(doc["app2"]["key"]).startswith("-----BEGIN RSA PRIVATE KEY-----\n")  # type: ignore[index]


def test_example_json_values(fixtures_dir: Path, gpg: Gpg) -> None:
    doc = sops.decrypt_file(fixtures_dir / "example.json", gpg)
    assert doc["firstName"] == "John" and doc["age"] == 25.4
    assert doc["anEmptyValue"] == ""
    assert doc["phoneNumbers"][1] == {"number": "646 555-4567", "type": "office"}  # type: ignore[index]


@pytest.mark.parametrize("name", ["comments.enc.yaml", "example.yaml"])
def test_encrypted_comments_decrypt(fixtures_dir: Path, gpg: Gpg, name: str) -> None:
    doc = sops.decrypt_file(fixtures_dir / name, gpg, keep_comments=True)
    comments = _comments(doc)
    assert comments and not any(is_encrypted(c.text) for c in comments)
    if name == "comments.enc.yaml":
        assert [c.text for c in comments] == [" first comment in file", " this-is-a-comment"]
        assert formats.dumps(doc, "yaml") == (
            "# first comment in file\nlorem: ipsum\n# this-is-a-comment\ndolor: sit\n")
    else:
        nested = doc["this"]["is"]["a"]["nested"]  # type: ignore[index]
        assert [k.text for k in nested if isinstance(k, Comment)] == [
            " sops supports unencrypted fields",
            " by adding the `_unencrypted` suffix",
            " to any key",
        ]


def test_clear_comments_from_old_sops_are_kept(fixtures_dir: Path, gpg: Gpg) -> None:
    doc = sops.decrypt_file(fixtures_dir / "comments_unencrypted_comments.yaml", gpg,
                            keep_comments=True)
    assert [c.text for c in _comments(doc)] == [" first comment in file", " this-is-a-comment"]


def test_no_mac_is_refused(fixtures_dir: Path, gpg: Gpg) -> None:
    with pytest.raises(SecretsError, match="no MAC"):
        sops.decrypt_file(fixtures_dir / "no_mac.yaml", gpg)
    text = (fixtures_dir / "no_mac.yaml").read_text()
    assert sops.decrypt(text, gpg=gpg, ignore_mac=True) == {"myapp1": "t00m4nys3cr3tzupdated"}


def test_multiple_keys_decrypts_with_the_second_key_alone(
    fixtures_dir: Path, gpg: Gpg, tmp_path: Path
) -> None:
    # the file lists FP_MAIN first; drop it so only the second recipient can help
    text = (fixtures_dir / "multiple_keys.yaml").read_text()
    start = text.index("    -   created_at")
    second = text.index("    -   created_at", start + 1)
    assert sops.decrypt(text[:start] + text[second:], gpg=gpg) == {"message": "hello"}


# ------------------------------------------------------------------ tampering


def _read(fixtures_dir: Path, name: str) -> str:
    return (fixtures_dir / name).read_text()


def test_flipped_ciphertext_byte_is_refused(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "format.enc.yaml")
    tampered = text.replace("data:8CvE,", "data:8CvF,")
    assert tampered != text
    with pytest.raises(SecretsError, match="'foo:' failed authentication"):
        sops.decrypt(tampered, gpg=gpg)


def test_flipped_tag_byte_is_refused(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "format.enc.json")
    tampered = text.replace("tag:FeziVN+", "tag:GeziVN+")
    assert tampered != text
    with pytest.raises(SecretsError, match="failed authentication"):
        sops.decrypt(tampered, gpg=gpg, fmt="json")


def test_value_moved_to_another_key_is_named(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "example.yaml")
    user = re.search(r"user: (ENC\[.*\])", text)
    password = re.search(r"password: (ENC\[.*\])", text)
    assert user and password
    swapped = text.replace(user.group(1), "@@").replace(password.group(1), user.group(1))
    swapped = swapped.replace("@@", password.group(1))
    with pytest.raises(SecretsError, match="'app2:db:user:' was encrypted for the key path "
                       "'app2:db:password:'"):
        sops.decrypt(swapped, gpg=gpg)


def test_changed_unencrypted_value_breaks_the_mac(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "example.yaml")
    tampered = text.replace("going to remain in clear text", "changed by an attacker")
    with pytest.raises(SecretsError, match="MAC mismatch"):
        sops.decrypt(tampered, gpg=gpg)


def test_removed_value_breaks_the_mac(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "example.yaml")
    tampered = re.sub(r"^myapp1: ENC\[[^\n]*\n", "", text, flags=re.MULTILINE)
    assert tampered != text
    with pytest.raises(SecretsError, match="MAC mismatch"):
        sops.decrypt(tampered, gpg=gpg)


def test_altered_lastmodified_breaks_the_mac(fixtures_dir: Path, gpg: Gpg) -> None:
    text = _read(fixtures_dir, "format.enc.yaml")
    tampered = text.replace('lastmodified: "2026-05-22T20:16:23Z"',
                            'lastmodified: "2026-05-22T20:16:24Z"')
    assert tampered != text
    with pytest.raises(SecretsError, match="MAC failed authentication"):
        sops.decrypt(tampered, gpg=gpg)


def test_wrong_key_names_the_wanted_fingerprints(
    fixtures_dir: Path, other_home: tuple[str, str]
) -> None:
    home, _fp = other_home
    with pytest.raises(SecretsError) as caught:
        sops.decrypt_file(fixtures_dir / "example.yaml", Gpg(home))
    message = str(caught.value)
    assert message.startswith("no usable secret key")
    assert FP_MAIN in message and FP_SECOND in message and home in message


def test_not_a_sops_file(gpg: Gpg) -> None:
    with pytest.raises(SecretsError, match="no top-level 'sops'"):
        sops.decrypt("a: 1\n", gpg=gpg)
    with pytest.raises(SecretsError, match="not valid JSON"):
        sops.decrypt("{", gpg=gpg, fmt="json")


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _comments(value: object) -> list[Comment]:
    found: list[Comment] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, Comment):
                found.append(key)
            else:
                found.extend(_comments(item))
    elif isinstance(value, list):
        for item in value:
            found.extend([item] if isinstance(item, Comment) else _comments(item))
    return found
