"""The commit gate (``reconciler.hub.gate``) with real git and real gpg.

A copy of the example repository is a git repository whose first commit, signed by
a mesh admin listed in the hub's ``--gate-signers``, turns the gate on and names
alice (acme) and dana (globex) as owners with PGP keys. Every later publish runs
in a fresh ``Publisher`` on the same store without the admin bootstrap, so the
switch and the signer sets can only come from the last published commit.

The attacks: the flip (an unsigned commit turning the gate off and widening a
rule), a signer from another org, an owner added in the commit that uses her,
a revoked owner key, a merge bringing in an unsigned commit, an org owner editing
mesh.yaml or secrets/, and hub-signed commits that are not a scoped enrollment or
key rotation. The hub's own enrollment commit (``reconciler.hub.enroll``) is
accepted once merged by an owner. A refused commit keeps the last good one served,
and ``/v1/status`` and ``/metrics`` show why.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.cli import main
from reconciler.config import load
from reconciler.errors import CommitRefused, ConfigError
from reconciler.hub.api import make_app
from reconciler.hub.enroll import Enrollment
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.gate import Bootstrap, parse_signers
from reconciler.hub.publish import Publisher
from reconciler.hub.serve import Hub
from reconciler.hub.snapshot import PublisherPipeline

from .conftest import kill_gpg_agent
from .conftest_serve import run

pytestmark = pytest.mark.skipif(not shutil.which("gpg") or not shutil.which("git"),
                                reason="needs git and gpg")

NOW = float(int(time.time()))
WHO = ("alice", "dana", "admin", "mallory", "hub")


def _raw(key: Any) -> str:
    return base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def wg_key() -> str:
    return _raw(X25519PrivateKey.generate())


def id_key() -> str:
    return _raw(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def keyring(tmp_path_factory, example_gnupghome):
    """A GnuPG home with the example hub key (SOPS) and five signing keys."""
    home = tmp_path_factory.mktemp("gate-gnupg")
    shutil.copytree(example_gnupghome, home, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("S.*"))
    fprs = {}
    for who in WHO:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-gen-key", f"{who} <{who}@example.invalid>", "ed25519", "sign",
                        "never"], check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--homedir", str(home), "--with-colons",
                                  "--list-keys", f"{who}@example.invalid"],
                                 check=True, capture_output=True, text=True).stdout
        fprs[who] = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr"))
    kill_gpg_agent(home)
    return home, fprs


class Gated:
    """The repository, its keys and a publish helper (one store, fresh publishers)."""

    def __init__(self, tmp: Path, repo: Path, home: Path, fprs: dict[str, str]) -> None:
        self.repo, self.home, self.fpr = repo, str(home), fprs
        self.state = f"sqlite:///{tmp}/hub.db"
        self.env = dict(os.environ, GNUPGHOME=str(home), GIT_AUTHOR_NAME="t",
                        GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
                        GIT_COMMITTER_EMAIL="t@example.invalid", GIT_CONFIG_NOSYSTEM="1")
        self.hub_keys = frozenset({fprs["hub"]})
        self.clock = NOW

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.repo), *args], check=True,
                              capture_output=True, text=True, env=self.env).stdout.strip()

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.repo / rel
        text = path.read_text()
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new, 1))

    def append(self, rel: str, text: str) -> None:
        path = self.repo / rel
        path.write_text(path.read_text() + text)

    def commit(self, signer: str | None, message: str = "change", *,
               author: tuple[str, str] | None = None) -> str:
        self.git("add", "-A")
        sign = [f"-S{self.fpr[signer]}"] if signer else ["--no-gpg-sign"]
        who = ["-c", f"user.name={author[0]}", "-c", f"user.email={author[1]}"] if author else []
        self.git(*who, "commit", "-q", "--allow-empty", *sign, "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def publish(self, rev: str = "HEAD", admins: frozenset[str] = frozenset()) -> str:
        """One publish by a fresh publisher (like a restarted hub) on the shared store."""
        self.clock += 60
        with Publisher(self.repo, self.state, self.home,
                       gate=Bootstrap(admins=admins, hub_keys=self.hub_keys)) as pub:
            return pub.publish(rev, self.clock).commit

    def refused(self, reason: str, commit: str | None = None, path: str | None = None,
                match: str = "") -> CommitRefused:
        with pytest.raises(CommitRefused) as info:
            self.publish()
        err = info.value
        assert err.reason == reason, str(err)
        assert err.commit == (commit or self.head()), str(err)
        if path is not None:
            assert err.path == path, str(err)
        assert re.search(match, str(err)), str(err)
        return err

    def last_published(self) -> str | None:
        with Publisher(self.repo, self.state, self.home) as pub:
            return pub.store.last_published()

    def device_yaml(self, name: str, owner: str, ip: int) -> str:
        return (f"kind: Device\nname: {name}\nowner: {owner}\ndescription: enrolled by {owner}\n"
                f"wireguard:\n  public_key: {wg_key()}\nidentity:\n  public_key: {id_key()}\n"
                f"tunnel_ips:\n  - 10.10.0.{ip}\n  - fd10:10::{ip}\n")

    def hub_commit(self, user: str = "bob", subject: str = "bob", message: str = "enroll",
                   issuer: str = "https://accounts.example.com", trailers: str | None = None,
                   ) -> str:
        """A commit as ``reconciler.hub.enroll`` writes it: hub author, hub key, trailers."""
        if trailers is None:
            trailers = (f"Meshops-Enroll-User: {user}\nMeshops-Enroll-Issuer: {issuer}\n"
                        f"Meshops-Enroll-Subject: {subject}\n")
        return self.commit("hub", f"{message}\n\n{trailers}",
                           author=("meshops hub", "hub@meshops.invalid"))


@pytest.fixture
def gated(tmp_path, example_repo, keyring):
    """Gate on, admin listed in mesh.yaml and in the bootstrap, alice and dana owners;
    the first commit is signed by the admin and published."""
    template, fprs = keyring
    home = tmp_path / "gnupg"
    shutil.copytree(template, home, ignore=shutil.ignore_patterns("S.*"))
    g = Gated(tmp_path, example_repo, home, fprs)
    g.append("orgs/acme/users/alice.yaml", f"pgp_fingerprint: {fprs['alice']}\n")
    g.append("orgs/globex/users/dana.yaml", f"pgp_fingerprint: {fprs['dana']}\n")
    bob = example_repo / "orgs/acme/users/bob.yaml"
    bob.write_text(re.sub(r"subject: .*", "subject: bob", bob.read_text()))
    g.edit("mesh.yaml", "require_signed_commits: false",
           f"require_signed_commits: true\nadmins:\n  - {fprs['admin']}")
    g.git("init", "-q", "-b", "main")
    g.base = g.commit("admin", "base")
    assert g.publish(admins=frozenset({fprs["admin"]})) == g.base
    yield g
    kill_gpg_agent(home)


# -- commits by people ------------------------------------------------------------------------


def test_owner_signed_commits_are_published_without_the_bootstrap(gated):
    g = gated
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    one = g.commit("alice", "acme: keepalive")
    g.edit("orgs/globex/organization.yaml", "listen_port: 51821", "listen_port: 51822")
    two = g.commit("dana", "globex: keepalive")
    assert g.publish() == two  # both commits since the anchor are checked
    assert g.last_published() == two
    g.edit("mesh.yaml", "cert_lifetime_days: 30", "cert_lifetime_days: 20")
    g.commit("admin", "mesh: shorter certificates")
    assert g.publish() == g.head()
    assert one != two


def test_the_flip_unsigned_commit_turning_the_gate_off_and_widening_a_rule(gated):
    g = gated
    g.edit("mesh.yaml", "require_signed_commits: true", "require_signed_commits: false")
    policy = g.repo / "orgs/acme/policy.yaml"
    policy.write_text(policy.read_text() + "\n# widened\n")
    g.commit(None, "nothing to see")
    g.refused("unsigned", match="not signed")
    # signed by the org's owner, the switch is still a mesh-level file: refused
    g.git("commit", "-q", "--amend", f"-S{g.fpr['alice']}", "-m", "owner flips")
    g.refused("not-admin", path="mesh.yaml")
    # and with the head's own switch off, no later publisher reads it: the anchor is on
    assert g.last_published() == g.base


def test_a_signer_from_another_org_is_refused(gated):
    g = gated
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("dana", "globex's owner edits acme")
    g.refused("not-owner", path="orgs/acme/organization.yaml", match="owners")


def test_a_commit_touching_two_orgs_needs_one_key_owning_both(gated):
    g = gated
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.edit("orgs/globex/organization.yaml", "listen_port: 51821", "listen_port: 51822")
    g.commit("alice", "both orgs")
    g.refused("two-orgs", path="orgs/globex/organization.yaml", match="split it per org")
    g.git("commit", "-q", "--amend", f"-S{g.fpr['dana']}", "-m", "both orgs")
    g.refused("two-orgs", path="orgs/acme/organization.yaml")
    # dana becomes an owner of acme too (signed by acme's owner, published) ...
    g.git("reset", "-q", "--hard", g.base)
    (g.repo / "orgs/acme/users/dana.yaml").write_text(
        "kind: User\nname: dana\nemail: dana@acme.example.com\noidc:\n"
        "  issuer: https://accounts.example.com\n  subject: dana-acme\nrole: owner\n"
        f"pgp_fingerprint: {g.fpr['dana']}\n")
    g.commit("alice", "dana co-owns acme")
    assert g.publish() == g.head()
    # ... then one key owns both and one signature is enough
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.edit("orgs/globex/organization.yaml", "listen_port: 51821", "listen_port: 51822")
    g.commit("dana", "both orgs by their common owner")
    assert g.publish() == g.head()


def test_an_owner_added_in_the_same_commit_does_not_count_yet(gated):
    g = gated
    g.edit("orgs/acme/users/bob.yaml", "role: admin",
           f"role: owner\npgp_fingerprint: {g.fpr['mallory']}")
    policy = g.repo / "orgs/acme/policy.yaml"
    policy.write_text(policy.read_text() + "\n# mallory was here\n")
    g.commit("mallory", "takeover")
    g.refused("not-owner", path="orgs/acme/policy.yaml")
    # made owner by an existing owner, mallory's key counts from the next commit on
    g.git("commit", "-q", "--amend", f"-S{g.fpr['alice']}", "-m", "bob is an owner now")
    assert g.publish() == g.head()
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("mallory", "bob's key")
    assert g.publish() == g.head()


def test_a_disabled_owner_does_not_count(gated):
    g = gated
    g.append("orgs/acme/users/alice.yaml", "disabled: true\n")
    g.commit("alice", "alice leaves")
    assert g.publish() == g.head()  # she was an owner at the anchor
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("alice", "after leaving")
    # acme has no keyed owner left: the mesh admins govern it until it has one again
    g.refused("not-admin", match="has no owner with a pgp_fingerprint")
    g.git("commit", "-q", "--amend", f"-S{g.fpr['admin']}", "-m", "by an admin")
    assert g.publish() == g.head()


def test_an_owner_key_revoked_in_gpg_is_refused(gated):
    g = gated
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("alice", "signed before the revocation")
    rev = Path(g.home) / "openpgp-revocs.d" / f"{g.fpr['alice']}.rev"
    cert = rev.read_text().replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----",
                                   "-----BEGIN PGP PUBLIC KEY BLOCK-----")
    subprocess.run(["gpg", "--homedir", g.home, "--batch", "--import"], input=cert, text=True,
                   check=True, capture_output=True)
    g.refused("bad-signature", match="revoked")


def test_an_unknown_key_is_refused(gated):
    g = gated
    subprocess.run(["gpg", "--homedir", g.home, "--batch", "--passphrase", "", "--quick-gen-key",
                    "stranger <s@example.invalid>", "ed25519", "sign", "never"],
                   check=True, capture_output=True, env={**g.env, "GNUPGHOME": g.home})
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.git("add", "-A")
    g.git("commit", "-q", "-Ss@example.invalid", "-m", "stranger")
    g.refused("not-owner", match="is not one")


def test_a_merge_commit_and_the_merged_commits_are_checked(gated):
    g = gated
    g.git("checkout", "-q", "-b", "feature")
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    good = g.commit("alice", "good")
    policy = g.repo / "orgs/acme/policy.yaml"
    policy.write_text(policy.read_text() + "\n# sneaked in\n")
    sneaky = g.commit(None, "unsigned, on the branch")
    g.git("checkout", "-q", "main")
    g.git("merge", "-q", "--no-ff", f"-S{g.fpr['alice']}", "-m", "merge feature", "feature")
    g.refused("unsigned", commit=sneaky, path="orgs/acme/policy.yaml")
    # the branch without its unsigned commit, merged by a signed merge: published
    g.git("reset", "-q", "--hard", g.base)
    g.git("merge", "-q", "--no-ff", f"-S{g.fpr['alice']}", "-m", "merge good", good)
    assert g.publish() == g.head()
    # a good branch merged by an unsigned merge commit: the merge itself is refused
    g.git("checkout", "-q", "-b", "feature2")
    g.edit("orgs/acme/organization.yaml", "keepalive: 20", "keepalive: 19")
    g.commit("alice", "good again")
    g.git("checkout", "-q", "main")
    g.git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "unsigned merge", "feature2")
    g.refused("unsigned", path="orgs/acme/organization.yaml")
    # a merge signed by another org's owner is judged against its first parent's diff
    g.git("reset", "-q", "--hard", "HEAD^")
    g.git("merge", "-q", "--no-ff", f"-S{g.fpr['dana']}", "-m", "dana merges", "feature2")
    g.refused("not-owner", path="orgs/acme/organization.yaml")


@pytest.mark.parametrize(("rel", "old", "new"), [
    ("mesh.yaml", "cert_lifetime_days: 30", "cert_lifetime_days: 365"),
    ("mesh.yaml", "require_signed_commits: true", "require_signed_commits: false"),
    ("secrets/acme-ca.sops.yaml", "sops:", "sops:"),
    ("README-ops.txt", "", "hello"),
    ("orgs/newco/organization.yaml", "", "kind: Organization\nname: newco\ncidr_v4: 10.99.0.0/16\n"),
])
def test_mesh_level_files_need_an_admin(gated, rel, old, new):
    g = gated
    path = g.repo / rel
    if path.exists():
        text = path.read_text()
        path.write_text(text.replace(old, new, 1) if old != new else text + "\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new)
    g.commit("alice", "an org owner edits " + rel)
    g.refused("not-admin", path=rel)


def test_the_admin_list_comes_from_the_last_published_commit(gated):
    g = gated
    g.edit("mesh.yaml", f"  - {g.fpr['admin']}", f"  - {g.fpr['admin']}\n  - {g.fpr['mallory']}")
    g.commit("mallory", "mallory makes herself admin")
    g.refused("not-admin", path="mesh.yaml")
    g.git("commit", "-q", "--amend", f"-S{g.fpr['admin']}", "-m", "admin adds mallory")
    assert g.publish() == g.head()
    g.edit("mesh.yaml", "cert_lifetime_days: 30", "cert_lifetime_days: 20")
    g.commit("mallory", "now an admin")
    assert g.publish() == g.head()


def test_a_refused_commit_keeps_serving_the_last_good_one_until_a_good_one_replaces_it(gated):
    g = gated
    with Publisher(g.repo, g.state, g.home, gate=Bootstrap(hub_keys=g.hub_keys)) as pub:
        g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
        bad = g.commit(None, "unsigned")
        with pytest.raises(CommitRefused):
            pub.publish("HEAD", NOW + 100)
        assert pub.store.last_published() == g.base
        # a good commit on top does not launder the bad one: it is still in the range
        g.edit("orgs/acme/organization.yaml", "keepalive: 20", "keepalive: 19")
        g.commit("alice", "signed, on top of the unsigned one")
        with pytest.raises(CommitRefused) as info:
            pub.publish("HEAD", NOW + 200)
        assert info.value.commit == bad
        # the branch rewritten without it (amend -S / reset): served
        g.git("reset", "-q", "--hard", g.base)
        g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 19")
        good = g.commit("alice", "signed")
        assert pub.publish("HEAD", NOW + 300).commit == good
        assert pub.store.last_published() == good


def test_status_and_metrics_show_the_refusal(gated, tmp_path):
    g = gated

    async def go() -> None:
        pipeline = PublisherPipeline(str(g.repo), g.state, g.home,
                                     gate=Bootstrap(hub_keys=g.hub_keys))
        hub = Hub(pipeline=pipeline, store=FeedStore(g.state), now=lambda: NOW + 500)
        await hub.start()
        try:
            async with TestClient(TestServer(make_app(hub))) as client:
                await hub.reconcile(g.base)
                assert hub.snapshot.commit == g.base
                g.edit("mesh.yaml", "require_signed_commits: true",
                       "require_signed_commits: false")
                bad = g.commit(None, "flip")
                await hub.reconcile(bad)
                status = await (await client.get("/v1/status")).json()
                assert status["serving_commit"] == g.base
                assert status["failing_commit"] == bad and status["healthy"] is False
                assert status["error_class"] == "CommitRefused"
                assert status["error_kind"] == "permanent"
                assert f"commit {bad[:12]} (mesh.yaml) refused (unsigned)" in status["last_error"]
                text = await (await client.get("/metrics")).text()
                assert re.search(rf'meshops_hub_publish_failure\{{[^}}]*{bad[:12]}[^}}]*'
                                 r'CommitRefused[^}]*\} 1', text) or \
                    re.search(rf'meshops_hub_publish_failure\{{[^}}]*CommitRefused[^}}]*'
                              rf'{bad[:12]}[^}}]*\}} 1', text), text
                assert re.search(r"^meshops_hub_publish_failing 1", text, re.MULTILINE)
                # a permanent refusal is not retried; a newer good commit replaces it
                g.git("reset", "-q", "--hard", g.base)
                g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
                good = g.commit("alice", "good")
                await hub.reconcile(good)
                status = await (await client.get("/v1/status")).json()
                assert status["serving_commit"] == good and status["healthy"] is True
                assert status["last_error"] is None
                text = await (await client.get("/metrics")).text()
                assert "CommitRefused" not in text
                assert re.search(r"^meshops_hub_publish_failing 0", text, re.MULTILINE)
        finally:
            await hub.close()
            pipeline.close()

    run(go())


# -- hub-signed scoped commits -----------------------------------------------------------------


def _enroll_service(g: Gated, served: str) -> Enrollment:
    return Enrollment(repo_path=str(g.repo), push_url=str(g.repo), branch="main",
                      served_commit=lambda: served, commit_key=g.fpr["hub"], gnupghome=g.home)


def test_the_hubs_own_enrollment_commit_is_accepted_once_an_owner_merges_it(gated):
    g = gated
    repo = load(g.repo, g.base).repo
    bob = repo.orgs["acme"].users["bob"]
    service = _enroll_service(g, g.base)
    body = {"name": "bob-phone", "wireguard_public_key": wg_key(),
            "identity_public_key": id_key()}
    commit, _added, target = service._commit_and_push("acme", body, bob, "bob", NOW, False)
    assert target == "enroll/acme/bob-phone"
    # a fast-forward (no review) is refused: acme does not auto-approve
    g.git("merge", "-q", "--ff-only", target)
    g.refused("hub-scope", commit=commit, path="orgs/acme/devices/bob-phone.yaml",
              match="without review")
    # approval is a merge commit signed by an owner: the merge and the hub's commit pass
    g.git("reset", "-q", "--hard", g.base)
    g.git("merge", "-q", "--no-ff", f"-S{g.fpr['alice']}", "-m", "approve bob-phone", target)
    assert g.publish() == g.head()
    published = load(g.repo, g.head()).repo
    assert "bob-phone" in published.orgs["acme"].devices


def test_auto_approved_enrollment_straight_on_the_branch(gated):
    g = gated
    g.append("orgs/acme/organization.yaml",
             "enrollment:\n  issuer: https://accounts.example.com\n  client_id: meshops\n"
             "  auto_approve:\n    roles: [admin]\n    max_devices_per_user: 3\n")
    g.commit("alice", "acme auto-approves admins")
    assert g.publish() == g.head()
    (g.repo / "orgs/acme/devices/bob-2.yaml").write_text(g.device_yaml("bob-2", "bob", 60))
    g.hub_commit()
    assert g.publish() == g.head()  # bob owned two devices: admitted
    (g.repo / "orgs/acme/devices/bob-3.yaml").write_text(g.device_yaml("bob-3", "bob", 61))
    g.hub_commit()
    g.refused("hub-scope", match="owns 3 devices already")


def _mutate(g: Gated, what: str) -> None:
    devices = g.repo / "orgs/acme/devices"
    if what == "two-devices":
        (devices / "bob-2.yaml").write_text(g.device_yaml("bob-2", "bob", 60))
        (devices / "bob-3.yaml").write_text(g.device_yaml("bob-3", "bob", 61))
    elif what == "device-and-policy":
        (devices / "bob-2.yaml").write_text(g.device_yaml("bob-2", "bob", 60))
        g.append("orgs/acme/policy.yaml", "\n# wider\n")
    elif what == "policy":
        g.append("orgs/acme/policy.yaml", "\n# wider\n")
    elif what == "mesh":
        g.edit("mesh.yaml", "require_signed_commits: true", "require_signed_commits: false")
    elif what == "user":
        (g.repo / "orgs/acme/users/zed.yaml").write_text(
            "kind: User\nname: zed\nemail: z@example.com\noidc:\n  issuer: "
            "https://accounts.example.com\n  subject: zed\nrole: owner\n")
    elif what == "delete":
        (devices / "old-kiosk.yaml").unlink()
    elif what == "other-owner":
        (devices / "alice-2.yaml").write_text(g.device_yaml("alice-2", "alice", 60))
    elif what in ("no-trailers", "wrong-subject", "unknown-user"):
        (devices / "bob-2.yaml").write_text(g.device_yaml("bob-2", "bob", 60))
    elif what == "disabled-user":
        (devices / "carol-2.yaml").write_text(g.device_yaml("carol-2", "carol", 60))
    elif what == "rotation-and-ip":
        _rotate(g, "laptop-bob")
        g.edit("orgs/acme/devices/laptop-bob.yaml", "10.10.0.", "10.10.0.1")
    elif what == "rotation-same-key":
        g.edit("orgs/acme/devices/laptop-bob.yaml", "keepalive: 15", "keepalive: 16")
    elif what == "rotation-disabled":
        _rotate(g, "old-kiosk")
    elif what == "relay":
        g.edit("orgs/acme/devices/laptop-bob.yaml", "owner: bob",
               "owner: bob\nrelay: true\nendpoint: 203.0.113.9:51820")


def _rotate(g: Gated, device: str, owner: str = "alice", *, signed_by_device: bool = True,
            request_key: str | None = None) -> str:
    """The rotation the hub writes: an owner first gives the device an identity key
    this test holds (a signed commit), then the device file's WireGuard key changes.
    Returns the commit message with the device's signed request as its trailer."""
    import base64
    import json as _json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.identity.rotation import PAYLOAD_TYPE, make_body
    from reconciler.pki.envelope import sign_envelope
    from reconciler.pki.keys import public_b64

    identity = Ed25519PrivateKey.generate()
    path = g.repo / f"orgs/acme/devices/{device}.yaml"
    path.write_text(re.sub(r"(identity:\n  public_key: )\S+",
                           rf"\g<1>{public_b64(identity.public_key())}", path.read_text()))
    g.commit(owner, f"{device}: an identity key the test holds")
    new = wg_key()
    path.write_text(re.sub(r"(wireguard:\n  public_key: )\S+", rf"\g<1>{new}",
                           path.read_text()))
    signer = identity if signed_by_device else Ed25519PrivateKey.generate()
    body = make_body(org="acme", device=device, new_wireguard_public_key=request_key or new,
                     issued_at=int(g.clock))
    envelope = sign_envelope(_json.dumps(body, sort_keys=True).encode(), PAYLOAD_TYPE, signer)
    return (f"rotate {device}\n\nMeshops-Rotate-Device: {device}\n"
            f"Meshops-Rotate-Request: {base64.b64encode(envelope).decode()}")


@pytest.mark.parametrize(("what", "match"), [
    ("two-devices", "changes 2 files"),
    ("device-and-policy", "changes 2 files"),
    ("policy", "changes orgs/acme/policy.yaml"),
    ("mesh", "changes mesh.yaml"),
    ("user", "adds orgs/acme/users/zed.yaml"),
    ("delete", "removes orgs/acme/devices/old-kiosk.yaml"),
    ("other-owner", "owner is 'alice', not the enrolled user 'bob'"),
    ("no-trailers", "needs exactly one of each trailer"),
    ("wrong-subject", "is not user bob's"),
    ("unknown-user", "user nobody does not exist"),
    ("disabled-user", "user carol is disabled"),
    ("rotation-and-ip", "changes more than wireguard.public_key"),
    ("rotation-same-key", "must be present and change"),
    ("rotation-disabled", "the device is disabled"),
    ("relay", "must be present and change"),
])
def test_hub_signed_commits_that_do_anything_else_are_refused(gated, what, match):
    g = gated
    carol = g.repo / "orgs/acme/users/carol.yaml"
    if what == "disabled-user":
        carol.write_text(re.sub(r"subject: .*", "subject: carol", carol.read_text())
                         + "disabled: true\n")
        g.commit("alice", "carol leaves")
        assert g.publish() == g.head()
    _mutate(g, what)
    if what == "no-trailers":
        g.hub_commit(trailers="")
    elif what == "wrong-subject":
        g.hub_commit(subject="mallory")
    elif what == "unknown-user":
        g.hub_commit(user="nobody", subject="nobody")
    elif what == "disabled-user":
        g.hub_commit(user="carol", subject="carol")
    else:
        g.hub_commit()
    err = g.refused("hub-scope", match=re.escape(match))
    assert g.last_published() != err.commit


def test_a_hub_signed_key_rotation_is_accepted(gated):
    g = gated
    message = _rotate(g, "laptop-bob")
    g.commit("hub", message, author=("meshops hub", "hub@meshops.invalid"))
    assert g.publish() == g.head()
    served = load(g.repo, g.head()).repo.orgs["acme"].devices["laptop-bob"]
    before = load(g.repo, g.base).repo.orgs["acme"].devices["laptop-bob"]
    assert served.wireguard_public_key != before.wireguard_public_key


@pytest.mark.parametrize(("how", "match"), [
    ("no-request", "needs exactly one Meshops-Rotate-Request"),
    ("another-signer", "not signed by the device's identity key"),
    ("another-key", "another device or another key"),
])
def test_a_hub_key_alone_cannot_rotate_a_device(gated, how, match):
    """A stolen hub key with write access: the rotation commit must carry the
    device's own signed request for exactly this key."""
    g = gated
    message = _rotate(g, "laptop-bob", signed_by_device=how != "another-signer",
                      request_key=wg_key() if how == "another-key" else None)
    if how == "no-request":
        message = message.split("\nMeshops-Rotate-Request:")[0]
    g.commit("hub", message, author=("meshops hub", "hub@meshops.invalid"))
    g.refused("hub-scope", match=match)


def test_a_hub_signed_merge_is_refused(gated):
    g = gated
    g.git("checkout", "-q", "-b", "side")
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("alice", "good")
    g.git("checkout", "-q", "main")
    g.git("merge", "-q", "--no-ff", f"-S{g.fpr['hub']}", "-m", "the hub merges", "side")
    g.refused("hub-scope", match="merge or root commit")


# -- bootstrap --------------------------------------------------------------------------------


def test_nothing_published_no_bootstrap_and_a_head_that_asks_for_the_gate(tmp_path, gated):
    g = gated
    g.state = f"sqlite:///{tmp_path}/fresh.db"
    with pytest.raises(CommitRefused) as info:
        g.publish()
    assert info.value.reason == "no-signers" and "--gate-signers" in str(info.value)


def test_the_first_commit_must_be_signed_by_a_bootstrap_signer(tmp_path, gated):
    g = gated
    g.state = f"sqlite:///{tmp_path}/fresh.db"
    admins = frozenset({g.fpr["admin"]})
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("alice", "an owner, not a bootstrap signer")
    with pytest.raises(CommitRefused, match="listed in --gate-signers") as info:
        g.publish(admins=admins)
    assert info.value.reason == "not-admin"
    g.git("commit", "-q", "--amend", "--no-gpg-sign", "-m", "unsigned")
    with pytest.raises(CommitRefused, match="no signature"):
        g.publish(admins=admins)
    g.git("commit", "-q", "--amend", f"-S{g.fpr['admin']}", "-m", "by the admin")
    assert g.publish(admins=admins) == g.head()


def test_the_bootstrap_turns_the_gate_on_whatever_the_anchor_says(gated):
    g = gated
    g.edit("mesh.yaml", "require_signed_commits: true", "require_signed_commits: false")
    g.commit("admin", "gate off, by an admin")
    assert g.publish() == g.head()
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit(None, "unsigned, the gate is off now")
    assert g.publish() == g.head()
    g.edit("orgs/acme/organization.yaml", "keepalive: 20", "keepalive: 19")
    g.commit(None, "unsigned again")
    with pytest.raises(CommitRefused, match="not signed"):
        g.publish(admins=frozenset({g.fpr["admin"]}))


def test_a_lost_anchor_is_read_as_nothing_published(gated, caplog):
    g = gated
    with Publisher(g.repo, g.state, g.home) as pub:
        pub.store.set_last_serial("acme", 2**62, "0" * 40, int(NOW + 10_000))
    with pytest.raises(CommitRefused) as info:
        g.publish()
    assert info.value.reason == "no-signers"
    assert "is not in" in caplog.text
    assert g.publish(admins=frozenset({g.fpr["admin"]})) == g.base  # re-anchored


@pytest.mark.parametrize(("text", "error"), [
    ("", "lists no fingerprint"),
    ("# only a comment\n\n", "lists no fingerprint"),
    ("ABCD1234\n", "f:1: 'ABCD1234' is not a full PGP fingerprint"),
    ("A" * 40 + "\nalice@example.com\n", "f:2: 'alice@example.com'"),
    ("G" * 40, "f:1:"),
])
def test_gate_signers_file_errors_name_the_line(text, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_signers(text, "f")


def test_gate_signers_file_is_parsed():
    fpr = "97A7 5CAB DC50 A83D 2C4A  0E2D DB02 37F0 19A9 D31D"
    assert parse_signers(f"# admins\n{fpr.lower()}  # ops\n\n", "f") == frozenset(
        {fpr.replace(" ", "")})


def test_hub_publish_cli_bootstraps_the_gate(tmp_path, gated, capsys):
    g = gated
    signers = tmp_path / "signers"
    signers.write_text(f"# mesh admins\n{g.fpr['admin']}\n")
    state = f"sqlite:///{tmp_path}/cli.db"
    g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
    g.commit("alice", "owner commit, not yet anchored")
    args = ["hub", "publish", str(g.repo), "--rev", "HEAD", "--out", str(tmp_path / "out"),
            "--state", state, "--gnupghome", g.home, "--gate-signers", str(signers),
            "--commit-key", g.fpr["hub"]]
    assert main(args) == 1
    assert "refused (not-admin)" in capsys.readouterr().err
    g.git("commit", "-q", "--amend", f"-S{g.fpr['admin']}", "-m", "by the admin")
    assert main(args) == 0
    assert (tmp_path / "out" / "acme" / "manifest.json").exists()
    signers.write_text("not a fingerprint\n")
    assert main(args) == 1
    assert f"{signers}:1:" in capsys.readouterr().err


def test_a_mesh_in_a_subdirectory_of_a_larger_repository(tmp_path, keyring):
    """Paths are relative to the mesh directory; commits outside it change nothing the
    hub reads and need no signature; hub rotations read their blobs from the subdirectory."""
    from .conftest import EXAMPLE_REPO

    template, fprs = keyring
    home = tmp_path / "gnupg"
    shutil.copytree(template, home, ignore=shutil.ignore_patterns("S.*"))
    top = tmp_path / "top"
    shutil.copytree(EXAMPLE_REPO, top / "mesh", ignore=shutil.ignore_patterns(".git"))
    (top / "app.txt").write_text("the rest of a monorepo\n")
    g = Gated(tmp_path, top / "mesh", home, fprs)
    g.append("orgs/acme/users/alice.yaml", f"pgp_fingerprint: {fprs['alice']}\n")
    g.edit("mesh.yaml", "require_signed_commits: false",
           f"require_signed_commits: true\nadmins:\n  - {fprs['admin']}")
    subprocess.run(["git", "init", "-q", "-b", "main", str(top)], check=True, env=g.env)
    g.commit("admin", "base")
    try:
        assert g.publish(admins=frozenset({fprs["admin"]})) == g.head()
        (top / "app.txt").write_text("changed, unsigned\n")
        g.commit(None, "outside the mesh")
        assert g.publish() == g.head()
        g.commit("hub", _rotate(g, "laptop-bob"))
        assert g.publish() == g.head()
        g.edit("orgs/acme/organization.yaml", "keepalive: 25", "keepalive: 20")
        g.commit("dana", "not an owner")
        g.refused("not-owner", path="orgs/acme/organization.yaml")
    finally:
        kill_gpg_agent(home)


def test_hub_serve_builds_the_gate_from_its_options(tmp_path, gated):
    from reconciler.errors import SecretsError
    from reconciler.hub.daemon import ServeConfig, _default_pipeline

    g = gated
    signers = tmp_path / "signers"
    signers.write_text(f"{g.fpr['admin']}\n")
    config = ServeConfig(repo=str(g.repo), gnupghome=g.home, state_dir=str(tmp_path / "st"),
                         gate_signers=str(signers), commit_key=g.fpr["hub"])
    pipeline = _default_pipeline(config, str(g.repo))
    try:
        boot = pipeline._publisher.gate.bootstrap
        assert boot.admins == {g.fpr["admin"]} and g.fpr["hub"] in boot.hub_keys
        assert boot.enabled
    finally:
        pipeline.close()
    signers.write_text("alice@example.invalid\n")
    with pytest.raises(ConfigError, match=f"{signers}:1:"):
        _default_pipeline(config, str(g.repo))
    config.gate_signers = None
    config.commit_key = "example.invalid"  # matches five keys: ambiguous
    with pytest.raises(SecretsError, match="give the full fingerprint"):
        _default_pipeline(config, str(g.repo))
    config.commit_key = "nobody@nowhere.invalid"
    with pytest.raises(SecretsError, match="no secret key"):
        _default_pipeline(config, str(g.repo))
