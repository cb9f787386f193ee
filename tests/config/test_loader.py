"""reconciler.config.load: the whole pipeline, the BlobCache, git revisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reconciler.config import BlobCache, LoadResult, load
from reconciler.config.synth import git_init_commit, make_repo
from reconciler.errors import UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def test_example_repo_is_valid_and_fully_modelled():
    result = load(EXAMPLE)
    assert isinstance(result, LoadResult)
    assert result.problems == () and result.valid
    repo = result.repo
    assert set(repo.orgs) == {"acme", "globex"}
    assert repo.mesh.hub_url.startswith("https://")
    assert all(len(fp) == 40 for fp in repo.mesh.pgp_recipients)
    assert repo.mesh.require_signed_commits is False
    acme = repo.orgs["acme"]
    assert acme.organization.cidr_v6 == "fd10:10::/64"
    relay = acme.devices["relay-1"]
    assert relay.relay and relay.endpoint.startswith("203.0.113.")
    assert relay.org == "acme" and relay.source.file == "orgs/acme/devices/relay-1.yaml"
    assert relay.source.line("endpoint") == 14
    assert len(acme.policy.tests) >= 6 and acme.policy.groups["servers"].tags == ("server",)
    assert acme.devices["old-kiosk"].disabled
    assert acme.users["carol"].oidc_issuer.startswith("https://")
    assert repo.orgs["globex"].policy is None
    assert sum(len(o.devices) for o in repo.orgs.values()) >= 6


def test_ca_certificate_text_is_loaded(tmp_path):
    root = make_repo(tmp_path / "r", devices=20, orgs=2)
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (root / "orgs" / "org-00" / "ca.crt").write_text(pem)
    result = load(root)
    assert result.valid
    assert result.repo.orgs["org-00"].ca_cert_pem == pem
    assert result.repo.orgs["org-01"].ca_cert_pem is None


def test_all_problems_are_reported_at_once_sorted(tmp_path):
    root = shutil.copytree(EXAMPLE, tmp_path / "r")
    dev = root / "orgs" / "acme" / "devices" / "web-1.yaml"
    dev.write_text(dev.read_text().replace("owner: bob", "owner: nobody")
                   .replace("10.10.0.4", "10.10.0.2"))
    (root / "orgs" / "globex" / "users" / "eve.yaml").write_text("kind: User\nname: eve\n")
    result = load(root)
    assert result.repo is None
    codes = [(p.file.rsplit("/", 1)[-1], p.code) for p in result.problems]
    assert ("web-1.yaml", "E-REF-OWNER") in codes and ("web-1.yaml", "E-DUP-IP") in codes
    assert ("eve.yaml", "E-SCHEMA-REQUIRED") in codes
    keys = [(p.file, p.line, p.code) for p in result.problems]
    assert keys == sorted(keys)


def test_broken_file_does_not_cascade_into_dangling_references(tmp_path):
    root = shutil.copytree(EXAMPLE, tmp_path / "r")
    (root / "orgs" / "acme" / "users" / "bob.yaml").write_text("kind: User\nname: [\n")
    result = load(root)
    assert [p.code for p in result.problems] == ["E-YAML-SYNTAX"]


def test_blob_cache_reparses_only_the_changed_file(tmp_path):
    root = make_repo(tmp_path / "r", devices=40, git=True)
    cache = BlobCache()
    first = load(root, "HEAD", cache=cache)
    assert first.valid and cache.misses == len(cache) and cache.hits == 0
    dev = root / "orgs" / "org-00" / "devices" / "dev-00007.yaml"
    dev.write_text(dev.read_text().replace("synthetic device 7", "renamed"))
    commit = git_init_commit(root, "one device")
    second = load(root, "HEAD", cache=cache)
    assert second.valid and second.commit == commit and second.repo.commit == commit
    assert cache.misses == 1 and cache.hits == len(cache) - 1
    assert second.repo.orgs["org-00"].devices["dev-00007"].description == "renamed"
    # the working tree is keyed by content: unchanged files are hits too
    load(root, cache=cache)
    load(root, cache=cache)
    assert cache.misses == 0


def test_old_revision_is_read_from_git(tmp_path):
    root = make_repo(tmp_path / "r", devices=12, git=True)
    (root / "orgs" / "org-00" / "devices" / "dev-00003.yaml").unlink()
    git_init_commit(root, "remove a device")
    assert "dev-00003" in load(root, "HEAD~1").repo.orgs["org-00"].devices
    assert "dev-00003" not in load(root, "HEAD").repo.orgs["org-00"].devices


def test_working_tree_has_no_commit(tmp_path):
    root = make_repo(tmp_path / "r", devices=3)
    result = load(root)
    assert result.valid and result.commit is None and result.repo.commit is None


def test_unknown_revision_is_a_usage_error(tmp_path):
    root = make_repo(tmp_path / "r", devices=3, git=True)
    with pytest.raises(UsageError):
        load(root, "deadbeef")


def test_yaml_outside_orgs_is_ignored(tmp_path):
    root = shutil.copytree(EXAMPLE, tmp_path / "r")
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets" / "acme.sops.yaml").write_text("not: [valid")
    (root / "README.md").write_text("# notes\n")
    (root / "docs").mkdir()
    (root / "docs" / "x.yaml").write_text("kind: Device\n")
    assert load(root).valid


@pytest.mark.parametrize("name", ["README.md", ".gitkeep", "policy.yaml~", "policy.yaml.bak",
                                  ".policy.yaml.swp", "policy.json", "Policy.yaml"])
def test_every_other_file_under_orgs_is_reported(tmp_path, name):
    """Nothing under orgs/ is ignored: a stray policy.yaml.bak or Policy.yaml would
    otherwise leave the org without its policy (a full mesh) without a word."""
    root = shutil.copytree(EXAMPLE, tmp_path / "r")
    (root / "orgs" / "acme" / name).write_text("# notes\n")
    result = load(root)
    assert [(p.file, p.code) for p in result.problems] == [
        (f"orgs/acme/{name}", "E-LAYOUT-UNKNOWN-FILE")]
    line = 1 if name.endswith((".yaml", ".yml")) else 0
    assert result.problems[0].line == line and result.problems[0].remedy


def test_misplaced_yaml_files_are_reported(tmp_path):
    root = make_repo(tmp_path / "r", devices=3)
    (root / "orgs" / "stray.yaml").write_text("kind: Device\n")
    (root / "orgs" / "org-00" / "devices" / "nested").mkdir()
    (root / "orgs" / "org-00" / "devices" / "nested" / "x.yaml").write_text("kind: Device\n")
    (root / "orgs" / "org-00" / "notes.md").write_text("not fine either\n")
    result = load(root)
    assert [(p.file, p.code, p.line) for p in result.problems] == [
        ("orgs/org-00/devices/nested", "E-LAYOUT-UNKNOWN-DIR", 0),
        ("orgs/org-00/notes.md", "E-LAYOUT-UNKNOWN-FILE", 0),
        ("orgs/stray.yaml", "E-LAYOUT-UNKNOWN-FILE", 1)]


@pytest.mark.parametrize("path, code", [
    ("orgs/org-00/devices/dev-09.yaml", "E-LAYOUT-NOT-A-FILE"),
    ("orgs/org-00/policy.yaml", "E-LAYOUT-NOT-A-FILE"),
    ("orgs/org-01", "E-LAYOUT-NOT-A-DIR"),
    ("orgs/org-00/users", "E-LAYOUT-NOT-A-DIR"),
])
def test_git_submodule_entries_are_reported(tmp_path, path, code):
    """A gitlink (mode 160000) in the commit: nothing is read from it, and it is said."""
    import subprocess

    root = make_repo(tmp_path / "r", devices=3, git=True)
    if (root / path).is_dir():
        subprocess.run(["git", "-C", str(root), "rm", "-rq", "--cached", path], check=True)
    elif (root / path).exists():
        subprocess.run(["git", "-C", str(root), "rm", "-q", "--cached", path], check=True)
    subprocess.run(["git", "-C", str(root), "update-index", "--add", "--cacheinfo",
                    f"160000,{'1' * 40},{path}"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@x",
                    "commit", "-qm", "gitlink", "--no-gpg-sign"], check=True)
    problems = load(root, "HEAD").problems
    assert (path, 0, code) in [(p.file, p.line, p.code) for p in problems], problems
    assert not load(root, "HEAD").valid
