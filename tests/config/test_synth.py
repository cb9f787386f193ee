"""reconciler.config.synth: synthetic repositories are valid and deterministic."""

from __future__ import annotations

from reconciler.config import load
from reconciler.config.synth import fake_key, make_repo


def test_synthetic_repo_is_valid_with_policy_and_relays(tmp_path):
    root = make_repo(tmp_path / "r", devices=45, orgs=2, rules=25)
    result = load(root)
    assert result.problems == ()
    orgs = result.repo.orgs
    assert sum(len(o.devices) for o in orgs.values()) == 45
    for org in orgs.values():
        assert org.policy is not None and len(org.policy.rules) == 26
        assert len(org.policy.tests) == 6
        assert any(d.relay and d.endpoint for d in org.devices.values())


def test_synthetic_repo_is_deterministic(tmp_path):
    a = make_repo(tmp_path / "a", devices=15)
    b = make_repo(tmp_path / "b", devices=15)
    files = sorted(p.relative_to(a) for p in a.rglob("*.yaml"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.yaml"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert fake_key("x") == fake_key("x") != fake_key("y")


def test_git_repo_has_one_commit(tmp_path):
    root = make_repo(tmp_path / "g", devices=5, git=True)
    result = load(root, "HEAD")
    assert result.valid and result.commit and len(result.commit) == 40
