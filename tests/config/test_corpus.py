"""Every repository under tests/data/invalid/ is refused with exactly the problems
its expected.yaml lists (code, file, line): from the working tree, and again from a
git commit of the same files (symlinks become tree entries of mode 120000), so
both sources refuse the same things."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.config import load

CORPUS = Path(__file__).resolve().parent.parent / "data" / "invalid"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())


def test_corpus_is_large_enough():
    assert len(CASES) >= 150


def _materialise(case: str, tmp_path: Path) -> tuple[Path, dict]:
    expected = yaml.safe_load((CORPUS / case / "expected.yaml").read_text())
    repo = tmp_path / case
    shutil.copytree(CORPUS / case, repo, symlinks=True)
    (repo / "expected.yaml").unlink()
    generate = expected.get("generate")
    if generate:  # files too big to commit are padded here
        target = repo / generate["file"]
        pad = generate["bytes"] - target.stat().st_size
        with target.open("a") as fh:
            fh.write("# " + "x" * (pad - 3) + "\n")
        assert target.stat().st_size >= generate["bytes"]
    for step in expected.get("setup", ()):  # what git or a copy would not keep
        path = repo / step["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if "symlink" in step:
            if path.is_file() or path.is_symlink():
                path.unlink()
            path.symlink_to(step["symlink"])
        elif step.get("fifo"):
            os.mkfifo(path)
        elif step.get("mkdir"):
            path.mkdir()
        elif "file" in step:
            if path.is_dir():
                shutil.rmtree(path)
            path.write_text(step["file"])
        elif step.get("remove"):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    outside = tmp_path / "outside.yaml"  # what the symlink cases point at
    outside.write_text((CORPUS / case / "mesh.yaml").read_text()
                       if (CORPUS / case / "mesh.yaml").is_file() else "kind: Mesh\n")
    return repo, expected


def _check(result, expected) -> None:
    got = sorted((p.code, p.file, p.line) for p in result.problems)
    want = sorted((p["code"], p["file"], p["line"]) for p in expected["problems"])
    assert got == want, "\n".join(str(p) for p in result.problems)
    assert result.repo is None
    for problem in result.problems:
        assert problem.message and problem.remedy


@pytest.mark.parametrize("case", CASES)
def test_invalid_repo_is_refused_with_code_and_line(case, tmp_path):
    repo, expected = _materialise(case, tmp_path)
    _check(load(repo), expected)


GIT_CASES = [c for c in CASES
             if not yaml.safe_load((CORPUS / c / "expected.yaml").read_text()).get("worktree_only")]


@pytest.mark.parametrize("case", GIT_CASES)
def test_invalid_repo_is_refused_from_a_commit_too(case, tmp_path):
    repo, expected = _materialise(case, tmp_path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "case"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                       capture_output=True)
    _check(load(repo, "HEAD"), expected)
