"""Device expiry on the hub: a device whose ``expires:`` has passed leaves the
manifest and loses its certificate at the next publish, as a disabled one."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.hub.publish import publish
from reconciler.pki import certs as pki_certs
from reconciler.pki.manifest import load_trust, verify_manifest

from .test_publish import DAY, NOW, _state


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_expired_device_is_revoked_and_leaves_the_manifest(tmp_path, example_repo,
                                                              example_gnupghome):
    phone = example_repo / "orgs" / "globex" / "devices" / "phone-dana.yaml"
    phone.write_text(phone.read_text() + f"expires: \"{_iso(NOW + DAY)}\"\n")
    state, out = _state(tmp_path), tmp_path / "out"
    first = publish(example_repo, out_dir=out, state=state, now=NOW, gpg_home=example_gnupghome)
    assert "phone-dana" in first.orgs["globex"].certs  # not yet expired
    serial = pki_certs.device_identity(first.orgs["globex"].certs["phone-dana"]).serial
    # the same commit, published again after the expiry (hub serve re-publishes every 6 h)
    second = publish(example_repo, out_dir=out, state=state, now=NOW + 2 * DAY,
                     gpg_home=example_gnupghome)
    trust = load_trust((out / "trust.json").read_bytes())
    m = verify_manifest((out / "globex" / "manifest.json").read_bytes(), trust, "globex", None,
                        NOW + 2 * DAY + 1)
    assert m.device("phone-dana") is None and m.device("nas-1") is not None
    assert serial in m.revoked and serial in second.orgs["globex"].revoked
    assert not (out / "globex" / "certs" / "phone-dana.pem").exists()
    # moving expires later brings it back with a new certificate
    phone.write_text(phone.read_text().replace(_iso(NOW + DAY), _iso(NOW + 30 * DAY)))
    third = publish(example_repo, out_dir=out, state=state, now=NOW + 2 * DAY + 60,
                    gpg_home=example_gnupghome)
    assert "phone-dana" in third.orgs["globex"].issued
