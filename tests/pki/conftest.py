"""Fixtures for PKI tests: an org, its keys, devices with real Ed25519/X25519 keys."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.model.repo import Device, Organization, OrgState
from reconciler.pki import ca as pki_ca

NOW = 1_763_776_800.0  # 2025-11-22T02:00:00Z


def _raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_org(name: str = "acme") -> Organization:
    return Organization(name=name, cidr_v4="10.9.0.0/16", cidr_v6="fd00:9::/48")


def make_keys(org: Organization, now: float = NOW) -> pki_ca.OrgKeys:
    bundle = pki_ca.init_ca(org, now)
    doc = pki_ca.secret_doc(org.name, bundle.key_pem, pki_ca.new_signing_key_pem())
    return pki_ca.org_keys_from_doc(doc, org.name, bundle.cert_pem)


class DeviceFactory:
    """Devices with real keys; ``identity_keys[name]`` holds the private identity key."""

    def __init__(self, org: str) -> None:
        self.org = org
        self.identity_keys: dict[str, Ed25519PrivateKey] = {}

    def __call__(self, name: str, index: int, **kw) -> Device:
        ident = Ed25519PrivateKey.generate()
        self.identity_keys[name] = ident
        wg = X25519PrivateKey.generate().public_key()
        return Device(
            name=name,
            org=self.org,
            owner="alice",
            wireguard_public_key=base64.b64encode(_raw(wg)).decode(),
            identity_public_key=base64.b64encode(_raw(ident.public_key())).decode(),
            tunnel_ips=kw.pop("tunnel_ips", (f"10.9.0.{index}", f"fd00:9::{index:x}")),
            **kw,
        )


@pytest.fixture(scope="session")
def org() -> Organization:
    return make_org()


@pytest.fixture(scope="session")
def keys(org) -> pki_ca.OrgKeys:
    return make_keys(org)


@pytest.fixture
def devices(org) -> DeviceFactory:
    return DeviceFactory(org.name)


@pytest.fixture
def org_state(org, devices) -> OrgState:
    devs = {
        "alpha": devices("alpha", 1, tags=("web",)),
        "beta": devices("beta", 2, relay=True, endpoint="203.0.113.5:51820"),
        "gamma": devices("gamma", 3, disabled=True),
    }
    return OrgState(organization=org, devices=devs)
