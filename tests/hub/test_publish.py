"""``reconciler.hub.publish`` on a copy of the example repository (real SOPS + gpg)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler import structs
from reconciler.errors import ManifestRefused, PkiError, ValidationError
from reconciler.hub.publish import Publisher, publish
from reconciler.hub.store import open_store
from reconciler.pki import certs as pki_certs
from reconciler.pki.manifest import load_trust, manifest_to_dict, verify_manifest

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"
NOW = float(int(time.time()))  # the example CA is valid from its creation on
DAY = 86400


def _state(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/hub.db"


def _verify(out: Path, org: str, last=None, now=NOW + 1):
    trust = load_trust((out / "trust.json").read_bytes())
    return verify_manifest((out / org / "manifest.json").read_bytes(), trust, org, last, now)


def _set_key(path: Path, field: str, value: str) -> None:
    text = path.read_text()
    text = re.sub(rf"({field}:\n  public_key: )\S+", rf"\g<1>{value}", text)
    path.write_text(text)


def test_publish_writes_verifiable_output(tmp_path, example_repo, example_gnupghome):
    out = tmp_path / "out"
    result = publish(example_repo, out_dir=out, state=_state(tmp_path), now=NOW,
                     gpg_home=example_gnupghome)  # fmt: skip
    assert set(result.orgs) == {"acme", "globex"}
    for org, org_pub in result.orgs.items():
        m = _verify(out, org)
        assert m == org_pub.manifest
        assert (out / org / "manifest.json").read_bytes() == org_pub.envelope
        ca = (out / org / "ca.crt").read_text()
        assert ca == (example_repo / "orgs" / org / "ca.crt").read_text()
        names = {p.stem for p in (out / org / "certs").glob("*.pem")}
        assert names == {d.name for d in m.devices}
        for d in m.devices:
            pem = (out / org / "certs" / f"{d.name}.pem").read_text()
            ident = pki_certs.check_device_cert(pem, ca, NOW + 1)
            assert (ident.org, ident.name) == (org, d.name)
            assert ident.wireguard_public_key == d.wireguard_public_key
            assert pki_certs.fingerprint(pem) == d.cert_sha256
    assert "old-kiosk" not in {d.name for d in result.orgs["acme"].manifest.devices}  # disabled
    trust = json.loads((out / "trust.json").read_text())
    assert set(trust["orgs"]) == {"acme", "globex"}


def test_same_commit_same_state_same_manifest(tmp_path, example_repo, example_gnupghome):
    state = _state(tmp_path)
    a = publish(example_repo, state=state, now=NOW, gpg_home=example_gnupghome)
    b = publish(example_repo, state=state, now=NOW + 3600, gpg_home=example_gnupghome)
    for org in a.orgs:
        ma, mb = a.orgs[org].manifest, b.orgs[org].manifest
        assert mb.serial > ma.serial
        strip = {"serial": 0, "issued_at": 0, "not_after": 0}
        assert structs.replace(ma, **strip) == structs.replace(mb, **strip)
        assert b.orgs[org].issued == ()
        assert a.orgs[org].certs == b.orgs[org].certs


def test_invalid_repo_writes_nothing(tmp_path, example_repo, example_gnupghome):
    (example_repo / "orgs" / "acme" / "devices" / "web-1.yaml").write_text(
        "kind: Device\nname: web-1\nowner: nobody\n"
    )
    out = tmp_path / "out"
    with pytest.raises(ValidationError) as err:
        publish(example_repo, out_dir=out, state=_state(tmp_path), now=NOW,
                gpg_home=example_gnupghome)  # fmt: skip
    assert any("web-1.yaml" in p.file for p in err.value.problems)
    assert not out.exists()


def test_removed_and_disabled_devices_are_revoked(tmp_path, example_repo, example_gnupghome):
    state, out = _state(tmp_path), tmp_path / "out"
    first = publish(example_repo, out_dir=out, state=state, now=NOW, gpg_home=example_gnupghome)
    certs = first.orgs["globex"].certs
    serial_nas = pki_certs.device_identity(certs["nas-1"]).serial
    serial_phone = pki_certs.device_identity(certs["phone-dana"]).serial
    devices = example_repo / "orgs" / "globex" / "devices"
    (devices / "nas-1.yaml").unlink()
    phone = devices / "phone-dana.yaml"
    phone.write_text(phone.read_text() + "disabled: true\n")
    second = publish(example_repo, out_dir=out, state=state, now=NOW + 60,
                     gpg_home=example_gnupghome)  # fmt: skip
    m = _verify(out, "globex", now=NOW + 61)
    assert set(m.revoked) == {serial_nas, serial_phone}
    assert set(second.orgs["globex"].revoked) == {serial_nas, serial_phone}
    assert second.orgs["acme"].revoked == () and second.orgs["acme"].manifest.revoked == ()
    assert not (out / "globex" / "certs" / "nas-1.pem").exists()
    assert not (out / "globex" / "certs" / "phone-dana.pem").exists()
    assert m.device("nas-1") is None and m.device("phone-dana") is None
    # still listed while those certificates have not expired, gone after
    later = publish(example_repo, state=state, now=NOW + 31 * DAY, gpg_home=example_gnupghome)
    assert later.orgs["globex"].manifest.revoked == ()


def test_key_change_reissues_and_revokes(tmp_path, example_repo, example_gnupghome):
    state = _state(tmp_path)
    first = publish(example_repo, state=state, now=NOW, gpg_home=example_gnupghome)
    old = pki_certs.device_identity(first.orgs["acme"].certs["web-1"]).serial
    new_wg = "kxU3BlrVg1Cj9yx1OdVC+KKqlbXh54YF0/dybRDYKgA="
    _set_key(example_repo / "orgs" / "acme" / "devices" / "web-1.yaml", "wireguard", new_wg)
    second = publish(example_repo, state=state, now=NOW + 60, gpg_home=example_gnupghome)
    assert second.orgs["acme"].issued == ("web-1",)
    ident = pki_certs.device_identity(second.orgs["acme"].certs["web-1"])
    assert ident.wireguard_public_key == new_wg and ident.serial != old
    assert old in second.orgs["acme"].manifest.revoked


def test_renewal_after_two_thirds_without_revoking(tmp_path, example_repo, example_gnupghome):
    state = _state(tmp_path)
    first = publish(example_repo, state=state, now=NOW, gpg_home=example_gnupghome)
    mid = publish(example_repo, state=state, now=NOW + 15 * DAY, gpg_home=example_gnupghome)
    assert mid.orgs["acme"].issued == ()
    late = publish(example_repo, state=state, now=NOW + 21 * DAY, gpg_home=example_gnupghome)
    acme = late.orgs["acme"]
    assert set(acme.issued) == {d.name for d in acme.manifest.devices}
    assert acme.manifest.revoked == ()
    assert acme.certs["web-1"] != first.orgs["acme"].certs["web-1"]


def test_serial_increases_after_state_loss(tmp_path, example_repo, example_gnupghome):
    a = publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome)
    lost = tmp_path / "lost"
    lost.mkdir()
    b = publish(example_repo, state=_state(lost), now=NOW + 1, gpg_home=example_gnupghome)
    assert b.orgs["acme"].manifest.serial > a.orgs["acme"].manifest.serial
    with open_store(_state(tmp_path)) as s:
        assert s.last_serial("acme")[0] == a.orgs["acme"].manifest.serial


def test_replay_of_previous_publish_is_refused(tmp_path, example_repo, example_gnupghome):
    state, out = _state(tmp_path), tmp_path / "out"
    publish(example_repo, out_dir=out, state=state, now=NOW, gpg_home=example_gnupghome)
    old = (out / "acme" / "manifest.json").read_bytes()
    publish(example_repo, out_dir=out, state=state, now=NOW + 10, gpg_home=example_gnupghome)
    new = _verify(out, "acme", now=NOW + 11)
    trust = load_trust((out / "trust.json").read_bytes())
    with pytest.raises(ManifestRefused) as err:
        verify_manifest(old, trust, "acme", new.serial, NOW + 11)
    assert err.value.reason == "rollback"


def test_missing_ca_secret_is_a_clear_error(tmp_path, example_repo, example_gnupghome):
    (example_repo / "secrets" / "globex-ca.sops.yaml").unlink()
    with pytest.raises(PkiError, match="secrets/globex-ca.sops.yaml is missing"):
        publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome)


def test_incremental_publisher_matches_cold(tmp_path, example_repo, example_gnupghome):
    out = tmp_path / "out"
    with Publisher(example_repo, _state(tmp_path), example_gnupghome) as pub:
        pub.publish(None, NOW, out)
        _set_key(example_repo / "orgs" / "acme" / "devices" / "web-1.yaml", "wireguard",
                 "kxU3BlrVg1Cj9yx1OdVC+KKqlbXh54YF0/dybRDYKgA=")  # fmt: skip
        (example_repo / "orgs" / "globex" / "devices" / "nas-1.yaml").unlink()
        warm = pub.publish(None, NOW + 60, out)
    assert warm.orgs["acme"].issued == ("web-1",)
    assert warm.orgs["globex"].issued == () and len(warm.orgs["globex"].revoked) == 1
    assert not (out / "globex" / "certs" / "nas-1.pem").exists()
    # a cold publisher over the same state and tree gives the same manifest content
    cold = publish(example_repo, state=_state(tmp_path), now=NOW + 60, gpg_home=example_gnupghome)
    for org in ("acme", "globex"):
        w, c = manifest_to_dict(warm.orgs[org].manifest), manifest_to_dict(cold.orgs[org].manifest)
        for k in ("serial", "issued_at", "not_after"):
            w.pop(k), c.pop(k)
        assert w == c
    assert _verify(out, "acme", now=NOW + 61).device("web-1").wireguard_public_key.endswith("KgA=")
    assert (out / "acme" / "certs" / "web-1.pem").read_text() == warm.orgs["acme"].certs["web-1"]


@pytest.mark.postgres
@pytest.mark.root
def test_publish_on_postgres(tmp_path, example_repo, example_gnupghome, fresh_postgres_url):
    a = publish(example_repo, state=fresh_postgres_url, now=NOW, gpg_home=example_gnupghome)
    b = publish(example_repo, state=fresh_postgres_url, now=NOW + 5, gpg_home=example_gnupghome)
    assert b.orgs["acme"].issued == () and a.orgs["acme"].certs == b.orgs["acme"].certs
    assert b.orgs["acme"].manifest.serial > a.orgs["acme"].manifest.serial


# -- no private key material anywhere ----------------------------------------------------------


def test_no_private_key_in_manifest_logs_or_errors(tmp_path, example_repo, example_gnupghome,
                                                   caplog):  # fmt: skip
    from reconciler.config import load
    from reconciler.hub.publish import decrypt_org_keys

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    result = publish(example_repo, out_dir=out, state=_state(tmp_path), now=NOW,
                     gpg_home=example_gnupghome)  # fmt: skip
    repo = load(example_repo).repo
    secrets_text = (example_repo / "secrets" / "acme-ca.sops.yaml").read_text()
    keys = decrypt_org_keys(secrets_text, repo.orgs["acme"], example_gnupghome)
    from cryptography.hazmat.primitives import serialization

    raw_sign = keys.signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    import base64

    from reconciler.pki.keys import private_to_pem

    forbidden = [
        "PRIVATE KEY",
        base64.b64encode(raw_sign).decode(),
        raw_sign.hex(),
        private_to_pem(keys.ca_key).splitlines()[1],
        private_to_pem(keys.signing_key).splitlines()[1],
    ]
    texts = [p.read_bytes().decode() for p in out.rglob("*") if p.is_file()]
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(keys), repr(result)[:100000]]
    # errors: tampered secrets, a wrong CA pairing, a refused manifest
    errors = []
    for fn in (
        lambda: decrypt_org_keys(secrets_text, repo.orgs["globex"], example_gnupghome),
        lambda: verify_manifest(
            b"{}", load_trust((out / "trust.json").read_bytes()), "acme", None, NOW
        ),
        lambda: decrypt_org_keys(
            secrets_text.replace("ca_key: ENC[AES256_GCM,data:", "ca_key: ENC[AES256_GCM,data:AA"),
            repo.orgs["acme"],
            example_gnupghome,
        ),
    ):
        with pytest.raises(Exception) as err:
            fn()
        errors.append(str(err.value))
    texts += errors + [r.getMessage() for r in caplog.records]
    for text in texts:
        for secret in forbidden:
            assert secret not in text


# -- git helpers -----------------------------------------------------------------------------------


def _git(repo: Path, *args: str, env=None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout  # fmt: skip


# The commit gate (require_signed_commits, owners, admins, hub-scoped commits) is
# tested in tests/hub/test_gate.py.


def test_freeze_caches_freezes_once_per_big_change(tmp_path, example_repo, example_gnupghome):
    import gc

    try:
        with Publisher(example_repo, _state(tmp_path), example_gnupghome, freeze_caches=True) as p:
            p.publish(None, NOW)
            assert gc.get_freeze_count() > 0
            gc.unfreeze()
            p.publish(None, NOW + 1)  # nothing re-parsed: no new freeze
            assert gc.get_freeze_count() == 0
            assert set(p.timings) == {"load", "build", "write", "total"}
    finally:
        gc.unfreeze()


# -- secrets are never read through a symbolic link ---------------------------------------


def _commit_all(repo: Path, message: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", message]):
        _git(repo, *args, env=env)


@pytest.mark.parametrize("how", ["file", "dir"])
def test_symlinked_secret_is_refused_in_a_working_tree(tmp_path, example_repo,
                                                        example_gnupghome, how):
    outside = tmp_path / "outside"
    secrets = example_repo / "secrets"
    shutil.copytree(secrets, outside)  # a valid secret: following the link would work
    if how == "file":
        (secrets / "acme-ca.sops.yaml").unlink()
        (secrets / "acme-ca.sops.yaml").symlink_to(outside / "acme-ca.sops.yaml")
        where = "secrets/acme-ca.sops.yaml"
    else:
        shutil.rmtree(secrets)
        secrets.symlink_to(outside)
        where = "secrets"
    with pytest.raises(PkiError, match=f"{where} is a symbolic link"):
        publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome,
                out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symlinked_secret_is_refused_in_a_commit(tmp_path, example_repo, example_gnupghome):
    outside = tmp_path / "outside.sops.yaml"
    secret = example_repo / "secrets" / "globex-ca.sops.yaml"
    outside.write_bytes(secret.read_bytes())
    secret.unlink()
    secret.symlink_to(outside)  # committed as a tree entry of mode 120000
    _commit_all(example_repo, "link")
    with pytest.raises(PkiError, match="globex-ca.sops.yaml is a symbolic link in commit HEAD"):
        publish(example_repo, rev="HEAD", state=_state(tmp_path), now=NOW,
                gpg_home=example_gnupghome)


def test_secret_that_is_not_a_regular_file_is_refused(tmp_path, example_repo, example_gnupghome):
    secret = example_repo / "secrets" / "acme-ca.sops.yaml"
    secret.unlink()
    os.mkfifo(secret)  # reading a FIFO would block the hub forever
    with pytest.raises(PkiError, match="acme-ca.sops.yaml is a FIFO, socket or device file; "
                                       "the hub needs a regular file"):
        publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome)


def test_secret_is_read_from_a_commit_of_a_repository_in_a_subdirectory(
        tmp_path, example_gnupghome):
    top = tmp_path / "top"
    repo = top / "mesh"
    shutil.copytree(EXAMPLE_REPO, repo, ignore=shutil.ignore_patterns(".git"))
    _commit_all(top, "sub")
    result = publish(repo, rev="HEAD", state=_state(tmp_path), now=NOW,
                     gpg_home=example_gnupghome)
    assert set(result.orgs) == {"acme", "globex"}


def test_ca_init_refuses_to_write_through_a_symlinked_secrets_dir(tmp_path, example_repo,
                                                                   example_gnupghome):
    from reconciler.errors import UsageError
    from reconciler.hub.publish import init_org_ca

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.rmtree(example_repo / "secrets")
    (example_repo / "secrets").symlink_to(outside)
    with pytest.raises(UsageError, match="secrets is a symbolic link"):
        init_org_ca(example_repo, "acme", now=NOW, gpg_home=example_gnupghome, force=True)
    assert list(outside.iterdir()) == []


def test_failed_write_leaves_no_temp_file(tmp_path, example_repo, example_gnupghome,
                                          monkeypatch):
    from reconciler import fsio

    out = tmp_path / "out"
    calls = {"n": 0}
    real = fsio.os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", flaky)
    with pytest.raises(OSError):
        publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome,
                out_dir=out)
    assert not [p for p in out.rglob("*") if fsio.is_temp_name(p.name)]


def test_publish_removes_stale_temp_files_in_every_output_directory(
        tmp_path, example_repo, example_gnupghome):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    stale = [out / f".meshops-tmp.{dead.pid}.trust.json.a1",
             out / "acme" / "certs" / f".meshops-tmp.{dead.pid}.web-1.pem.b2",
             out / "acme" / ".manifest.json.ab12cd34.tmp",  # an earlier version's name
             out / "gone" / "certs" / ".old-1.pem.zz99yy88.tmp"]  # an org since removed
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".x.pem.ab12cd34.tmp").write_text("not ours")
    (out / "linked").symlink_to(elsewhere)  # never followed
    publish(example_repo, state=_state(tmp_path), now=NOW, gpg_home=example_gnupghome,
            out_dir=out)
    assert not any(p.exists() for p in stale)
    assert (elsewhere / ".x.pem.ab12cd34.tmp").exists()
    _verify(out, "acme")
