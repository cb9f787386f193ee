"""``meshops hub publish`` through the CLI entry point."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"


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


# -- a publish killed with SIGKILL leaves temp files; the next publish removes them ---------

EXAMPLE_FPR = "97A75CABDC50A83D2C4A0E2DDB0237F019A9D31D"  # example-repo/keys/README.md


def _temps(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.name.startswith(".meshops-tmp.")
                  or p.name.endswith(".tmp"))


def _publish_cmd(repo: Path, out: Path, state: str, home: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "hub", "publish", str(repo), "--out", str(out),
            "--state", state, "--gnupghome", home]


def test_sigkill_during_publish_leaves_temps_that_the_next_publish_removes(tmp_path, gnupghome):
    """Really kill ``meshops hub publish`` with SIGKILL while its temp files exist (the
    batch of 600 certificates is written to temp files, synced, then renamed), several
    times; the next publish must leave no temp file, and only stale ones are removed."""
    from reconciler.config.synth import make_repo
    from reconciler.hub.publish import init_org_ca

    repo = make_repo(tmp_path / "repo", 600, orgs=1)
    (repo / "mesh.yaml").write_text((repo / "mesh.yaml").read_text()
                                    + f"pgp_recipients: ['{EXAMPLE_FPR}']\n")
    init_org_ca(repo, "org-00", now=time.time(), gpg_home=gnupghome)
    out, state = tmp_path / "out", f"sqlite:///{tmp_path}/hub.db"
    certs = out / "org-00" / "certs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hits = 0
    for _ in range(5):
        proc = subprocess.Popen(_publish_cmd(repo, out, state, gnupghome), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if any(e.name.startswith(".meshops-tmp.") for e in os.scandir(certs)):
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        if rc == -signal.SIGKILL and _temps(out):
            hits += 1
    assert hits >= 3, "the kills should land while temp files exist"
    # earlier versions' temp names, and a temp file of a writer that is still running
    (certs / ".dev-00001.pem.ab12cd34.tmp").write_text("old")
    live = subprocess.Popen(["sleep", "60"])
    try:
        keep = certs / f".meshops-tmp.{live.pid}.dev-00002.pem.zz"
        keep.write_text("in progress")
        done = subprocess.run(_publish_cmd(repo, out, state, gnupghome), env=env,
                              check=False, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _temps(out) == [keep]  # the live writer's file is not touched
    finally:
        live.kill()
        live.wait()
    done = subprocess.run(_publish_cmd(repo, out, state, gnupghome), env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _temps(out) == []  # its writer is gone now
    assert len(list(certs.glob("*.pem"))) == 600
    rc = main(["manifest", "verify", str(out / "org-00" / "manifest.json"),
               "--trust", str(out / "trust.json"), "--org", "org-00"])  # fmt: skip
    assert rc == 0
