"""example-repo/ and the pre-commit hook: the shapes CI and users rely on."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from reconciler.config import load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example-repo"


def test_project_ships_a_pre_commit_hook():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "meshops-validate")
    assert hook["entry"] == "meshops validate" and hook["pass_filenames"] is False
    config = yaml.safe_load((EXAMPLE / ".pre-commit-config.yaml").read_text())
    assert config["repos"][0]["hooks"][0]["id"] == "meshops-validate"


def test_workflow_validates_and_posts_the_plan():
    text = (EXAMPLE / ".github" / "workflows" / "meshops.yml").read_text()
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["validate"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert 'pip install "meshops @ git+https://' in runs  # not on PyPI: tests/test_readme.py
    assert "meshops validate --format github" in runs
    assert "meshops plan --base origin/${{ github.base_ref }} --format markdown" in runs
    assert "gh pr comment" in runs


def test_example_keys_are_real_public_keys():
    repo = load(EXAMPLE).repo
    devices = [d for org in repo.orgs.values() for d in org.devices.values()]
    assert len(devices) >= 6 and any(d.relay for d in devices)
    for dev in devices:
        X25519PublicKey.from_public_bytes(base64.b64decode(dev.wireguard_public_key))
        Ed25519PublicKey.from_public_bytes(base64.b64decode(dev.identity_public_key))
    relays = [d for d in devices if d.relay]
    assert all(d.endpoint.startswith("203.0.113.") for d in relays)
    assert all(u.oidc_issuer.startswith("https://") for o in repo.orgs.values()
               for u in o.users.values())
