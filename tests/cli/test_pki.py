"""``meshops ca init``, ``meshops ca rotate`` and ``meshops manifest verify`` through the
CLI entry point."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

from reconciler.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def test_ca_init_writes_and_refuses_overwrite(repo, gnupghome, capsys):
    shutil.rmtree(repo / "secrets", ignore_errors=True)
    for org in ("acme", "globex"):
        (repo / "orgs" / org / "ca.crt").unlink(missing_ok=True)
    args = ["ca", "init", "--org", "acme", "--repo", str(repo), "--gnupghome", gnupghome]
    assert main(args) == 0
    cert = (repo / "orgs" / "acme" / "ca.crt").read_text()
    secret = repo / "secrets" / "acme-ca.sops.yaml"
    assert "BEGIN CERTIFICATE" in cert
    assert secret.stat().st_mode & 0o777 == 0o600
    text = secret.read_text()
    assert "PRIVATE KEY" not in text and "ENC[AES256_GCM" in text
    assert "97A75CABDC50A83D2C4A0E2DDB0237F019A9D31D" in text
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (repo / "orgs" / "acme" / "ca.crt").read_text() == cert
    assert main([*args, "--force"]) == 0
    assert (repo / "orgs" / "acme" / "ca.crt").read_text() != cert


def test_ca_init_writes_root_1(repo, gnupghome, capsys):
    from reconciler.pki.root import verify_initial

    args = ["ca", "init", "--org", "acme", "--repo", str(repo), "--gnupghome", gnupghome]
    assert main([*args, "--force"]) == 0
    assert "roots/1.json" in capsys.readouterr().out
    root = verify_initial((repo / "orgs/acme/roots/1.json").read_bytes(), "acme")
    assert root.version == 1 and root.ca_pems == ((repo / "orgs/acme/ca.crt").read_text(),)


def test_ca_rotate_through_the_cli(repo, gnupghome, capsys, tmp_path):
    from reconciler.pki.root import verify_initial, walk

    base = ["ca", "rotate", "--org", "acme", "--repo", str(repo), "--gnupghome", gnupghome]
    assert main(base) == 2
    assert "--signing-key, --ca, or both" in capsys.readouterr().err
    assert main([*base, "--signing-key", "--overlap-days", "0"]) == 2
    assert "1 to 365" in capsys.readouterr().err
    ca_before = (repo / "orgs/acme/ca.crt").read_text()
    assert main([*base, "--signing-key", "--overlap-days", "3"]) == 0
    out = capsys.readouterr().out
    assert "trust root 2" in out and "root 3" in out and "one commit" in out
    assert (repo / "orgs/acme/ca.crt").read_text() == ca_before
    assert (repo / "secrets/acme-ca.sops.yaml").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in (repo / "secrets/acme-ca.sops.yaml").read_text()
    roots = [(repo / f"orgs/acme/roots/{n}.json").read_bytes() for n in (1, 2, 3)]
    assert walk(verify_initial(roots[0], "acme"), roots[1:]).version == 3
    assert main([*base, "--ca"]) == 2  # the overlap still runs
    assert "overlap runs until" in capsys.readouterr().err
    assert main(["ca", "rotate", "--org", "nope", "--repo", str(repo), "--gnupghome",
                 gnupghome, "--ca"]) == 2
    assert "no org 'nope'" in capsys.readouterr().err
    # the published manifest verifies with the trust.json the hub writes
    out_dir = _publish(repo, tmp_path, gnupghome)
    rc = main(["manifest", "verify", str(out_dir / "acme" / "manifest.json"),
               "--trust", str(out_dir / "trust.json"), "--org", "acme"])
    assert rc == 0


def test_ca_init_unknown_org(repo, gnupghome, capsys):
    assert main(["ca", "init", "--org", "nope", "--repo", str(repo), "--gnupghome", gnupghome]) == 2
    assert "no org 'nope'" in capsys.readouterr().err


def _publish(repo, tmp_path, gnupghome, now=None):
    from reconciler.hub.publish import publish

    out = tmp_path / "out"
    publish(repo, out_dir=out, state=f"sqlite:///{tmp_path}/hub.db",
            now=now or time.time(), gpg_home=gnupghome)  # fmt: skip
    return out


def test_manifest_verify_ok_and_refusals(repo, tmp_path, gnupghome, capsys):
    out = _publish(repo, tmp_path, gnupghome)
    man, trust = out / "acme" / "manifest.json", out / "trust.json"
    assert main(["manifest", "verify", str(man), "--trust", str(trust), "--org", "acme"]) == 0
    ok = capsys.readouterr().out
    assert ok.startswith("OK org=acme serial=")
    serial = int(ok.split("serial=")[1].split()[0])
    rc = main(["manifest", "verify", str(man), "--trust", str(trust), "--org", "acme",
               "--min-serial", str(serial)])  # fmt: skip
    assert rc == 1 and "(rollback)" in capsys.readouterr().err
    assert main(["manifest", "verify", str(man), "--trust", str(trust), "--org", "globex"]) == 1
    assert "(wrong-org)" in capsys.readouterr().err
    env = json.loads(man.read_bytes())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(env))
    assert main(["manifest", "verify", str(bad), "--trust", str(trust), "--org", "acme"]) == 1
    assert "(bad-signature)" in capsys.readouterr().err


def test_manifest_verify_expired(repo, tmp_path, gnupghome, capsys):
    out = _publish(repo, tmp_path, gnupghome, now=time.time() - 8 * 86400)
    rc = main(["manifest", "verify", str(out / "acme" / "manifest.json"),
               "--trust", str(out / "trust.json"), "--org", "acme"])  # fmt: skip
    assert rc == 1 and "(expired)" in capsys.readouterr().err


def test_manifest_verify_missing_file(tmp_path, capsys):
    rc = main(["manifest", "verify", str(tmp_path / "nope"), "--trust", str(tmp_path / "t"),
               "--org", "acme"])  # fmt: skip
    assert rc == 2


def test_validate_checks_the_trust_root_signatures(repo, capsys):
    import base64 as b64

    assert main(["validate", str(repo)]) == 0
    capsys.readouterr()
    path = repo / "orgs/acme/roots/1.json"
    env = json.loads(path.read_bytes())
    doc = json.loads(b64.b64decode(env["payload"]))
    doc["ca"] = ["-----BEGIN CERTIFICATE-----\nforged\n-----END CERTIFICATE-----\n"]
    env["payload"] = b64.b64encode(json.dumps(doc).encode()).decode()
    path.write_text(json.dumps(env))
    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "orgs/acme/roots/1.json:1: E-ROOT-CHAIN: trust root refused (root-threshold)" in out
    assert "manifest refused" not in out
