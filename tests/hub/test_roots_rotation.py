"""In-band rotation on a real repository with real gpg and SOPS: ``ca rotate`` of
the signing key, then the CA, then both; what each publish serves during and
after the overlap; and every way a chain in git can be refused."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler import structs
from reconciler.errors import ManifestRefused, PkiError, UsageError, ValidationError
from reconciler.hub.carotate import rotate_org_keys
from reconciler.hub.publish import Publisher, decrypt_org_keys, publish
from reconciler.hub.tls import TlsManager
from reconciler.pki import certs as pki_certs
from reconciler.pki.ca import load_ca_cert
from reconciler.pki.envelope import Trust, load_trust, parse_envelope
from reconciler.pki.keys import keyid
from reconciler.pki.manifest import verify_manifest
from reconciler.pki.root import open_root, sign_root, verify_initial, walk

DAY = 86400


def _state(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/hub.db"


def _signers(envelope: bytes) -> list[str]:
    return [kid for kid, _ in parse_envelope(envelope).signatures]


def _roots(directory: Path) -> list[bytes]:
    files = sorted(directory.glob("*.json"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in files] == list(range(1, len(files) + 1))
    return [p.read_bytes() for p in files]


def _walk_from_1(directory: Path, org: str = "acme"):
    roots = _roots(directory)
    return walk(verify_initial(roots[0], org), roots[1:])


def _openssl_verify(ca_pem: str, cert_pem: str, at: float, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "ca.pem").write_text(ca_pem)
    (tmp / "cert.pem").write_text(cert_pem)
    return subprocess.run(["openssl", "verify", "-x509_strict", "-attime", str(int(at)),
                           "-CAfile", str(tmp / "ca.pem"), str(tmp / "cert.pem")],
                          capture_output=True, text=True, check=False)


def _trust_of(root) -> Trust:
    return Trust(orgs={root.org: root.org_trust()})


def test_rotate_signing_key_then_ca_then_both(example_repo, example_gnupghome, tmp_path):
    repo, home, out = example_repo, example_gnupghome, tmp_path / "out"
    pub = Publisher(repo, _state(tmp_path), home)
    t0 = time.time()
    first = pub.publish(None, t0, out)
    trust_v1 = load_trust((out / "trust.json").read_bytes())
    root1 = verify_initial((out / "acme" / "roots" / "1.json").read_bytes(), "acme")
    old_kid = keyid(pub.keys_for("acme").signing_key.public_key())
    assert first.orgs["acme"].manifest.root_version == 1
    assert _signers(first.orgs["acme"].envelope) == [old_kid]
    # globex has no roots/: exactly as before (legacy trust.json)
    globex = json.loads((out / "trust.json").read_bytes())["orgs"]["globex"]
    assert set(globex) == {"keys", "ca"} and len(globex["keys"]) == 1
    assert first.orgs["globex"].manifest.root_version is None
    assert len(_signers(first.orgs["globex"].envelope)) == 1
    assert not (out / "globex" / "roots").exists()

    # -- 1. the signing key -------------------------------------------------------------
    t1 = t0 + 60
    rot = rotate_org_keys(repo, "acme", now=t1, signing=True, ca=False, gpg_home=home)
    assert rot.versions == (2, 3) and rot.overlap_until == int(t1) + 7 * DAY  # mesh default
    assert "orgs/acme/ca.crt" not in rot.written
    with pytest.raises(UsageError, match="overlap runs until"):
        rotate_org_keys(repo, "acme", now=t1 + 5, signing=False, ca=True, gpg_home=home)
    in_git = _walk_from_1(repo / "orgs" / "acme" / "roots")
    assert in_git.version == 3
    new_kid = keyid(decrypt_org_keys((repo / "secrets" / "acme-ca.sops.yaml").read_text(),
                                     _org(repo), home).signing_key.public_key())
    assert set(in_git.roles["manifest"].keyids) == {new_kid} != {old_kid}

    during = pub.publish(None, t1 + 10, out).orgs["acme"]
    assert during.manifest.root_version == 2
    assert set(_signers(during.envelope)) == {old_kid, new_kid}
    assert during.issued == ()  # the CA did not change: certificates stay
    assert len(_roots(out / "acme" / "roots")) == 2  # root 3 is not yet due
    trust_doc = json.loads((out / "trust.json").read_bytes())["orgs"]["acme"]
    assert trust_doc["root"].encode() == (out / "acme" / "roots" / "2.json").read_bytes()
    assert {k["keyid"] for k in trust_doc["keys"]} == {old_kid, new_kid}
    # an agent that pins only the old key, and one that pins only the new, both accept
    verify_manifest(during.envelope, trust_v1, "acme", None, t1 + 20)
    verify_manifest(during.envelope, _trust_of(in_git), "acme", None, t1 + 20)
    verify_manifest(during.envelope, load_trust((out / "trust.json").read_bytes()), "acme",
                    None, t1 + 20)

    after = pub.publish(None, rot.overlap_until, out).orgs["acme"]
    assert after.manifest.root_version == 3
    assert _signers(after.envelope) == [new_kid]  # the old key is not used at all
    with pytest.raises(ManifestRefused) as err:
        verify_manifest(after.envelope, trust_v1, "acme", None, rot.overlap_until + 1)
    assert err.value.reason == "unknown-key"
    walked = walk(root1, _roots(out / "acme" / "roots")[1:])  # an agent holding only root 1
    assert walked.version == 3
    verify_manifest(after.envelope, _trust_of(walked), "acme", None, rot.overlap_until + 1)

    # -- 2. the CA --------------------------------------------------------------------------
    t3 = rot.overlap_until + 60
    old_ca = load_ca_cert((repo / "orgs" / "acme" / "ca.crt").read_text())
    old_ca_pem = (repo / "orgs" / "acme" / "ca.crt").read_text()
    rot2 = rotate_org_keys(repo, "acme", now=t3, signing=False, ca=True, overlap_days=2,
                           gpg_home=home)
    assert rot2.versions == (4, 5) and rot2.overlap_until == int(t3) + 2 * DAY
    new_ca_pem = (repo / "orgs" / "acme" / "ca.crt").read_text()
    new_ca = load_ca_cert(new_ca_pem)
    assert new_ca != old_ca and new_ca.subject == old_ca.subject
    during = pub.publish(None, t3 + 10, out).orgs["acme"]
    assert during.manifest.root_version == 4
    assert _signers(during.envelope) == [new_kid]  # the signing key did not rotate
    assert set(during.issued) == set(during.certs)  # every device re-issued at once
    check = tmp_path / "openssl"
    check.mkdir()
    for pem in during.certs.values():
        assert pki_certs.issued_by(pem, new_ca)
        ok = _openssl_verify(new_ca_pem, pem, t3 + 20, check)
        assert ok.returncode == 0, ok.stderr
        assert _openssl_verify(old_ca_pem, pem, t3 + 20, check).returncode != 0
    assert during.ca_pem.count("BEGIN CERTIFICATE") == 2  # both CAs count in the overlap
    trust_doc = json.loads((out / "trust.json").read_bytes())["orgs"]["acme"]
    assert trust_doc["ca"] == during.ca_pem
    # a device that has not fetched its new certificate yet still authenticates,
    # until the overlap ends
    old_cert = after.certs["db-1"]
    assert pki_certs.issued_by(old_cert, old_ca)
    assert pki_certs.check_device_cert(old_cert, during.ca_pem, t3 + 20).name == "db-1"

    # the hub's TLS certificate: old CA during the overlap, new CA at its end
    keys = pub.keys_for("acme")
    assert keys is not None
    tls = TlsManager()
    tls.update({"acme": keys}, t3 + 10)
    server = tls.certificate("acme")
    assert server is not None and pki_certs.issued_by(server.cert_pem, old_ca)
    assert _openssl_verify(old_ca_pem, server.cert_pem, t3 + 20, check).returncode == 0
    tls.update({"acme": keys}, rot2.overlap_until)
    server = tls.certificate("acme")
    assert server is not None and pki_certs.issued_by(server.cert_pem, new_ca)
    ok = _openssl_verify(new_ca_pem, server.cert_pem, rot2.overlap_until + 10, check)
    assert ok.returncode == 0, ok.stderr

    after = pub.publish(None, rot2.overlap_until, out).orgs["acme"]
    assert after.manifest.root_version == 5 and after.ca_pem == new_ca_pem
    assert after.issued == ()  # issued under the new CA already
    with pytest.raises(PkiError, match="another CA"):
        pki_certs.check_device_cert(old_cert, after.ca_pem, rot2.overlap_until + 1)

    # -- 3. both ------------------------------------------------------------------------------
    t5 = rot2.overlap_until + 60
    rot3 = rotate_org_keys(repo, "acme", now=t5, signing=True, ca=True, gpg_home=home)
    assert rot3.versions == (6, 7)
    during = pub.publish(None, t5 + 10, out).orgs["acme"]
    assert len(_signers(during.envelope)) == 2 and during.manifest.root_version == 6
    assert set(during.issued) == set(during.certs)
    final = pub.publish(None, rot3.overlap_until, out).orgs["acme"]
    assert final.manifest.root_version == 7 and len(_signers(final.envelope)) == 1
    walked = walk(root1, _roots(out / "acme" / "roots")[1:])
    assert walked.version == 7 and walked == _walk_from_1(repo / "orgs" / "acme" / "roots")
    verify_manifest(final.envelope, _trust_of(walked), "acme", None, rot3.overlap_until + 1)
    pub.close()
    # globex never changed
    assert json.loads((out / "trust.json").read_bytes())["orgs"]["globex"] == globex


def _org(repo: Path, name: str = "acme"):
    from reconciler.config import load

    result = load(repo)
    assert result.repo is not None, result.problems
    return result.repo.orgs[name]


# -- refusals --------------------------------------------------------------------------------


def _refused(repo: Path, home: str, now: float) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        publish(repo, now=now, gpg_home=home)
    return err.value


def _rotated(repo: Path, home: str, now: float):
    return rotate_org_keys(repo, "acme", now=now, signing=True, ca=True, gpg_home=home)


def _rewrite_payload(path: Path, change) -> None:
    env = json.loads(path.read_bytes())
    doc = json.loads(base64.b64decode(env["payload"]))
    change(doc)
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    path.write_text(json.dumps(env))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_root_edited_by_hand_is_refused_at_its_file(example_repo, example_gnupghome, version):
    now = time.time()
    _rotated(example_repo, example_gnupghome, now)
    path = example_repo / "orgs" / "acme" / "roots" / f"{version}.json"
    _rewrite_payload(path, lambda d: d.update(issued_at=d["issued_at"] - 1))
    err = _refused(example_repo, example_gnupghome, now + 10)
    (problem,) = err.problems
    assert problem.file == f"orgs/acme/roots/{version}.json" and problem.line == 1
    assert "root-threshold" in problem.message and "git history" in problem.remedy


def test_a_root_signed_only_by_the_new_keys_is_refused(example_repo, example_gnupghome):
    now = time.time()
    _rotated(example_repo, example_gnupghome, now)
    keys = decrypt_org_keys((example_repo / "secrets" / "acme-ca.sops.yaml").read_text(),
                            _org(example_repo), example_gnupghome)
    path = example_repo / "orgs" / "acme" / "roots" / "2.json"
    root, _, _ = open_root(path.read_bytes(), "acme")
    path.write_bytes(sign_root(root, [keys.signing_key, keys.ca_key]))  # no old signature
    (problem,) = _refused(example_repo, example_gnupghome, now + 10).problems
    assert problem.file == "orgs/acme/roots/2.json"
    assert "root-threshold" in problem.message and "version 1" in problem.message


def test_a_gap_or_a_swapped_file_is_refused(example_repo, example_gnupghome, tmp_path):
    now = time.time()
    _rotated(example_repo, example_gnupghome, now)
    roots = example_repo / "orgs" / "acme" / "roots"
    two = (roots / "2.json").read_bytes()
    (roots / "2.json").unlink()
    (problem,) = _refused(example_repo, example_gnupghome, now + 10).problems
    assert problem.file == "orgs/acme/roots/3.json" and problem.code == "E-ROOT-GAP"
    assert "2.json is missing" in problem.message
    (roots / "2.json").write_bytes((roots / "3.json").read_bytes())  # 3's bytes as 2
    (problem,) = _refused(example_repo, example_gnupghome, now + 10).problems
    assert problem.file == "orgs/acme/roots/2.json" and "root-version" in problem.message
    (roots / "2.json").write_bytes(two)
    publish(example_repo, now=now + 10, gpg_home=example_gnupghome)  # restored: fine


def test_roots_that_do_not_match_the_secret_are_refused(example_repo, example_gnupghome,
                                                        tmp_path):
    now = time.time()
    secret = example_repo / "secrets" / "acme-ca.sops.yaml"
    saved, saved_ca = secret.read_bytes(), (example_repo / "orgs/acme/ca.crt").read_bytes()
    rotate_org_keys(example_repo, "acme", now=now, signing=True, ca=False,
                    gpg_home=example_gnupghome)
    secret.write_bytes(saved)  # the roots were committed, the secret was not
    (problem,) = _refused(example_repo, example_gnupghome, now + 10).problems
    assert problem.file == "orgs/acme/roots/3.json" and problem.code == "E-ROOT-SECRET"
    assert "manifest key" in problem.message and "commit the roots and the secret" in \
        problem.remedy
    assert (example_repo / "orgs/acme/ca.crt").read_bytes() == saved_ca


def test_a_legacy_repository_migrates_on_its_first_rotation(example_repo, example_gnupghome,
                                                            tmp_path):
    shutil.rmtree(example_repo / "orgs" / "acme" / "roots")
    before = publish(example_repo, now=time.time(), gpg_home=example_gnupghome)
    assert before.orgs["acme"].manifest.root_version is None
    assert "root" not in json.loads(before.trust_json)["orgs"]["acme"]
    now = time.time()
    rot = rotate_org_keys(example_repo, "acme", now=now, signing=True, ca=False,
                          gpg_home=example_gnupghome)
    assert rot.written[0] == "orgs/acme/roots/1.json" and rot.versions == (2, 3)
    legacy_trust = load_trust(before.trust_json)
    during = publish(example_repo, now=now + 10, gpg_home=example_gnupghome).orgs["acme"]
    verify_manifest(during.envelope, legacy_trust, "acme", None, now + 20)  # old agents
    assert during.manifest.root_version == 2


def test_ca_init_force_starts_a_new_chain(example_repo, example_gnupghome):
    from reconciler.hub.publish import init_org_ca

    now = time.time()
    _rotated(example_repo, example_gnupghome, now)
    out_dir = example_repo.parent / "out"
    publish(example_repo, now=now + DAY * 30, out_dir=out_dir, gpg_home=example_gnupghome)
    assert sorted(p.name for p in (out_dir / "acme/roots").iterdir()) == [
        "1.json", "2.json", "3.json"]
    init_org_ca(example_repo, "acme", now=now + DAY * 30, gpg_home=example_gnupghome,
                force=True)
    roots = sorted(p.name for p in (example_repo / "orgs/acme/roots").iterdir())
    assert roots == ["1.json"]
    out = publish(example_repo, now=now + DAY * 30, out_dir=out_dir,
                  gpg_home=example_gnupghome).orgs["acme"]
    assert out.manifest.root_version == 1
    # the static copy follows: the old chain's files are gone, 1.json is the new root
    assert sorted(p.name for p in (out_dir / "acme/roots").iterdir()) == ["1.json"]
    assert (out_dir / "acme/roots/1.json").read_bytes() == \
        (example_repo / "orgs/acme/roots/1.json").read_bytes()


# -- the hub's TLS during a CA overlap, with real handshakes on loopback ---------------------


def _handshake(tls: TlsManager, ca_pem: str, client: tuple[str, str] | None,
               tmp: Path) -> tuple[bool, bytes | None]:
    """One TLS handshake against ``tls.front`` on 127.0.0.1: (client verified the
    hub with ``ca_pem``, the client certificate the hub saw)."""
    import socket
    import ssl
    import threading

    (tmp / "pin.pem").write_text(ca_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(str(tmp / "pin.pem"))
    if client is not None:
        (tmp / "c.pem").write_text(client[0])
        (tmp / "k.pem").write_text(client[1])
        (tmp / "k.pem").chmod(0o600)
        ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
    seen: list[bytes | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with tls.front.wrap_socket(conn, server_side=True) as s:
                    seen.append(s.getpeercert(binary_form=True))
                    s.recv(1)
            except (ssl.SSLError, OSError):
                seen.append(None)

        thread = threading.Thread(target=serve)
        thread.start()
        ok = True
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    ctx.wrap_socket(raw, server_hostname="acme.hub") as s:
                s.sendall(b"x")
        except (ssl.SSLError, OSError):
            ok = False
        thread.join(10)
    return ok, seen[0] if seen else None


def _client_cert(keys, now: float) -> tuple[str, str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.model.repo import Device
    from reconciler.pki.keys import private_to_pem

    identity = Ed25519PrivateKey.generate()
    dev = Device(name="tls-probe", org="acme", owner="alice", tunnel_ips=("10.10.0.250",),
                 wireguard_public_key=base64.b64encode(bytes(range(32))).decode(),
                 identity_public_key=base64.b64encode(
                     identity.public_key().public_bytes_raw()).decode())
    pem = pki_certs.issue_device_cert(keys, dev, 4242, now, 86400)
    return pem, private_to_pem(identity)


def test_hub_tls_accepts_both_cas_in_the_overlap_then_only_the_new(
        example_repo, example_gnupghome, tmp_path):
    from reconciler.pki.ca import OrgKeys

    home = example_gnupghome
    now = time.time()
    pub = Publisher(example_repo, _state(tmp_path), home)
    pub.publish(None, now)
    old = pub.keys_for("acme")
    assert old is not None
    old_ca_pem = old.ca_pem
    rot = rotate_org_keys(example_repo, "acme", now=now + 1, signing=False, ca=True,
                          gpg_home=home)
    pub.publish(None, now + 2)
    keys = pub.keys_for("acme")
    assert keys is not None and keys.previous is not None
    new_ca_pem = keys.ca_pem
    old_client = _client_cert(OrgKeys("acme", old.ca_key, old.ca_cert, old.signing_key), now)
    new_client = _client_cert(keys, now)
    stranger = _client_cert(OrgKeys("acme", *_stranger_ca(), old.signing_key), now)

    tls = TlsManager()
    tls.update({"acme": keys}, now + 2)
    # an agent that has not walked yet pins only the old CA: it still reaches the hub
    assert _handshake(tls, old_ca_pem, None, tmp_path)[0]
    assert not _handshake(tls, new_ca_pem, None, tmp_path)[0]
    # an agent that walked to the overlap root pins both CAs (same subject): fine too
    assert _handshake(tls, new_ca_pem + old_ca_pem, None, tmp_path)[0]
    for client in (old_client, new_client):  # both CAs' device certificates are accepted
        ok, seen = _handshake(tls, old_ca_pem, client, tmp_path)
        assert ok and seen
    assert not _handshake(tls, old_ca_pem, stranger, tmp_path)[1]

    # the overlap is over; a handshake checks validity by the real clock, so move the
    # end of the overlap to now instead of moving the clock to it
    assert rot.overlap_until > now
    ended = structs.replace(keys, previous=structs.replace(
        keys.previous, overlap_until=int(time.time()) - 1))
    tls.update({"acme": ended}, time.time())
    assert _handshake(tls, new_ca_pem, None, tmp_path)[0]
    assert _handshake(tls, new_ca_pem + old_ca_pem, None, tmp_path)[0]
    assert not _handshake(tls, old_ca_pem, None, tmp_path)[0]
    ok, seen = _handshake(tls, new_ca_pem, new_client, tmp_path)
    assert ok and seen
    assert not _handshake(tls, new_ca_pem, old_client, tmp_path)[1]
    pub.close()


def _stranger_ca():
    from reconciler.model.repo import Organization
    from reconciler.pki.ca import init_ca
    from reconciler.pki.keys import private_from_pem

    bundle = init_ca(Organization(name="acme", cidr_v4="10.10.0.0/16"), time.time())
    return private_from_pem(bundle.key_pem), load_ca_cert(bundle.cert_pem)


def test_a_long_lived_publisher_rechecks_a_changed_chain(example_repo, example_gnupghome,
                                                         tmp_path):
    now = time.time()
    pub = Publisher(example_repo, _state(tmp_path), example_gnupghome)
    assert pub.publish(None, now).orgs["acme"].manifest.root_version == 1
    path = example_repo / "orgs" / "acme" / "roots" / "1.json"
    good = path.read_bytes()
    _rewrite_payload(path, lambda d: d.update(version=1, issued_at=d["issued_at"] + 1))
    with pytest.raises(ValidationError, match="root-threshold"):
        pub.publish(None, now + 1)
    path.write_bytes(good)
    assert pub.publish(None, now + 2).orgs["acme"].manifest.root_version == 1
    pub.close()


def test_a_hub_clock_a_little_behind_still_serves_the_overlap_root(example_repo,
                                                                   example_gnupghome):
    now = time.time()
    rotate_org_keys(example_repo, "acme", now=now, signing=False, ca=True,
                    gpg_home=example_gnupghome)
    behind = publish(example_repo, now=now - 300, gpg_home=example_gnupghome).orgs["acme"]
    assert behind.manifest.root_version == 2
    new_ca = load_ca_cert((example_repo / "orgs/acme/ca.crt").read_text())
    for pem in behind.certs.values():  # issued under the new CA, which root 2 lists
        assert pki_certs.issued_by(pem, new_ca)
        pki_certs.check_device_cert(pem, behind.ca_pem, now)


def test_signers_are_the_held_keys_the_published_root_lists():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.hub.rotation import manifest_signers, root_of, rotate_keys
    from reconciler.model.repo import Organization
    from reconciler.pki import ca as pki_ca
    from reconciler.pki.keys import private_to_pem

    org = Organization(name="acme", cidr_v4="10.10.0.0/16")
    bundle = pki_ca.init_ca(org, 1_790_000_000)
    doc = pki_ca.secret_doc("acme", bundle.key_pem, pki_ca.new_signing_key_pem())
    keys = pki_ca.org_keys_from_doc(doc, "acme", bundle.cert_pem)
    root1 = root_of("acme", 1, 1_790_000_000, [keys.signing_key.public_key()], [keys.ca_cert])
    new = Ed25519PrivateKey.generate()
    rotated, r2, r3 = rotate_keys(keys, root1, new_signing=new, new_ca=None,
                                  now=1_790_000_100, overlap_until=1_790_086_500)
    overlap = walk(root1, [r2])
    assert {keyid(k.public_key()) for k in manifest_signers(overlap, rotated)} == {
        keyid(keys.signing_key.public_key()), keyid(new.public_key())}
    final = walk(root1, [r2, r3])
    assert [keyid(k.public_key()) for k in manifest_signers(final, rotated)] == [
        keyid(new.public_key())]
    assert manifest_signers(root1, rotated)[0] is keys.signing_key  # held as previous
    stranger = pki_ca.org_keys_from_doc(
        pki_ca.secret_doc("acme", bundle.key_pem, private_to_pem(Ed25519PrivateKey.generate())),
        "acme", bundle.cert_pem)
    with pytest.raises(PkiError, match="holds none of the manifest keys of trust root 1"):
        manifest_signers(root1, stranger)
    with pytest.raises(UsageError, match="nothing to rotate"):
        rotate_keys(keys, root1, new_signing=None, new_ca=None, now=1, overlap_until=2)
