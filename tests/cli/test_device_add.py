"""``meshops device add``: output, exit codes 0/1/2, nothing written on refusal."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import load

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def add(repo: Path, *extra: str, name: str = "kiosk-2", org: str = "acme") -> list[str]:
    return ["device", "add", "--repo", str(repo), "--org", org, name,
            "--wireguard-key", key("wg" + name), "--identity-key", key("id" + name), *extra]


def files(repo: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def test_prints_path_and_ips_and_writes_valid_file(repo: Path, capsys):
    assert main(add(repo, "--tag", "web", "--tag", "web", "--tag", "kiosk")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "wrote orgs/acme/devices/kiosk-2.yaml"
    dev = load(repo).repo.orgs["acme"].devices["kiosk-2"]
    assert f"  tunnel_ips: {', '.join(dev.tunnel_ips)}" in out
    assert dev.tags == ("web", "kiosk")  # repeated --tag deduplicated


def test_relay(repo: Path, capsys):
    assert main(add(repo, "--relay", "--endpoint", "203.0.113.9:51820", name="relay-9")) == 0
    dev = load(repo).repo.orgs["acme"].devices["relay-9"]
    assert dev.relay and dev.endpoint == "203.0.113.9:51820"
    capsys.readouterr()


def test_successive_adds_take_successive_addresses(repo: Path, capsys):
    assert main(add(repo, name="a-1")) == 0
    assert main(add(repo, name="a-2")) == 0
    devices = load(repo).repo.orgs["acme"].devices
    first, second = devices["a-1"].tunnel_ips[0], devices["a-2"].tunnel_ips[0]
    assert int(second.rsplit(".", 1)[1]) > int(first.rsplit(".", 1)[1])
    capsys.readouterr()


def test_duplicate_exits_1_and_writes_nothing(repo: Path, capsys):
    before = files(repo)
    assert main(add(repo, name="web-1")) == 1
    err = capsys.readouterr().err
    assert "refused, nothing written" in err and "E-DUP-NAME" in err
    assert files(repo) == before


@pytest.mark.parametrize("extra,org", [
    (["--owner", "nobody"], "acme"),
    ([], "nope"),
    (["--relay"], "acme"),
])
def test_bad_arguments_exit_2(repo: Path, capsys, extra, org):
    before = files(repo)
    assert main(add(repo, *extra, org=org)) == 2
    assert capsys.readouterr().err.startswith("meshops: ")
    assert files(repo) == before


def test_missing_required_option_exits_2(repo: Path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["device", "add", "--repo", str(repo), "--org", "acme", "x"])
    assert info.value.code == 2
    capsys.readouterr()


def test_run_from_a_directory_above_the_repo_names_it_and_writes_nothing(tmp_path, capsys):
    """`meshops device add` in the meshops checkout (not the org repo) says where it is."""
    shutil.copytree(EXAMPLE, tmp_path / "example-repo")
    before = files(tmp_path)
    code = main(add(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path} is not a meshops repository (no mesh.yaml, no orgs/)" in err
    assert f"meshops device add --repo {tmp_path / 'example-repo'}" in err
    assert files(tmp_path) == before


def test_missing_repo_directory_is_a_usage_error(tmp_path, capsys):
    assert main(add(tmp_path / "nowhere")) == 2
    assert "is not a directory" in capsys.readouterr().err
