"""Every repository under tests/data/invalid/ is refused with exactly the problems
its expected.yaml lists (code, file, line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from reconciler.config import load

CORPUS = Path(__file__).resolve().parent.parent / "data" / "invalid"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES)
def test_invalid_repo_is_refused_with_code_and_line(case, tmp_path):
    expected = yaml.safe_load((CORPUS / case / "expected.yaml").read_text())
    repo = tmp_path / case
    shutil.copytree(CORPUS / case, repo)
    generate = expected.get("generate")
    if generate:  # files too big to commit are padded here
        target = repo / generate["file"]
        pad = generate["bytes"] - target.stat().st_size
        with target.open("a") as fh:
            fh.write("# " + "x" * (pad - 3) + "\n")
        assert target.stat().st_size >= generate["bytes"]
    result = load(repo)
    got = sorted((p.code, p.file, p.line) for p in result.problems)
    want = sorted((p["code"], p["file"], p["line"]) for p in expected["problems"])
    assert got == want, "\n".join(str(p) for p in result.problems)
    assert result.repo is None
    for problem in result.problems:
        assert problem.message and problem.remedy
