"""Device expiry: parsing, validation, the pure filters, the manifest builder,
and what ``meshops plan`` and ``meshops validate`` print."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler import structs
from reconciler.cli import main
from reconciler.config import load
from reconciler.config.expiry import expiry_warnings, without_expired
from reconciler.model.repo import parse_expiry
from reconciler.policy.review import expiring

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"
DAY = 86400.0
T0 = datetime(2027, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("text", "want"), [
    ("2027-01-01", T0), ("2027-01-01T00:00:00Z", T0), ("2027-01-01T02:00:00+02:00", T0),
    ("2027-01-01T00:00Z", T0), ("2027-02-30", None), ("2027-01-01T00:00:00", None),
    ("2027-13-01", None)])
def test_parse_expiry(text, want):
    assert parse_expiry(text) == want


@pytest.fixture
def repo(tmp_path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns(".git"))
    return dst


def expire(repo: Path, org: str, device: str, when: str) -> Path:
    path = repo / "orgs" / org / "devices" / f"{device}.yaml"
    path.write_text(path.read_text() + f"expires: \"{when}\"\n")
    return path


def test_an_impossible_date_is_an_error_at_its_line(repo):
    path = expire(repo, "globex", "phone-dana", "2027-02-30")
    result = load(repo)
    assert result.repo is None
    [problem] = [p for p in result.problems if p.code == "E-EXPIRES-INVALID"]
    assert problem.file == "orgs/globex/devices/phone-dana.yaml"
    assert problem.line == len(path.read_text().splitlines())
    expire(repo, "acme", "web-1", "next tuesday")
    codes = {p.code for p in load(repo).problems if p.file.endswith("web-1.yaml")}
    assert codes and "E-EXPIRES-INVALID" not in codes  # the schema refuses it first


def test_filters_and_the_warning_window(repo):
    expire(repo, "globex", "phone-dana", "2027-01-10")
    expire(repo, "acme", "web-1", "2027-01-02")
    expire(repo, "acme", "db-1", "2027-03-01")
    loaded = load(repo).repo
    now = T0
    assert [(e.device, round(e.days_left)) for e in expiring(loaded, now)] == [
        ("web-1", 1), ("phone-dana", 9)]  # db-1 is 59 days away
    assert without_expired(loaded, now) is loaded  # nothing expired: the same object
    later = without_expired(loaded, T0 + 5 * DAY)
    assert later.orgs["acme"].devices["web-1"].disabled
    assert "web-1" not in {d.name for d in later.orgs["acme"].enabled_devices()}
    assert later.orgs["globex"] is loaded.orgs["globex"]  # untouched orgs are shared
    [w1, w2] = expiry_warnings(loaded, T0 + 5 * DAY)
    assert (w1.code, w1.severity) == ("W-DEVICE-EXPIRING", "warning")
    assert "expired" in w1.message and "web-1" in w1.message
    assert "phone-dana" in w2.message and "in 4.0 days" in w2.message
    assert w1.line == loaded.orgs["acme"].devices["web-1"].source.line("expires")
    # a disabled device is out anyway and is not listed
    devices = dict(loaded.orgs["acme"].devices)
    devices["web-1"] = structs.replace(devices["web-1"], disabled=True)
    acme = structs.replace(loaded.orgs["acme"], devices=devices)
    assert [e.device for e in expiring(structs.replace(
        loaded, orgs={**loaded.orgs, "acme": acme}), now)] == ["phone-dana"]


def test_build_manifest_leaves_expired_devices_out(repo):
    from reconciler.pki.manifest import build_manifest

    expire(repo, "acme", "web-1", "2027-01-02")
    state = load(repo).repo.orgs["acme"]
    fps = {d.name: "00" * 32 for d in state.enabled_devices()}
    kw = {"commit": "c" * 40, "serial": 1, "lifetime_s": 3600, "cert_fingerprints": fps}
    before = build_manifest(state, now=T0, **kw)
    after = build_manifest(state, now=T0 + 2 * DAY, **kw)
    assert before.device("web-1") is not None and after.device("web-1") is None
    assert len(after.devices) == len(before.devices) - 1


def test_plan_lists_devices_expiring_within_14_days(repo, capsys):
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"],
                   cwd=repo, check=True)
    expire(repo, "acme", "web-1", "2027-01-05")
    assert main(["plan", str(repo), "--base", "HEAD", "--at", "2027-01-01"]) == 0
    out = capsys.readouterr().out
    assert "### Devices expiring within 14 days" in out
    assert "| acme | web-1 | " in out and "| 2027-01-05 | in 4.0 days |" in out
    assert main(["plan", str(repo), "--base", "HEAD", "--at", "2027-01-06", "--format",
                 "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["expiring"] == [{"org": "acme", "device": "web-1", "owner": "bob",
                                "expires": "2027-01-05", "days_left": -1.0, "expired": True}]
    assert main(["plan", str(repo), "--base", "HEAD", "--at", "2026-01-01"]) == 0
    assert "expiring" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plan", str(repo), "--base", "HEAD", "--at", "soon"])


def test_validate_warns_and_still_exits_0(repo, capsys):
    soon = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 3 * DAY, UTC)
    expire(repo, "acme", "web-1", soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert main(["validate", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "warning: orgs/acme/devices/web-1.yaml:" in out and "W-DEVICE-EXPIRING" in out
    assert main(["validate", str(repo), "--format", "github"]) == 0
    assert "::warning file=" in capsys.readouterr().out


def test_device_add_writes_the_org_lifetime_or_the_given_expiry(repo, capsys):
    org = repo / "orgs" / "acme" / "organization.yaml"
    org.write_text(org.read_text() + "  device_lifetime_days: 30\n")
    keys = ["--wireguard-key", "x" * 42 + "A=", "--identity-key", "y" * 42 + "A="]
    assert main(["device", "add", "new-1", "--org", "acme", "--repo", str(repo), *keys]) == 0
    text = (repo / "orgs/acme/devices/new-1.yaml").read_text()
    written = parse_expiry(text.split("expires: ")[1].strip().strip('"'))
    now = datetime.now(UTC).timestamp()
    assert now + 30 * DAY - 120 < written <= now + 30 * DAY
    keys = ["--wireguard-key", "z" * 42 + "A=", "--identity-key", "w" * 42 + "A="]
    assert main(["device", "add", "new-2", "--org", "acme", "--repo", str(repo), "--expires",
                 "2030-01-01", *keys]) == 0
    assert 'expires: "2030-01-01"' in (repo / "orgs/acme/devices/new-2.yaml").read_text()
    assert load(repo).repo.orgs["acme"].devices["new-2"].expires == "2030-01-01"
    with pytest.raises(SystemExit):
        main(["device", "add", "new-3", "--org", "acme", "--repo", str(repo), "--expires",
              "2030-02-31", *keys])
