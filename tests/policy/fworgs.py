"""Orgs and manifests for the firewall tests: a site with a subnet router, an
exit node, a relay and a few laptops, plus the policies the golden files use."""

from __future__ import annotations

from policyorgs import dev as _dev
from policyorgs import ports, rules, user

from reconciler.model.manifest import Manifest
from reconciler.model.repo import Group, Organization, OrgState, Policy, Rule
from reconciler.pki.manifest import build_manifest
from reconciler.structs import replace

FP = "A" * 43
USERS = ("alice", "bob", "carol", "ops")


def dev(name: str, owner: str, ip: str, *tags: str, **kw: object):
    ips = kw.pop("tunnel_ips", None)
    d = _dev(name, owner, ip, *tags, **kw)
    return replace(d, tunnel_ips=ips) if ips else d


def devices(*, v6: bool = False, keep_sources: bool = False) -> tuple:
    def ips(n: int) -> dict:
        return {"tunnel_ips": (f"10.10.0.{n}", f"fd10:10::{n}")} if v6 else {}

    out = (
        dev("laptop-a", "alice", "10.10.0.2", "laptop", **ips(2)),
        dev("laptop-b", "bob", "10.10.0.3", "laptop", use_exit_node="exit-1", **ips(3)),
        dev("web-1", "carol", "10.10.0.4", "web", **ips(4)),
        dev("db-1", "carol", "10.10.0.5", "db", **ips(5)),
        dev("relay-1", "ops", "10.10.0.6", relay=True, endpoint="198.51.100.6:51820", **ips(6)),
        dev("router-1", "ops", "10.10.0.7", routes=("192.168.10.0/24",),
            masquerade_routes=not keep_sources, **ips(7)),
        dev("exit-1", "ops", "10.10.0.8", exit_node=True, **ips(8)),
    )
    return out


POLICIES: dict[str, Policy | None] = {
    "none": None,
    "tcp-port": Policy(rules=rules(Rule(("device:laptop-a",), ("tag:web",), "tcp",
                                        ports(8080), "web"))),
    "port-range": Policy(groups={"eng": Group("eng", users=("alice", "bob"))}, rules=rules(
        Rule(("group:eng",), ("tag:web",), "tcp", ports(22, (8000, 8100)), "eng-web"))),
    "udp": Policy(rules=rules(Rule(("tag:laptop",), ("tag:db",), "udp", ports(53), "dns"))),
    "icmp": Policy(rules=rules(Rule(("*",), ("*",), "icmp", (), "ping"))),
    "any-ports": Policy(rules=rules(Rule(("user:alice",), ("tag:web",), "any",
                                         ports(443), "web-any"))),
    "routes-exit": Policy(rules=rules(
        Rule(("tag:laptop",), ("route:192.168.10.0/24",), "tcp", ports(22), "lan-ssh"),
        Rule(("device:laptop-b",), ("internet",), "any", (), "bob-internet"),
        Rule(("tag:laptop",), ("tag:web",), "tcp", ports(443), "web"),
    )),
}


def org(policy: Policy | None, *, v6: bool = False, keep_sources: bool = False,
        devs: tuple | None = None) -> OrgState:
    ds = devs if devs is not None else devices(v6=v6, keep_sources=keep_sources)
    return OrgState(
        organization=Organization(name="acme", cidr_v4="10.10.0.0/24",
                                  cidr_v6="fd10:10::/64" if v6 else None, owners=("alice",)),
        users={u: replace(user(u), role="owner" if u == "alice" else "member")
               for u in USERS},
        devices={d.name: d for d in ds},
        policy=policy,
    )


def manifest(state: OrgState) -> Manifest:
    """Built by the real hub code (``pki.manifest.build_manifest``)."""
    fps = {d.name: FP for d in state.enabled_devices()}
    return build_manifest(state, commit="c" * 40, serial=1, now=0, lifetime_s=86400,
                          cert_fingerprints=fps)
