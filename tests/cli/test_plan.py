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


# -- a repository or revision that cannot be read: the message names the fix ---------------
# Real git repositories made with the git CLI; each case is one way the README's
# `meshops plan . --base origin/main` goes wrong on a first try.


@pytest.fixture
def outer(tmp_path: Path) -> Path:
    """A larger git repository (like the meshops checkout) with the org repo in a
    subdirectory, two commits, and a clone of it that has `origin`."""
    top = tmp_path / "project"
    (top / "docs").mkdir(parents=True)
    (top / "docs/readme.md").write_text("docs\n")
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "docs only")
    shutil.copytree(EXAMPLE, top / "deploy/org")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "org repo")
    return top


def clone(src: Path, dst: Path, *args: str) -> Path:
    git(src.parent, "clone", "-q", *args, f"file://{src}", str(dst))
    return dst


def err_of(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (code, out, err)
    assert "Traceback" not in err
    return err


def test_plan_of_a_subdirectory_of_a_larger_repository_works(outer: Path, capsys):
    code, out, err = run(capsys, "plan", str(outer / "deploy/org"), "--base", "HEAD",
                         "--format", "text")  # fmt: skip
    assert code == 0, err
    assert "No changes" in out
    work = clone(outer, outer.parent / "work")
    code, _, err = run(capsys, "plan", str(work / "deploy/org"), "--base", "origin/main")
    assert code == 0, err


def test_repository_root_that_is_not_the_org_repo_names_the_subdirectory(outer, capsys):
    """What `meshops plan . --base origin/main` in the meshops checkout used to do."""
    work = clone(outer, outer.parent / "work")
    err = err_of(capsys, "plan", str(work), "--base", "origin/main")
    assert "is not a meshops repository" in err
    assert f"run `meshops plan {work / 'deploy/org'} --base origin/main`" in err
    err = err_of(capsys, "validate", str(work))
    assert f"run `meshops validate {work / 'deploy/org'}`" in err
    err = err_of(capsys, "validate", str(work), "--rev", "HEAD")
    assert f"`meshops validate {work / 'deploy/org'} --rev HEAD`" in err


def test_no_remote_says_so_and_offers_local_revisions(outer: Path, capsys):
    err = err_of(capsys, "plan", str(outer / "deploy/org"), "--base", "origin/main")
    assert "has no remote, so there is no 'origin/main'" in err
    assert "local branches: main" in err and "HEAD~1" in err
    assert "git remote add origin URL && git fetch origin" in err


def test_remote_without_that_branch_says_fetch(outer: Path, capsys):
    work = clone(outer, outer.parent / "work")
    err = err_of(capsys, "plan", str(work / "deploy/org"), "--base", "origin/develop")
    assert "remote 'origin' has no branch 'develop'" in err
    assert "origin/main" in err and "git fetch origin develop" in err
    assert "shallow" not in err


def test_shallow_clone_mentions_fetch_depth(outer: Path, capsys):
    git(outer, "branch", "other", "HEAD~1")
    work = clone(outer, outer.parent / "shallow", "--depth", "1", "--single-branch")
    err = err_of(capsys, "plan", str(work / "deploy/org"), "--base", "origin/other")
    assert "git fetch origin other" in err and "fetch-depth: 0" in err


def test_unknown_remote_name_lists_the_remotes(outer: Path, capsys):
    work = clone(outer, outer.parent / "work")
    err = err_of(capsys, "plan", str(work / "deploy/org"), "--base", "upstream/main")
    assert "there is no remote 'upstream' (remotes: origin)" in err


def test_unknown_local_revision_lists_branches(outer: Path, capsys):
    err = err_of(capsys, "plan", str(outer / "deploy/org"), "--base", "no-such-branch")
    assert "revision 'no-such-branch' does not resolve" in err
    assert "local branches: main" in err


def test_path_added_after_the_base_revision(outer: Path, capsys):
    err = err_of(capsys, "plan", str(outer / "deploy/org"), "--base", "HEAD~1")
    assert "does not exist at revision 'HEAD~1'" in err
    assert "git log --oneline --" in err


def test_not_a_git_repository_says_git_init(tmp_path: Path, capsys):
    org = tmp_path / "org"
    shutil.copytree(EXAMPLE, org)
    err = err_of(capsys, "plan", str(org), "--base", "origin/main")
    assert "is not inside a git repository" in err and "git init" in err


def test_repository_without_commits_says_commit_first(tmp_path: Path, capsys):
    org = tmp_path / "org"
    shutil.copytree(EXAMPLE, org)
    git(org, "init", "-q", "-b", "main")
    err = err_of(capsys, "plan", str(org), "--base", "HEAD")
    assert "has no commits yet" in err and "git commit" in err


def test_plain_directory_without_a_repo_below_points_at_the_docs(tmp_path: Path, capsys):
    err = err_of(capsys, "validate", str(tmp_path))
    assert "is not a meshops repository" in err and "docs/repo-format.md" in err
    err = err_of(capsys, "validate", str(tmp_path / "missing"))
    assert "is not a directory" in err


def test_explain_is_pure_and_covers_git_refusals():
    from reconciler.cli.repo import DirFacts, GitFacts, explain

    def redo(p: str) -> str:
        return f"meshops plan {p} --base main"

    here = DirFacts(is_dir=True, absolute="/srv/org")
    dubious = GitFacts(refused="fatal: detected dubious ownership in repository at '/srv/org'")
    msg = explain("org", "main", where=here, git=dubious, redo=redo)
    assert "dubious ownership" in msg
    assert "git config --global --add safe.directory /srv/org" in msg
    fine = GitFacts(top="/r", has_commits=True, rev_ok=True, path_at_rev=True, repo_at_rev=True)
    assert explain("org", "main", where=here, git=fine, redo=redo) is None
    # a working tree that is a repository: nothing to explain (the loader's message stands)
    repo = DirFacts(is_dir=True, repo_files=True, absolute="/srv/org")
    assert explain("org", None, where=repo, git=None, redo=redo) is None
    # the suggestion uses the user's own command, with the repository found below
    top = DirFacts(is_dir=True, below=("deploy/org", "other"), absolute="/srv")
    msg = explain(".", None, where=top, git=None, redo=redo)
    assert "below it: deploy/org, other; run `meshops plan deploy/org --base main`" in msg
    assert "not a directory" in explain("x", None, where=DirFacts(), git=None, redo=redo)


def test_repos_below_skips_hidden_and_virtualenv_directories(tmp_path: Path):
    from reconciler.cli.repo import repos_below

    for sub in ("a/org", ".hidden/org", ".venv/org", "node_modules/org", "b/c/d/org", "z"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "mesh.yaml").write_text("kind: Mesh\n")
    assert repos_below(str(tmp_path)) == [str(tmp_path / "a/org"), str(tmp_path / "z")]
