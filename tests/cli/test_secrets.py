"""``meshops secrets decrypt|encrypt``: output on stdout, exit codes, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "sops"
FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"


@pytest.fixture(scope="module")
def home() -> Iterator[str]:
    key = FIXTURES / "sops_functional_tests_key.asc"
    if not key.is_file():
        message = f"SOPS test vectors not found at {FIXTURES.resolve()}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    path = tempfile.mkdtemp(prefix="meshops-gpg-")
    try:
        subprocess.run(["gpg", "--homedir", path, "--batch", "--import", str(key)],
                       check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["gpgconf", "--homedir", path, "--kill", "gpg-agent"],
                       check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def test_decrypt_fixture_with_comments(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["secrets", "decrypt", str(FIXTURES / "comments.enc.yaml"), "--gnupghome", home])
    assert code == 0
    assert capsys.readouterr().out == (
        "# first comment in file\nlorem: ipsum\n# this-is-a-comment\ndolor: sit\n")


def test_decrypt_json(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secrets", "decrypt", str(FIXTURES / "format.enc.json"),
                 "--gnupghome", home]) == 0
    assert capsys.readouterr().out == '{\n\t"foo": "bar"\n}\n'


def test_encrypt_then_decrypt(home: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "creds.yaml"
    plain.write_text("# db\nuser: admin\npassword: hunter2\nport_unencrypted: 5432\n")
    assert main(["secrets", "encrypt", str(plain), "--pgp", f"{FP_MAIN},{FP_SECOND}",
                 "--gnupghome", home]) == 0
    encrypted = capsys.readouterr().out
    assert "hunter2" not in encrypted and "port_unencrypted: 5432" in encrypted
    assert encrypted.count("fp: ") == 2
    sealed = tmp_path / "creds.enc"
    sealed.write_text(encrypted)
    assert main(["secrets", "decrypt", str(sealed), "--input-type", "yaml",
                 "--gnupghome", home]) == 0
    assert capsys.readouterr().out == plain.read_text()


def test_encrypt_with_a_rule(home: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "c.json"
    plain.write_text('{"host": "db", "password": "pw"}')
    assert main(["secrets", "encrypt", str(plain), "--pgp", FP_MAIN, "--encrypted-regex",
                 "^password$", "--gnupghome", home]) == 0
    out = capsys.readouterr().out
    assert '"host": "db"' in out and '"encrypted_regex": "^password$"' in out


def test_no_mac_is_refused_unless_asked(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = str(FIXTURES / "no_mac.yaml")
    assert main(["secrets", "decrypt", target, "--gnupghome", home]) == 1
    assert "no MAC" in capsys.readouterr().err
    assert main(["secrets", "decrypt", target, "--gnupghome", home, "--ignore-mac"]) == 0
    assert capsys.readouterr().out == "myapp1: t00m4nys3cr3tzupdated\n"


def test_wrong_home_names_the_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tempfile.mkdtemp(prefix="meshops-gpg-")
    try:
        code = main(["secrets", "decrypt", str(FIXTURES / "multiple_keys.yaml"),
                     "--gnupghome", empty])
        err = capsys.readouterr().err
    finally:
        subprocess.run(["gpgconf", "--homedir", empty, "--kill", "gpg-agent"],
                       check=False, capture_output=True)
        shutil.rmtree(empty, ignore_errors=True)
    assert code == 1
    assert "no usable secret key" in err and FP_MAIN in err and FP_SECOND in err


def test_usage_errors(home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secrets", "decrypt", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    odd = tmp_path / "x.txt"
    odd.write_text("a: 1\n")
    assert main(["secrets", "encrypt", str(odd), "--pgp", FP_MAIN, "--gnupghome", home]) == 1
    assert "--input-type" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["secrets", "encrypt", str(odd)])  # --pgp is required
    assert exited.value.code == 2
