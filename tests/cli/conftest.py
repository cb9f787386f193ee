"""Fixtures shared by the CLI tests: a writable copy of example-repo and a
GNUPGHOME holding its example PGP key (one per test module)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


@pytest.fixture(scope="module")
def gnupghome(tmp_path_factory):
    from reconciler.hub.publish import example_gnupghome

    home = tmp_path_factory.mktemp("gnupg")
    example_gnupghome(EXAMPLE, home)
    yield str(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of example-repo (a plain directory, not a git repository)."""
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE, dst)
    return dst
