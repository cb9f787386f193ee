"""``meshops plan`` on a real git repository made with the git CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two commits: the example repo, then a new device plus a changed rule."""
    r = tmp_path / "org-repo"
    shutil.copytree(EXAMPLE, r)
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    assert main(["device", "add", "--repo", str(r), "--org", "acme", "laptop-7",
                 "--owner", "bob", "--wireguard-key", key("wg7"),
                 "--identity-key", key("id7")]) == 0
    policy = r / "orgs/acme/policy.yaml"
    text = policy.read_text()
    assert "ports: [80, 443]" in text
    policy.write_text(text.replace("ports: [80, 443]", "ports: [80, 443, 8443]", 1))
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "add laptop-7, open 8443")
    return r


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_markdown_shows_device_and_reachability(repo: Path, capsys):
    code, out, _ = run(capsys, "plan", str(repo), "--base", "HEAD~1", "--head", "HEAD")
    assert code == 0
    assert out.startswith("## meshops plan\n")
    assert "**Summary:** 1 device added, 0 removed, 0 changed;" in out
    assert "| added | `laptop-7` | new; owner bob; 10.10.0." in out
    assert "Policy changed." in out
    assert "#### Reachability" in out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| `")]
    # engineers (alice's and bob's devices) gain 8443 on the web tier
    assert any("`laptop-bob`" in r[0] and r[1] == "`web-1`" and r[2] == "tcp 8443"
               for r in rows)
    # the new laptop gets what engineers get
    assert ["`laptop-7`", "`web-1`", "tcp 80,443,8000-8100,8443; icmp", ""] in rows
    assert "globex" not in out  # untouched org


def test_json_and_text_formats(repo: Path, capsys):
    code, out, _ = run(capsys, "plan", str(repo), "--base", "HEAD~1", "--head", "HEAD",
                       "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["head"] == git(repo, "rev-parse", "HEAD")
    assert doc["base"] == git(repo, "rev-parse", "HEAD~1")
    (acme,) = doc["orgs"]
    assert [d["name"] for d in acme["devices"]["added"]] == ["laptop-7"]
    assert any(r["gained"]["tcp"] == ["8443"] for r in acme["reachability"])
    code, text, _ = run(capsys, "plan", str(repo), "--base", "HEAD~1", "--head", "HEAD",
                        "--format", "text")
    assert code == 0
    assert "+ device laptop-7 (new; owner bob;" in text
    assert any(line.startswith("  + reach ") and "laptop-bob" in line
               and line.endswith(" -> web-1: tcp 8443") for line in text.splitlines())


def test_same_revision_is_no_changes(repo: Path, capsys):
    code, out, _ = run(capsys, "plan", str(repo), "--base", "HEAD", "--head", "HEAD")
    assert code == 0 and "**No changes.**" in out


def test_head_defaults_to_working_tree(repo: Path, capsys):
    dev = repo / "orgs/acme/devices/laptop-7.yaml"
    dev.write_text(dev.read_text() + "disabled: true\n")
    code, out, _ = run(capsys, "plan", str(repo), "--base", "HEAD", "--format", "text")
    assert code == 0
    assert "-> working tree" in out.splitlines()[0]
    assert "- device laptop-7 (disabled; owner bob;" in out


def test_invalid_side_exits_1_with_problems(repo: Path, capsys):
    (repo / "orgs/acme/devices/web-1.yaml").write_text("kind: Device\nname: web-1\n")
    code, out, err = run(capsys, "plan", str(repo), "--base", "HEAD")
    assert code == 1 and out == ""
    assert "head (working tree) is invalid" in err
    assert "orgs/acme/devices/web-1.yaml:" in err


@pytest.mark.parametrize("argv", [
    ["--base", "no-such-rev"],
    ["--base", "HEAD", "--head", "deadbeef"],
])
def test_bad_revision_exits_2(repo: Path, capsys, argv):
    code, _, err = run(capsys, "plan", str(repo), *argv)
    assert code == 2 and err


def test_not_a_repository_exits_2(tmp_path: Path, capsys):
    code, _, err = run(capsys, "plan", str(tmp_path / "nowhere"), "--base", "HEAD")
    assert code == 2 and err


def test_missing_base_and_bad_format_are_usage_errors(repo: Path, capsys):
    for argv in (["plan", str(repo)], ["plan", str(repo), "--base", "HEAD", "--format", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_console_entry_point(repo: Path):
    proc = subprocess.run([sys.executable, "-m", "reconciler", "plan", str(repo), "--base",
                           "HEAD~1", "--head", "HEAD", "--format", "json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["devices_added"] == 1
