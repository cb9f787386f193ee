"""effective_endpoints: agent config first, then the signed manifest (mesh.yaml).

The last test publishes example-repo for real (real gpg, real signatures) and reads
mesh.yaml's values back out of the verified manifest on disk."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from reconciler.agent.meshconfig import Endpoints, effective_endpoints
from reconciler.model.manifest import Manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"
MESH_HUB = "https://hub.example.com:8443"
MESH_STUN = ("203.0.113.1:3478", "203.0.113.2:3478")


def _manifest(hub_url: str | None = MESH_HUB, stun: tuple[str, ...] = MESH_STUN) -> Manifest:
    return Manifest(
        org="acme", serial=1, commit="c", issued_at=0, not_after=1, cidr_v4="10.9.0.0/16",
        cidr_v6=None, listen_port=51820, keepalive=25, devices=(), hub_url=hub_url,
        stun_servers=stun,
    )  # fmt: skip


CASES = [
    # (config_hub, config_stun, manifest, expected)
    ("https://10.0.0.1:8443", ["198.51.100.7:3478"], _manifest(),
     ("https://10.0.0.1:8443", ("198.51.100.7:3478",))),  # config wins for both
    (None, None, _manifest(), (MESH_HUB, MESH_STUN)),  # manifest fills both in
    ("https://10.0.0.1:8443", None, _manifest(), ("https://10.0.0.1:8443", MESH_STUN)),
    (None, ["198.51.100.7:3478"], _manifest(), (MESH_HUB, ("198.51.100.7:3478",))),
    (None, [], _manifest(), (MESH_HUB, ())),  # explicit empty list: STUN off
    ("", None, _manifest(), (MESH_HUB, MESH_STUN)),  # empty hub string is unset
    (None, None, None, (None, ())),  # no manifest yet
    ("https://h:1", ("198.51.100.7:3478",), None, ("https://h:1", ("198.51.100.7:3478",))),
    (None, None, _manifest(hub_url=None, stun=()), (None, ())),  # an old hub set neither
]


@pytest.mark.parametrize("config_hub,config_stun,manifest,expected", CASES)
def test_precedence(config_hub, config_stun, manifest, expected):
    got = effective_endpoints(config_hub, config_stun, manifest)
    assert got == expected
    assert isinstance(got, Endpoints) and isinstance(got.stun_servers, tuple)
    hub, stun = got  # unpacks as the pair the agent pass wants
    assert (hub, stun) == (got.hub_url, got.stun_servers)


def test_order_of_stun_servers_is_kept():
    servers = ("203.0.113.9:3478", "203.0.113.1:3478", "203.0.113.5:3478")
    assert effective_endpoints(None, None, _manifest(stun=servers)).stun_servers == servers
    assert effective_endpoints(None, list(servers), None).stun_servers == servers


def test_published_manifest_carries_mesh_yaml_endpoints_to_the_agent(tmp_path):
    """Real publish of example-repo, real verify from disk, then the agent's merge."""
    from reconciler.config import load
    from reconciler.hub.publish import example_gnupghome, publish
    from reconciler.pki.manifest import load_trust, verify_manifest

    home = example_gnupghome(EXAMPLE, tmp_path / "gnupg")
    try:
        now = time.time()
        publish(EXAMPLE, out_dir=tmp_path / "out", state=f"sqlite:///{tmp_path}/hub.db",
                now=now, gpg_home=home)  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       capture_output=True, check=False)  # fmt: skip
    mesh = load(EXAMPLE).repo.mesh
    trust = load_trust((tmp_path / "out" / "trust.json").read_bytes())
    for org in ("acme", "globex"):
        data = (tmp_path / "out" / org / "manifest.json").read_bytes()
        manifest = verify_manifest(data, trust, org, None, now)
        assert manifest.hub_url == mesh.hub_url == MESH_HUB
        assert manifest.stun_servers == mesh.stun_servers == MESH_STUN
        assert effective_endpoints(None, None, manifest) == (MESH_HUB, MESH_STUN)
        assert effective_endpoints("https://10.0.0.1:8443", [], manifest) == (
            "https://10.0.0.1:8443", ())
