"""orgs/ORG/roots/N.json in the loader: recognised, read in version order, shape
checked, gaps and stray files refused at their path (the signatures are checked
by the hub publisher: tests/hub/test_roots_rotation.py); mesh.yaml's
rotation_overlap_days."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reconciler.config import load
from reconciler.config.synth import git_init_commit

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"
ENVELOPE = b'{"payload":"e30=","payloadType":"application/vnd.meshops.root+json","signatures":[]}'


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "r"))


def test_example_roots_load_in_version_order(repo: Path) -> None:
    roots = repo / "orgs" / "acme" / "roots"
    for n in (2, 10, 3, 4, 5, 6, 7, 8, 9):
        (roots / f"{n}.json").write_bytes(ENVELOPE.replace(b"[]", b"[%d]" % n))
    result = load(repo)
    assert result.repo is not None, result.problems
    acme = result.repo.orgs["acme"]
    assert len(acme.roots) == 10
    assert acme.roots[0] == (EXAMPLE / "orgs/acme/roots/1.json").read_bytes()
    assert [r.rpartition(b"[")[2] for r in acme.roots[1:]] == [b"%d]}" % n
                                                              for n in range(2, 11)]
    assert result.repo.orgs["globex"].roots == ()


def test_roots_are_read_from_a_commit_too(repo: Path) -> None:
    git_init_commit(repo, "roots")
    result = load(repo, "HEAD")
    assert result.repo is not None, result.problems
    assert result.repo.orgs["acme"].roots == ((EXAMPLE / "orgs/acme/roots/1.json").read_bytes(),)


@pytest.mark.parametrize("name,code", [
    ("01.json", "E-LAYOUT-UNKNOWN-FILE"),
    ("0.json", "E-LAYOUT-UNKNOWN-FILE"),
    ("2.yaml", "E-LAYOUT-UNKNOWN-FILE"),
    ("notes.txt", "E-LAYOUT-UNKNOWN-FILE"),
    ("2.json.tmp", "E-LAYOUT-UNKNOWN-FILE"),
])
def test_a_stray_file_in_roots_is_refused(repo: Path, name: str, code: str) -> None:
    (repo / "orgs/acme/roots" / name).write_bytes(ENVELOPE)
    result = load(repo)
    assert result.repo is None
    (problem,) = result.problems
    assert (problem.file, problem.code) == (f"orgs/acme/roots/{name}", code)
    assert "N.json" in problem.remedy


@pytest.mark.parametrize("data,needle", [
    (b"{", "not a trust root"),
    (b"[]", "signed envelope"),
    (b'{"payload": "x"}', "signed envelope"),
    (b"[" * 100 + b"]" * 100, "not a trust root"),
    (b"\xff\xfe", "not a trust root"),
])
def test_a_malformed_root_is_refused_at_line_1(repo: Path, data: bytes, needle: str) -> None:
    (repo / "orgs/acme/roots/1.json").write_bytes(data)
    result = load(repo)
    assert result.repo is None
    problem = result.problems[0]
    assert (problem.file, problem.line, problem.code) == ("orgs/acme/roots/1.json", 1,
                                                          "E-ROOT-FORMAT")
    assert needle in problem.message and "git history" in problem.remedy


@pytest.mark.parametrize("present,missing,reported", [
    ((1, 3), 2, 3),
    ((2,), 1, 2),  # 1.json deleted
    ((1, 2, 5, 6), 3, 5),
])
def test_a_gap_in_the_chain_is_refused(repo: Path, present, missing, reported) -> None:
    roots = repo / "orgs/acme/roots"
    (roots / "1.json").unlink()
    for n in present:
        (roots / f"{n}.json").write_bytes(ENVELOPE)
    result = load(repo)
    assert result.repo is None
    (problem,) = result.problems
    assert (problem.file, problem.code) == (f"orgs/acme/roots/{reported}.json", "E-ROOT-GAP")
    assert f"root {missing}.json" in problem.message and "missing" in problem.message


def test_roots_must_be_a_directory(repo: Path) -> None:
    shutil.rmtree(repo / "orgs/acme/roots")
    (repo / "orgs/acme/roots").write_text("x")
    result = load(repo)
    assert result.repo is None
    assert result.problems[0].file == "orgs/acme/roots"
    assert result.problems[0].code == "E-LAYOUT-NOT-A-DIR"


def test_a_directory_inside_roots_is_refused(repo: Path) -> None:
    (repo / "orgs/acme/roots/old").mkdir()
    (repo / "orgs/acme/roots/old/1.json").write_bytes(ENVELOPE)
    result = load(repo)
    assert result.repo is None
    assert [p.code for p in result.problems] == ["E-LAYOUT-UNKNOWN-DIR"]


def test_rotation_overlap_days_default_and_bounds(repo: Path) -> None:
    result = load(repo)
    assert result.repo is not None and result.repo.mesh.rotation_overlap_days == 7
    mesh = repo / "mesh.yaml"
    text = mesh.read_text()
    mesh.write_text(text + "rotation_overlap_days: 14\n")
    result = load(repo)
    assert result.repo is not None and result.repo.mesh.rotation_overlap_days == 14
    for bad in ("0", "366", "1.5", "true", '"7"'):
        mesh.write_text(text + f"rotation_overlap_days: {bad}\n")
        result = load(repo)
        assert result.repo is None, bad
        (problem,) = result.problems
        assert problem.file == "mesh.yaml" and "rotation_overlap_days" in problem.message, bad
