"""``meshops hub publish`` through the CLI entry point."""

from __future__ import annotations

import shutil
from pathlib import Path

from reconciler.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def test_publish_example_repo_then_verify(tmp_path, gnupghome, capsys):
    out = tmp_path / "out"
    rc = main(["hub", "publish", str(EXAMPLE), "--out", str(out),
               "--state", f"sqlite:///{tmp_path}/hub.db", "--gnupghome", gnupghome])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "acme: serial" in text and "globex: serial" in text
    for org in ("acme", "globex"):
        assert (out / org / "ca.crt").exists()
        assert list((out / org / "certs").glob("*.pem"))
        rc = main(["manifest", "verify", str(out / org / "manifest.json"),
                   "--trust", str(out / "trust.json"), "--org", org])  # fmt: skip
        assert rc == 0


def test_publish_invalid_repo_exits_1_and_writes_nothing(tmp_path, gnupghome, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    (repo / "orgs" / "acme" / "devices" / "db-1.yaml").write_text("kind: Device\nname: other\n")
    out = tmp_path / "out"
    rc = main(["hub", "publish", str(repo), "--out", str(out),
               "--state", f"sqlite:///{tmp_path}/hub.db", "--gnupghome", gnupghome])  # fmt: skip
    assert rc == 1
    assert "orgs/acme/devices/db-1.yaml" in capsys.readouterr().out
    assert not out.exists()
