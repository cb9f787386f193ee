"""``meshops validate``: exit codes 0/1/2 and the text, json and github formats."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config.synth import git_init_commit, make_repo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"
CORPUS = ROOT / "tests" / "data" / "invalid"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "validate", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def invalid(tmp_path):
    return shutil.copytree(CORPUS / "dup-ip-v4", tmp_path / "bad",
                           ignore=shutil.ignore_patterns("expected.yaml"))


def test_subprocess_valid_example_exits_0():
    proc = run(str(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout and "problem" not in proc.stdout


def test_subprocess_invalid_text_exits_1(invalid):
    proc = run(str(invalid))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("orgs/acme/devices/b.yaml:9: E-DUP-IP: tunnel IP 10.1.0.1")
    assert "(fix: " in lines[0]
    assert lines[-1].endswith("1 problem(s) in 1 file(s)")


def test_subprocess_json_format(invalid):
    proc = run(str(invalid), "--format", "json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["valid"] is False and report["commit"] is None
    (problem,) = report["problems"]
    assert problem["code"] == "E-DUP-IP" and problem["line"] == 9
    assert problem["file"] == "orgs/acme/devices/b.yaml" and problem["remedy"]


def test_subprocess_github_format_paths_are_relative_to_the_checkout(invalid):
    proc = run("bad", "--format", "github", cwd=invalid.parent)
    assert proc.returncode == 1
    assert proc.stdout.startswith(
        "::error file=bad/orgs/acme/devices/b.yaml,line=9,title=E-DUP-IP::tunnel IP 10.1.0.1")
    assert "(fix: " in proc.stdout


def test_subprocess_cannot_run_exits_2(tmp_path):
    proc = run(str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    proc = run(str(EXAMPLE), "--format", "yaml")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_in_process_all_formats(invalid, capsys):
    assert main(["validate", str(EXAMPLE)]) == 0
    assert "valid (2 org(s)" in capsys.readouterr().out
    assert main(["validate", str(EXAMPLE), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "commit": None, "problems": []}
    assert main(["validate", str(EXAMPLE), "--format", "github"]) == 0
    assert "::error" not in capsys.readouterr().out
    assert main(["validate", str(invalid), "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert out.count("::error ") == 1 and ",line=9,title=E-DUP-IP::" in out
    assert main(["validate", str(invalid)]) == 1
    assert "b.yaml:9: E-DUP-IP" in capsys.readouterr().out


def test_in_process_rev(tmp_path, capsys):
    root = make_repo(tmp_path / "g", devices=12, git=True)
    dev = root / "orgs" / "org-00" / "devices" / "dev-00001.yaml"
    dev.write_text(dev.read_text().replace("owner: user-0001", "owner: ghost"))
    git_init_commit(root, "dangling owner")
    assert main(["validate", str(root), "--rev", "HEAD~1", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and len(report["commit"]) == 40
    assert main(["validate", str(root), "--rev", "HEAD"]) == 1
    assert "E-REF-OWNER" in capsys.readouterr().out
    assert main(["validate", str(root), "--rev", "nope"]) == 2
    assert "does not resolve" in capsys.readouterr().err


def test_github_escaping_of_special_characters(tmp_path, capsys):
    root = make_repo(tmp_path / "r", devices=3)
    (root / "orgs" / "org-00" / "devices" / "dev-00000.yaml").write_text("a: [\n")
    assert main(["validate", str(root), "--format", "github"]) == 1
    out = capsys.readouterr().out
    line = out.splitlines()[0]
    assert line.startswith("::error file=") and "\n" not in line
    assert "%3A" not in line.split("::")[2]  # message colons are not escaped, properties are


# -- hostile input ends in file:line problems and exit 1, never in a traceback ------------


@pytest.mark.parametrize("case", ["number-int-5000-digits", "number-port-float", "number-nan",
                                  "string-group-trailing-newline", "string-bidi-override",
                                  "route-covers-hub", "layout-orgs-is-a-file"])
def test_subprocess_hostile_input_exits_1_without_traceback(tmp_path, case):
    repo = shutil.copytree(CORPUS / case, tmp_path / case,
                           ignore=shutil.ignore_patterns("expected.yaml"))
    if case == "layout-orgs-is-a-file":
        shutil.rmtree(repo / "orgs")
        (repo / "orgs").write_text("acme\n")
    proc = run(str(repo), "--format", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["valid"] is False and doc["problems"]
    assert all(p["file"] and p["remedy"] and p["code"].startswith("E-") for p in doc["problems"])


def test_subprocess_symlink_in_a_commit_exits_1(tmp_path):
    root = make_repo(tmp_path / "r", devices=3)
    outside = tmp_path / "outside.yaml"
    outside.write_text((root / "orgs" / "org-00" / "devices" / "dev-00001.yaml").read_text())
    (root / "orgs" / "org-00" / "devices" / "dev-00001.yaml").unlink()
    (root / "orgs" / "org-00" / "devices" / "dev-00001.yaml").symlink_to(outside)
    git_init_commit(root, "a symlinked device")
    for args in ((str(root),), (str(root), "--rev", "HEAD")):
        proc = run(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert ("orgs/org-00/devices/dev-00001.yaml:0: E-LAYOUT-SYMLINK" in proc.stdout), args
