"""reconciler.config.source: working trees and git revisions (no checkout)."""

from __future__ import annotations

import os
import subprocess

import pytest

from reconciler.config.source import GitSource, WorkTreeSource, open_source, parse_tree
from reconciler.config.synth import git_init_commit, make_repo
from reconciler.errors import UsageError


@pytest.fixture
def git_repo(tmp_path):
    root = make_repo(tmp_path / "r", devices=12, git=True)
    return root


def test_git_source_lists_blob_ids_matching_git(git_repo):
    src = open_source(git_repo, "HEAD")
    assert isinstance(src, GitSource)
    entries = {e.path: e.blob for e in src.entries()}
    out = subprocess.run(["git", "-C", str(git_repo), "rev-parse",
                          "HEAD:orgs/org-00/devices/dev-00003.yaml"],
                         capture_output=True, text=True, check=True)
    assert entries["orgs/org-00/devices/dev-00003.yaml"] == out.stdout.strip()
    assert "mesh.yaml" in entries
    data = src.read(next(e for e in src.entries() if e.path == "mesh.yaml"))
    assert data == (git_repo / "mesh.yaml").read_bytes()
    src.close()


def test_git_source_reads_the_revision_not_the_working_tree(git_repo):
    first = subprocess.run(["git", "-C", str(git_repo), "rev-parse", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    (git_repo / "mesh.yaml").write_text("kind: Mesh\nhub_url: https://changed.example.com\n")
    second = git_init_commit(git_repo, "change hub")
    (git_repo / "mesh.yaml").write_text("uncommitted garbage")
    for rev, expect in ((first, b"hub.example.com"), (second, b"changed.example.com")):
        src = open_source(git_repo, rev)
        assert src.commit == (first if rev == first else second)
        mesh = next(e for e in src.entries() if e.path == "mesh.yaml")
        assert expect in src.read(mesh)
        src.close()


def test_git_source_in_a_subdirectory(tmp_path):
    outer = tmp_path / "outer"
    make_repo(outer / "meshrepo", devices=3)
    git_init_commit(outer, "nested")
    src = open_source(outer / "meshrepo", "HEAD")
    paths = [e.path for e in src.entries()]
    assert "mesh.yaml" in paths and "orgs/org-00/devices/dev-00000.yaml" in paths
    src.close()


def test_bad_revision_and_non_repositories_are_usage_errors(git_repo, tmp_path):
    with pytest.raises(UsageError, match="does not resolve"):
        open_source(git_repo, "no-such-branch")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="not a meshops repository"):
        open_source(plain, None)
    with pytest.raises(UsageError, match="not a directory"):
        open_source(tmp_path / "missing", None)
    with pytest.raises(UsageError, match="not inside a git repository"):
        open_source(plain, "HEAD")


def test_work_tree_lists_only_repository_paths(tmp_path):
    root = make_repo(tmp_path / "w", devices=2)
    (root / "secrets").mkdir()
    (root / "secrets" / "acme.sops.yaml").write_text("x: 1")
    (root / "README.md").write_text("hi")
    (root / "orgs" / "org-00" / "devices" / "link.yaml").symlink_to(root / "mesh.yaml")
    os.mkfifo(root / "orgs" / "org-00" / "devices" / "pipe.yaml")
    src = open_source(root, None)
    assert isinstance(src, WorkTreeSource)
    entries = src.entries()
    paths = [e.path for e in entries]
    assert paths[:3] == ["mesh.yaml", "orgs", "orgs/org-00"]
    assert not any(p.startswith("secrets") or p == "README.md" for p in paths)
    types = {e.path: e.type for e in entries}
    assert types["orgs"] == types["orgs/org-00/devices"] == "dir"
    assert types["orgs/org-00/devices/link.yaml"] == "symlink"  # listed, never followed
    assert types["orgs/org-00/devices/pipe.yaml"] == "special"
    assert types["orgs/org-00/organization.yaml"] == "file"
    assert all(e.blob is None for e in entries)


def test_work_tree_does_not_enter_directories_below_the_layout(tmp_path):
    root = make_repo(tmp_path / "w", devices=1)
    deep = root / "orgs" / "org-00" / "devices" / "sub" / "deeper"
    deep.mkdir(parents=True)
    (deep / "x.yaml").write_text("kind: Device\n")
    paths = [e.path for e in open_source(root, None).entries()]
    assert "orgs/org-00/devices/sub" in paths
    assert not any(p.startswith("orgs/org-00/devices/sub/") for p in paths)


def test_work_tree_read_refuses_a_path_that_became_a_link(tmp_path):
    root = make_repo(tmp_path / "w", devices=1)
    src = open_source(root, None)
    entry = next(e for e in src.entries() if e.path.endswith("organization.yaml"))
    target = root / entry.path
    target.unlink()
    target.symlink_to(root / "mesh.yaml")
    with pytest.raises(UsageError, match="cannot read"):
        src.read(entry)


def test_parse_tree_reads_git_tree_objects():
    sha1, sha2 = bytes(range(20)), bytes(range(20, 40))
    data = (b"100644 a.yaml\0" + sha1 + b"40000 sub\0" + sha2 + b"120000 link\0" + sha1
            + b"160000 module\0" + sha2 + b"100755 run\0" + sha1 + b"170000 odd\0" + sha2)
    assert parse_tree(data) == [("a.yaml", "file", sha1), ("sub", "dir", sha2),
                                ("link", "symlink", sha1), ("module", "submodule", sha2),
                                ("run", "file", sha1), ("odd", "special", sha2)]


def test_read_many_batches_blobs_in_order(tmp_path):
    git_repo = make_repo(tmp_path / "big", devices=40, git=True)
    src = open_source(git_repo, "HEAD")
    entries = [e for e in src.entries() if e.type == "file"]
    assert len(entries) > 32  # the batched path
    got = list(src.read_many(entries))
    assert [e for e, _ in got] == entries
    for entry, data in got:
        assert data == (git_repo / entry.path).read_bytes()
    first = next(iter(src.read_many(entries)))  # abandoning the batch early is safe
    assert first[0] == entries[0]
    src.close()


def test_read_many_reports_a_missing_blob(tmp_path):
    from reconciler.config.source import Entry

    git_repo = make_repo(tmp_path / "big", devices=40, git=True)
    src = open_source(git_repo, "HEAD")
    entries = [e for e in src.entries() if e.type == "file"]
    entries[5] = Entry(entries[5].path, "0" * 40)
    with pytest.raises(UsageError, match="cannot read"):
        list(src.read_many(entries))
    src.close()
