"""The repository fields enrollment adds: ``enrollment:`` and
``defaults.device_lifetime_days`` in organization.yaml, ``disabled`` in user
files. Each bad value is refused at its line, by the fast schema check and by
jsonschema alike (``config.schema`` runs both)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reconciler.config import load
from reconciler.model.repo import Enrollment

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


@pytest.fixture
def repo(tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns(".git"))
    return dst


def _org(repo: Path, extra: str) -> Path:
    path = repo / "orgs/acme/organization.yaml"
    path.write_text(path.read_text() + extra)
    return path


def test_enrollment_settings_load(repo):
    _org(repo, "  device_lifetime_days: 30\nenrollment:\n  issuer: https://id.example.com\n"
               "  client_id: meshops\n  auto_approve:\n    roles: [owner, admin]\n"
               "    max_devices_per_user: 2\n")
    org = load(repo).repo.orgs["acme"].organization
    assert org.enrollment == Enrollment("https://id.example.com", "meshops", ("owner", "admin"), 2)
    assert org.defaults.device_lifetime_days == 30
    assert load(repo).repo.orgs["globex"].organization.enrollment is None


@pytest.mark.parametrize(("extra", "field"), [
    ("enrollment:\n  issuer: http://id.example.com\n  client_id: m\n", "enrollment.issuer"),
    ("enrollment:\n  issuer: https://id.example.com\n", "enrollment"),
    ("enrollment:\n  issuer: https://id.example.com\n  client_id: \"\"\n", "enrollment.client_id"),
    (("enrollment:\n  issuer: https://id.example.com\n  client_id: m\n  auto_approve:\n"
     "    roles: [root]\n"), "enrollment.auto_approve.roles"),
    ("enrollment:\n  issuer: https://id.example.com\n  client_id: m\n  extra: 1\n",
     "enrollment.extra"),
    ("  device_lifetime_days: 0\n", "defaults.device_lifetime_days"),
])
def test_bad_enrollment_settings_are_refused_at_their_line(repo, extra, field):
    path = _org(repo, extra)
    result = load(repo)
    assert result.repo is None
    [problem] = [p for p in result.problems if p.file == "orgs/acme/organization.yaml"]
    text = path.read_text().splitlines()
    leaf = field.rsplit(".", 1)[-1]
    assert leaf in text[problem.line - 1], (problem, field)


def test_a_disabled_user_loads_and_a_bad_value_is_refused(repo):
    user = repo / "orgs/acme/users/bob.yaml"
    user.write_text(user.read_text() + "disabled: true\n")
    assert load(repo).repo.orgs["acme"].users["bob"].disabled
    user.write_text(user.read_text().replace("disabled: true", "disabled: maybe"))
    [problem] = load(repo).problems
    assert problem.file == "orgs/acme/users/bob.yaml" and problem.code == "E-SCHEMA-TYPE"
