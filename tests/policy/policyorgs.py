"""Builders for in-memory orgs used by the policy tests (no loader needed)."""

from __future__ import annotations

import base64
import hashlib

from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import (
    Device,
    Group,
    Mesh,
    Organization,
    OrgState,
    Policy,
    PolicyTest,
    PortRange,
    Repo,
    Rule,
    User,
)


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def dev(name: str, owner: str, ip: str, *tags: str, org: str = "acme", **kw: object) -> Device:
    return Device(name=name, org=org, owner=owner, wireguard_public_key=key("wg" + name),
                  identity_public_key=key("id" + name), tunnel_ips=(ip,), tags=tags, **kw)


def user(name: str, org: str = "acme") -> User:
    return User(name=name, org=org, email=f"{name}@example.com",
                oidc_issuer="https://id.example.com", oidc_subject=name)


def ports(*items: int | tuple[int, int]) -> tuple[PortRange, ...]:
    return tuple(PortRange(i, i) if isinstance(i, int) else PortRange(*i) for i in items)


def rules(*items: Rule) -> tuple[Rule, ...]:
    """Number rules by position, as the loader does."""
    return tuple(Rule(r.src, r.dst, r.proto, r.ports, r.name, i) for i, r in enumerate(items))


ACME_RULES = rules(
    Rule(("group:eng",), ("tag:web",), "tcp", ports(22, (8000, 8100)), "eng-web"),
    Rule(("group:eng",), ("tag:db",), "tcp", ports(5432), "eng-db"),
    Rule(("group:ops",), ("*",), "any", (), "ops-all"),
    Rule(("*",), ("*",), "icmp", (), "ping"),
    Rule(("user:dave",), ("device:relay-1",), "udp", ports(53), "dns"),
    Rule(("*",), ("group:printers",), "any", ports(631), ""),
)

ACME_GROUPS = {
    "eng": Group("eng", users=("alice", "bob")),
    "ops": Group("ops", users=("carol",), tags=("relay",)),
    "printers": Group("printers", devices=("printer",)),
}

ACME_DEVICES = (
    dev("laptop-a", "alice", "10.10.0.2"),
    dev("laptop-b", "bob", "10.10.0.3"),
    dev("db-1", "carol", "10.10.0.4", "db"),
    dev("db-2", "carol", "10.10.0.5", "db", disabled=True),
    dev("web-1", "dave", "10.10.0.6", "web"),
    dev("relay-1", "erin", "10.10.0.7", "relay", relay=True, endpoint="198.51.100.7:51820"),
    dev("printer", "dave", "10.10.0.8"),
)


def org_state(devices=ACME_DEVICES, policy: Policy | None | str = "default",
              name: str = "acme", cidr: str = "10.10.0.0/24") -> OrgState:
    if policy == "default":
        policy = Policy(groups=ACME_GROUPS, rules=ACME_RULES, tests=(
            PolicyTest("laptop-a", "web-1", "tcp", 22, "accept", 0),
            PolicyTest("web-1", "laptop-a", "tcp", 22, "deny", 1),
            PolicyTest("laptop-a", "db-1", "tcp", 22, "accept", 2),  # fails on purpose
        ))
    users = {u: user(u, name) for u in ("alice", "bob", "carol", "dave", "erin")}
    return OrgState(
        organization=Organization(name=name, cidr_v4=cidr, owners=("alice",)),
        users=users,
        devices={d.name: d for d in devices},
        policy=policy,  # type: ignore[arg-type]
    )


def repo(*orgs: OrgState, commit: str | None = None) -> Repo:
    return Repo(mesh=Mesh(hub_url="https://hub.example.com"),
                orgs={o.name: o for o in orgs}, commit=commit)


def manifest_of(state: OrgState, compiled=None) -> Manifest:
    """A manifest as pki.manifest would build it (no certificates)."""
    from reconciler.policy import compile_policy

    compiled = compiled or compile_policy(state)
    devices = tuple(
        ManifestDevice(name=d.name, wireguard_public_key=d.wireguard_public_key,
                       tunnel_ips=d.tunnel_ips, cert_sha256="0" * 64, tags=d.tags,
                       labels=compiled.labels(d.name))
        for d in state.enabled_devices()
    )
    return Manifest(org=state.name, serial=1, commit="c" * 40, issued_at=0, not_after=1,
                    cidr_v4=state.organization.cidr_v4, cidr_v6=None, listen_port=51820,
                    keepalive=25, devices=devices, policy=compiled.as_dict())
