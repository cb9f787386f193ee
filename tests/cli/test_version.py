"""``meshops --version``: the installed package's version, from its metadata."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from reconciler.cli import main, package_version

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"meshops {version('meshops')}\n"


def test_metadata_matches_pyproject():
    """The installed metadata is this tree's (a stale install would show here)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert package_version() == project["version"]


def test_version_wins_over_a_missing_command():
    """`meshops --version` alone works, though a COMMAND is otherwise required."""
    done = subprocess.run([sys.executable, "-m", "reconciler", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"meshops {version('meshops')}"


def test_unknown_distribution_says_how_to_install(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", missing)
    assert "pip install -e ." in package_version()
