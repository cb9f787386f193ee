"""The hub's cert/serial store: same suite on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from reconciler.errors import ConfigError
from reconciler.hub.store import MIGRATIONS, CertRecord, open_store


def rec(
    serial: int, device: str = "a", org: str = "acme", issued_at: int = 100, **kw
) -> CertRecord:
    return CertRecord(
        org=org, device=device, serial=serial, fingerprint=f"fp{serial}", not_before=issued_at,
        not_after=kw.pop("not_after", issued_at + 1000), pem=f"PEM{serial}", identity_key="id",
        wg_key="wg", ips=("10.0.0.1", "fd00::1"), issued_at=issued_at, **kw,
    )  # fmt: skip


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.root]),
    ]
)
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/hub.db"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    s = open_store(url)
    yield s
    s.close()


def test_migrations_recorded(store):
    assert store.schema_version() == max(v for v, _ in MIGRATIONS)


def test_serial_unique(store):
    assert store.add_cert(rec(1 << 62))
    assert not store.add_cert(rec(1 << 62, device="b"))
    assert store.serial_taken(1 << 62)
    assert store.cert(1 << 62).device == "a"
    assert store.add_cert(rec(2, device="b"))  # connection still usable after a collision


def test_collision_inside_transaction_does_not_abort_it(store):
    store.add_cert(rec(5))
    with store.transaction():
        assert not store.add_cert(rec(5, device="b"))
        assert store.add_cert(rec(6, device="b"))
    assert set(store.current_certs("acme")) == {"a", "b"}


def test_current_certs_newest_unrevoked(store):
    store.add_cert(rec(10, issued_at=100))
    store.add_cert(rec(11, issued_at=200))
    store.add_cert(rec(12, device="b", org="other"))
    cur = store.current_certs("acme")
    assert list(cur) == ["a"] and cur["a"].serial == 11
    assert cur["a"].ips == ("10.0.0.1", "fd00::1")


def test_revoke_device_and_revocation_list(store):
    store.add_cert(rec(20, issued_at=100, not_after=500))
    store.add_cert(rec(21, issued_at=200, not_after=5000))
    assert sorted(store.revoke_device("acme", "a", at=300)) == [20, 21]
    assert store.revoke_device("acme", "a", at=400) == []  # idempotent
    assert store.current_certs("acme") == {}
    assert store.revoked_serials("acme", now=300) == (20, 21)
    assert store.revoked_serials("acme", now=1000) == (21,)  # expired certs drop off
    assert store.cert(20).revoked_at == 300


def test_rollback_on_error_inside_transaction(store):
    with pytest.raises(RuntimeError), store.transaction():
        store.add_cert(rec(30))
        raise RuntimeError("boom")
    assert not store.serial_taken(30)


def test_manifest_serial_never_moves_back(store):
    assert store.last_serial("acme") is None
    store.set_last_serial("acme", 1000, "c1", at=1)
    store.set_last_serial("acme", 900, "c0", at=2)
    assert store.last_serial("acme") == (1000, "c1")
    store.set_last_serial("acme", 1001, "c2", at=3)
    assert store.last_serial("acme") == (1001, "c2")


def test_reopen_keeps_data(tmp_path):
    url = f"sqlite:///{tmp_path}/x/hub.db"
    with open_store(url) as s:
        s.add_cert(rec(40))
    with open_store(url) as s:
        assert s.serial_taken(40)
        assert s.schema_version() == max(v for v, _ in MIGRATIONS)


def test_bad_urls():
    with pytest.raises(ConfigError):
        open_store("mysql://x")
    with pytest.raises(ConfigError):
        open_store("sqlite://")
