"""Schema-valid YAML documents -> frozen ``reconciler.model.repo`` objects.

Called by ``reconciler.config.loader`` after a document passed its JSON
Schema, so field types are already right here. Each object keeps a
``Source`` (file, per-field lines, blob id) for later ``file:line`` problems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.model.repo import (
    Device,
    Enrollment,
    Group,
    Mesh,
    Organization,
    OrgDefaults,
    Policy,
    PolicyTest,
    PortRange,
    Rule,
    Source,
    User,
)


def mesh(doc: Mapping[str, Any], source: Source) -> Mesh:
    defaults = Mesh(hub_url="")
    return Mesh(
        hub_url=doc["hub_url"],
        stun_servers=tuple(doc.get("stun_servers", ())),
        cert_lifetime_days=doc.get("cert_lifetime_days", defaults.cert_lifetime_days),
        cert_renew_fraction=float(doc.get("cert_renew_fraction",
                                          defaults.cert_renew_fraction)),
        manifest_lifetime_days=doc.get("manifest_lifetime_days",
                                       defaults.manifest_lifetime_days),
        rotation_overlap_days=doc.get("rotation_overlap_days",
                                      defaults.rotation_overlap_days),
        pgp_recipients=tuple(doc.get("pgp_recipients", ())),
        require_signed_commits=doc.get("require_signed_commits", False),
        admins=tuple(doc.get("admins", ())),
        source=source,
    )


def organization(doc: Mapping[str, Any], source: Source) -> Organization:
    d = doc.get("defaults", {})
    base = OrgDefaults()
    return Organization(
        name=doc["name"],
        cidr_v4=doc["cidr_v4"],
        cidr_v6=doc.get("cidr_v6"),
        owners=tuple(doc.get("owners", ())),
        defaults=OrgDefaults(listen_port=int(d.get("listen_port", base.listen_port)),
                             keepalive=int(d.get("keepalive", base.keepalive)),
                             device_lifetime_days=d.get("device_lifetime_days")),
        description=doc.get("description", ""),
        source=source,
        enrollment=enrollment(doc.get("enrollment")),
    )


def enrollment(doc: Mapping[str, Any] | None) -> Enrollment | None:
    if doc is None:
        return None
    auto = doc.get("auto_approve") or {}
    return Enrollment(issuer=doc["issuer"], client_id=doc["client_id"],
                      auto_approve_roles=tuple(auto.get("roles", ())),
                      max_devices_per_user=auto.get("max_devices_per_user"))


def user(doc: Mapping[str, Any], org: str, source: Source) -> User:
    return User(
        name=doc["name"],
        org=org,
        email=doc["email"],
        oidc_issuer=doc["oidc"]["issuer"],
        oidc_subject=doc["oidc"]["subject"],
        role=doc.get("role", "member"),
        pgp_fingerprint=doc.get("pgp_fingerprint"),
        source=source,
        disabled=doc.get("disabled", False),
    )


def device(doc: Mapping[str, Any], org: str, source: Source) -> Device:
    keepalive = doc.get("keepalive")
    return Device(
        name=doc["name"],
        org=org,
        owner=doc["owner"],
        wireguard_public_key=doc["wireguard"]["public_key"],
        identity_public_key=doc["identity"]["public_key"],
        tunnel_ips=tuple(doc["tunnel_ips"]),
        tags=tuple(doc.get("tags", ())),
        relay=doc.get("relay", False),
        endpoint=doc.get("endpoint"),
        routes=tuple(doc.get("routes", ())),
        exit_node=doc.get("exit_node", False),
        keepalive=int(keepalive) if keepalive is not None else None,
        description=doc.get("description", ""),
        disabled=doc.get("disabled", False),
        source=source,
        use_exit_node=doc.get("use_exit_node"),
        masquerade_routes=doc.get("masquerade_routes", True),
        expires=doc.get("expires"),
    )


_PORT_TEXT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?\Z")


def parse_port(item: object) -> PortRange | None:
    """``80`` or ``"8000-8100"`` -> PortRange; None when out of 1..65535, reversed, or
    not a port at all (a bool, a float such as ``22.0``, text other than ASCII digits)."""
    if type(item) is int:
        lo = hi = item
    elif type(item) is str and (m := _PORT_TEXT.match(item)):
        lo = int(m.group(1))
        hi = int(m.group(2) or m.group(1))
    else:
        return None
    if not 1 <= lo <= hi <= 65535:
        return None
    return PortRange(lo, hi)


def policy(doc: Mapping[str, Any], source: Source) -> Policy:
    groups = {
        name: Group(name=name, users=tuple(g.get("users", ())), tags=tuple(g.get("tags", ())),
                    devices=tuple(g.get("devices", ())))
        for name, g in (doc.get("groups") or {}).items()
    }
    rules = []
    for index, r in enumerate(doc.get("rules", ())):
        ports = tuple(p for p in (parse_port(x) for x in r.get("ports", ())) if p is not None)
        rules.append(Rule(src=tuple(r["src"]), dst=tuple(r["dst"]), proto=r.get("proto", "any"),
                          ports=ports, name=r.get("name", ""), index=index))
    tests = []
    for index, t in enumerate(doc.get("tests", ())):
        port = t.get("port")
        proto = t.get("proto", "tcp" if port is not None else "any")
        tests.append(PolicyTest(src=t["src"], dst=t["dst"], proto=proto, port=port,
                                expect=t["expect"], index=index))
    return Policy(groups=groups, rules=tuple(rules), tests=tuple(tests), source=source)
