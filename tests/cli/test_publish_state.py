"""``meshops hub publish`` says where its state (certificates, serials) goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cli.hub import _state_location

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def test_default_state_is_named_with_its_absolute_path(tmp_path, gnupghome, capsys,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    rc = main(["hub", "publish", str(EXAMPLE), "--out", "out", "--gnupghome", gnupghome])
    out = capsys.readouterr().out
    assert rc == 0, out
    db = tmp_path / ".meshops" / "hub.db"
    assert db.is_file()
    assert f"state (issued certificates, serials): {db};" in out
    # the second run reuses it: no certificate is issued again
    assert main(["hub", "publish", str(EXAMPLE), "--out", "out", "--gnupghome", gnupghome]) == 0
    assert "0 certificate(s) issued" in capsys.readouterr().out


@pytest.mark.parametrize("url,shown", [
    ("sqlite:////var/lib/meshops/publish.db", "/var/lib/meshops/publish.db"),
    ("sqlite:///:memory:", ":memory:"),
    ("postgresql://hub:s3cret@db.example.net:5433/meshops?sslmode=require",
     "postgresql://hub@db.example.net:5433/meshops"),
    ("postgresql:///meshops", "postgresql:///meshops"),
    ("postgres://hub:p%40ss@db/meshops", "postgres://hub@db/meshops"),
])  # fmt: skip
def test_state_location_never_shows_a_password(url, shown):
    assert _state_location(url) == shown
    assert "s3cret" not in _state_location(url) and "p%40ss" not in _state_location(url)


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _state_location("sqlite:///state/hub.db") == str(tmp_path / "state/hub.db")
    assert _state_location("hub.db") == str(tmp_path / "hub.db")
