"""Semantic checks of the org repository (docs/repo-format.md lists every code).

Called by ``reconciler.config.loader``. Two kinds of check:

- ``check_*_file``: what one file can get wrong on its own (name vs file name,
  key encoding, address syntax, port ranges). Their results are cached with the
  file, by blob id.
- ``check_org``: what needs the whole org (addresses inside the CIDR and
  unique, keys unique, routes not overlapping, every reference resolving), then
  ``check_policy_tests``, which runs every policy test through
  ``reconciler.policy.run_tests``.

All checks return ``Problem``s; none raises for bad data.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator

from reconciler.converge import keys
from reconciler.errors import Problem
from reconciler.model.repo import Device, Mesh, Organization, OrgState, Policy, Source, User

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_NAME_REMEDY = ("use a DNS label: lowercase letters, digits and '-', at most 63 characters, "
                "no dots or slashes")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _p(src: Source, path: str, code: str, message: str, remedy: str) -> Problem:
    """A problem at the line of field ``path`` of the object read from ``src``."""
    return Problem(src.file, src.line(path), code, message, remedy)


def decode_key(text: str) -> bytes | None:
    """32 raw bytes from strict standard base64, or None."""
    try:
        return keys.decode_key(text)
    except ValueError:
        return None


def _endpoint_ok(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
    return True


def check_name(file_name: str, name: str, source: Source, what: str) -> list[Problem]:
    """The object's ``name`` must be a DNS label and equal its file (or directory) name."""
    if not DNS_LABEL.match(name):
        return [_p(source, "name", "E-NAME-INVALID", f"{what} name {name!r} is not a DNS label",
                   _NAME_REMEDY)]
    if name != file_name:
        return [_p(source, "name", "E-NAME-MISMATCH",
                   f"{what} name {name!r} does not match its file name {file_name!r}",
                   f"rename the file to {name}.yaml or set name: {file_name}"
                   if what != "organization" else
                   f"rename the directory to orgs/{name}/ or set name: {file_name}")]
    return []


def check_mesh_file(mesh: Mesh) -> list[Problem]:
    return [_p(mesh.source, f"stun_servers.{i}", "E-ENDPOINT-INVALID",
               f"STUN server {s!r} is not host:port with a port in 1..65535",
               "write it as host:port")
            for i, s in enumerate(mesh.stun_servers) if not _endpoint_ok(s)]


def check_org_file(org: Organization, dir_name: str) -> list[Problem]:
    out = check_name(dir_name, org.name, org.source, "organization")
    for field, value, version in (("cidr_v4", org.cidr_v4, 4), ("cidr_v6", org.cidr_v6, 6)):
        if value is None:
            continue
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            out.append(_p(org.source, field, "E-CIDR-INVALID", f"{field} {value!r}: {exc}",
                          f"write an IPv{version} network such as "
                          + ("10.20.0.0/16" if version == 4 else "fd20::/64")))
            continue
        if net.version != version:
            out.append(_p(org.source, field, "E-CIDR-INVALID",
                          f"{field} {value!r} is not an IPv{version} network",
                          f"put an IPv{version} network in {field}"))
        elif net.num_addresses < 4:
            out.append(_p(org.source, field, "E-CIDR-INVALID",
                          f"{field} {value!r} is too small for a mesh",
                          "use a prefix of /30 or shorter (/126 for IPv6)"))
    return out


def check_user_file(user: User, file_name: str) -> list[Problem]:
    return check_name(file_name, user.name, user.source, "user")


def check_device_file(dev: Device, file_name: str) -> list[Problem]:
    out = check_name(file_name, dev.name, dev.source, "device")
    src = dev.source
    wg_key = decode_key(dev.wireguard_public_key)
    if wg_key is None:
        out.append(_p(src, "wireguard.public_key", "E-KEY-INVALID",
                      "wireguard.public_key is not 32 bytes of base64",
                      "use the 44-character key printed by `wg pubkey`"))
    elif wg_key == bytes(32):
        out.append(_p(src, "wireguard.public_key", "E-KEY-INVALID",
                      "wireguard.public_key is all zeros", "use the device's real public key"))
    if decode_key(dev.identity_public_key) is None:
        out.append(_p(src, "identity.public_key", "E-IDENTITY-KEY-INVALID",
                      "identity.public_key is not 32 bytes of base64 (Ed25519)",
                      "use the key printed by `meshops agent init`"))
    for i, route in enumerate(dev.routes):
        try:
            net = ipaddress.ip_network(route, strict=True)
        except ValueError as exc:
            out.append(_p(src, f"routes.{i}", "E-ROUTE-INVALID", f"route {route!r}: {exc}",
                          "write the network address with its prefix, e.g. 192.168.10.0/24"))
            continue
        if net.prefixlen == 0:
            out.append(_p(src, f"routes.{i}", "E-ROUTE-INVALID",
                          f"route {route!r} is a default route",
                          "set exit_node: true instead of advertising a default route"))
    if dev.endpoint is not None and not _endpoint_ok(dev.endpoint):
        out.append(_p(src, "endpoint", "E-ENDPOINT-INVALID",
                      f"endpoint {dev.endpoint!r} is not host:port with a port in 1..65535",
                      "write it as host:port, [v6]:port for IPv6"))
    if dev.relay and dev.endpoint is None:
        out.append(_p(src, "relay", "E-RELAY-ENDPOINT",
                      "a relay needs a static endpoint", "add endpoint: HOST:PORT"))
    if dev.expires is not None and dev.expires_at is None:
        out.append(_p(src, "expires", "E-EXPIRES-INVALID",
                      f"expires {dev.expires!r} is not a real date or time",
                      "write a date such as 2027-01-31, or 2027-01-31T12:00:00Z"))
    return out


def check_policy_file(policy: Policy, raw_ports: list[list[object]]) -> list[Problem]:
    """Port syntax (needs the raw items: the model keeps only the valid ones)."""
    from reconciler.config.build import parse_port

    out = []
    src = policy.source
    for rule, ports in zip(policy.rules, raw_ports):
        for j, item in enumerate(ports):
            if parse_port(item) is None:  # type: ignore[arg-type]
                out.append(_p(src, f"rules.{rule.index}.ports.{j}", "E-PORT-INVALID",
                              f"port {item!r} is outside 1..65535 or a reversed range",
                              "use a port in 1..65535 or a range LO-HI with LO <= HI"))
        if rule.proto == "icmp" and ports:
            out.append(_p(src, f"rules.{rule.index}.ports", "E-PORTS-ICMP",
                          "icmp has no ports", "remove ports, or use proto tcp/udp"))
    for test in policy.tests:
        if test.proto == "icmp" and test.port is not None:
            out.append(_p(src, f"tests.{test.index}.port", "E-PORTS-ICMP",
                          "icmp has no ports", "remove port, or use proto tcp/udp"))
    return out


# --- whole-org checks --------------------------------------------------------


def check_org(state: OrgState, broken: frozenset[str] = frozenset(),
              memo: dict[str, tuple[int, int]] | None = None) -> list[Problem]:
    """Cross-file checks of one org. ``broken`` holds ``"users/NAME"`` /
    ``"devices/NAME"`` of files that failed earlier checks: references to them
    are not reported again. ``memo`` caches parsed addresses across loads."""
    out: list[Problem] = []
    out.extend(_check_addresses(state, memo if memo is not None else {}))
    out.extend(_check_keys(state))
    out.extend(_check_routes(state))
    out.extend(_check_references(state, broken))
    return out


def _networks(org: Organization) -> dict[int, IPNetwork]:
    nets: dict[int, IPNetwork] = {}
    for value in (org.cidr_v4, org.cidr_v6):
        if value is None:
            continue
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError:
            continue
        nets.setdefault(net.version, net)
    return nets


def _parse_ip(text: str) -> tuple[int, int]:
    """(version, integer) of an address, (0, 0) when it is not one."""
    try:
        # IPv4Address/IPv6Address directly: ip_address() tries both, raising twice.
        ip = ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
    except ValueError:
        return (0, 0)
    return (ip.version, int(ip))


def _check_addresses(state: OrgState, memo: dict[str, tuple[int, int]]) -> Iterator[Problem]:
    org = state.organization
    nets = _networks(org)
    if 4 not in nets:
        return  # the CIDR itself is reported by check_org_file
    bounds = {v: (int(n.network_address), int(n.broadcast_address)) for v, n in nets.items()}
    has_v6 = 6 in nets
    seen: dict[tuple[int, int], str] = {}
    memo_get = memo.get
    devices = state.devices
    for name in sorted(devices):  # hot loop: 10,000 devices on every hub reload
        dev = devices[name]
        v4 = v6 = bad = 0
        for i, text in enumerate(dev.tunnel_ips):
            parsed = memo_get(text)
            if parsed is None:
                parsed = memo[text] = _parse_ip(text)
            version, value = parsed
            span = bounds.get(version)
            # IPv6 has no broadcast address: its last address is a usable host.
            if span is not None and parsed not in seen and (
                    span[0] < value < span[1] or (version == 6 and value == span[1])):
                seen[parsed] = name
                if version == 4:
                    v4 += 1
                else:
                    v6 += 1
                continue
            bad += 1  # slow path: say exactly what is wrong
            yield from _address_problem(dev, i, text, parsed, nets, bounds, seen)
        if bad:
            continue
        if v4 != 1:
            yield _p(dev.source, "tunnel_ips", "E-IP-V4-MISSING",
                     "a device needs exactly one IPv4 tunnel address",
                     f"list one address from {nets[4]}")
        elif has_v6 and v6 == 0:
            yield _p(dev.source, "tunnel_ips", "E-IP-V6-MISSING",
                     f"organization {org.name} has cidr_v6 {nets[6]}, so the device needs an "
                     "IPv6 tunnel address too", f"add one address from {nets[6]}")
        elif v6 > 1:
            yield _p(dev.source, "tunnel_ips", "E-IP-V6-MISSING",
                     "a device has at most one IPv6 tunnel address", "keep one")


def _address_problem(dev: Device, i: int, text: str, parsed: tuple[int, int],
                     nets: dict[int, IPNetwork], bounds: dict[int, tuple[int, int]],
                     seen: dict[tuple[int, int], str]) -> Iterator[Problem]:
    src, where = dev.source, f"tunnel_ips.{i}"
    version, value = parsed
    if version == 0:
        yield _p(src, where, "E-IP-INVALID", f"tunnel_ips[{i}] {text!r} is not an IP address",
                 "write a host address such as 10.20.0.5 (no prefix length)")
        return
    span = bounds.get(version)
    if span is None:
        yield _p(src, where, "E-IP-V6-NO-CIDR",
                 f"{text} is IPv6 but organization {dev.org} has no cidr_v6",
                 "remove the IPv6 address or add cidr_v6 to organization.yaml")
    elif not span[0] <= value <= span[1]:
        yield _p(src, where, "E-IP-OUTSIDE-CIDR",
                 f"tunnel IP {text} is outside the org network {nets[version]}",
                 "pick a free address inside it (meshops device add does)")
    elif value == span[0] or (version == 4 and value == span[1]):
        yield _p(src, where, "E-IP-RESERVED",
                 f"tunnel IP {text} is the network or broadcast address of {nets[version]}",
                 "pick a host address (meshops device add does)")
    else:
        yield _p(src, where, "E-DUP-IP", f"tunnel IP {text} is also used by device "
                 f"{seen[parsed]}", "give each device its own address "
                 "(meshops device add picks a free one)")


def _check_keys(state: OrgState) -> Iterator[Problem]:
    wg: dict[str, str] = {}
    ident: dict[str, str] = {}
    for name, dev in sorted(state.devices.items()):
        other = wg.setdefault(dev.wireguard_public_key, name)
        if other != name:
            yield _p(dev.source, "wireguard.public_key", "E-DUP-KEY",
                     f"WireGuard public key is also used by device {other}",
                     "every device needs its own key pair (meshops agent init)")
        other = ident.setdefault(dev.identity_public_key, name)
        if other != name:
            yield _p(dev.source, "identity.public_key", "E-DUP-IDENTITY-KEY",
                     f"identity public key is also used by device {other}",
                     "every device needs its own identity key (meshops agent init)")
    oidc: dict[tuple[str, str], str] = {}
    for name, user in sorted(state.users.items()):
        other = oidc.setdefault((user.oidc_issuer, user.oidc_subject), name)
        if other != name:
            yield _p(user.source, "oidc.subject", "E-DUP-OIDC",
                     f"OIDC identity {user.oidc_issuer} / {user.oidc_subject} is also user "
                     f"{other}", "one user per OIDC identity: merge the two files")


def _check_routes(state: OrgState) -> Iterator[Problem]:
    org_nets = list(_networks(state.organization).values())
    spans = []
    for name, dev in sorted(state.devices.items()):
        if dev.disabled:
            continue
        for i, route in enumerate(dev.routes):
            try:
                net = ipaddress.ip_network(route, strict=True)
            except ValueError:
                continue
            if net.prefixlen == 0:
                continue  # reported per file
            clash = next((o for o in org_nets if o.version == net.version and net.overlaps(o)),
                         None)
            if clash is not None:
                yield _p(dev.source, f"routes.{i}", "E-ROUTE-IN-ORG-CIDR",
                         f"route {route} overlaps the org network {clash}",
                         "advertise only subnets outside the tunnel network")
                continue
            spans.append((net.version, int(net.network_address), int(net.broadcast_address),
                          name, i, route, dev))
    spans.sort(key=lambda s: (s[0], s[1], -s[2]))
    prev = None
    for span in spans:
        if prev is not None and prev[0] == span[0] and span[1] <= prev[2]:
            where = "device " + prev[3] if prev[3] != span[3] else "the same device"
            yield _p(span[6].source, f"routes.{span[4]}", "E-ROUTE-OVERLAP",
                     f"route {span[5]} overlaps route {prev[5]} of {where}",
                     "advertise each subnet from one device only, without overlaps")
            if span[2] > prev[2]:
                prev = span
        else:
            prev = span


def _check_references(state: OrgState, broken: frozenset[str]) -> Iterator[Problem]:
    org = state.organization
    users, devices = state.users, state.devices

    def user_known(name: str) -> bool:
        return name in users or f"users/{name}" in broken

    def device_known(name: str) -> bool:
        return name in devices or f"devices/{name}" in broken

    for i, owner in enumerate(org.owners):
        if not user_known(owner):
            yield _p(org.source, f"owners.{i}", "E-REF-USER",
                     f"owner {owner!r} is not a user of {org.name}",
                     f"add orgs/{org.name}/users/{owner}.yaml or fix the name")
        elif owner in users and users[owner].role != "owner":
            yield _p(org.source, f"owners.{i}", "E-OWNER-ROLE",
                     f"owner {owner!r} has role {users[owner].role}, not owner",
                     f"set role: owner in users/{owner}.yaml")
    for name, dev in sorted(devices.items()):
        if not user_known(dev.owner):
            yield _p(dev.source, "owner", "E-REF-OWNER",
                     f"owner {dev.owner!r} is not a user of {org.name}",
                     f"add orgs/{org.name}/users/{dev.owner}.yaml or fix the owner")
    policy = state.policy
    if policy is None:
        return
    src = policy.source
    tags = {t for d in devices.values() for t in d.tags}
    tags_unknown = any(b.startswith("devices/") for b in broken)
    for gname, group in sorted(policy.groups.items()):
        for i, u in enumerate(group.users):
            if not user_known(u):
                yield _p(src, f"groups.{gname}.users.{i}", "E-REF-USER",
                         f"group {gname}: user {u!r} does not exist", "fix the name")
        for i, d in enumerate(group.devices):
            if not device_known(d):
                yield _p(src, f"groups.{gname}.devices.{i}", "E-REF-DEVICE",
                         f"group {gname}: device {d!r} does not exist", "fix the name")
        for i, t in enumerate(group.tags):
            if t not in tags and not tags_unknown:
                yield _p(src, f"groups.{gname}.tags.{i}", "E-REF-TAG",
                         f"group {gname}: no device has tag {t!r}",
                         "fix the tag, or tag a device with it")
    for rule in policy.rules:
        for side, selectors in (("src", rule.src), ("dst", rule.dst)):
            for i, sel in enumerate(selectors):
                problem = _selector_problem(sel, policy, user_known, device_known, tags,
                                            tags_unknown)
                if problem is not None:
                    code, message = problem
                    yield _p(src, f"rules.{rule.index}.{side}.{i}", code,
                             f"rule {rule.name or rule.index}: {message}",
                             "fix the selector or add what it names")
    for test in policy.tests:
        for side, name in (("src", test.src), ("dst", test.dst)):
            if not device_known(name):
                yield _p(src, f"tests.{test.index}.{side}", "E-REF-DEVICE",
                         f"test {test.index}: device {name!r} does not exist",
                         "tests name devices of this org")


def _selector_problem(sel: str, policy: Policy, user_known: Callable[[str], bool],
                      device_known: Callable[[str], bool], tags: set[str],
                      tags_unknown: bool) -> tuple[str, str] | None:
    if sel == "*":
        return None
    kind, _, name = sel.partition(":")
    if kind == "group" and name not in policy.groups:
        return "E-REF-GROUP", f"group {name!r} is not defined in groups"
    if kind == "user" and not user_known(name):
        return "E-REF-USER", f"user {name!r} does not exist"
    if kind == "device" and not device_known(name):
        return "E-REF-DEVICE", f"device {name!r} does not exist"
    if kind == "tag" and name not in tags and not tags_unknown:
        return "E-REF-TAG", f"no device has tag {name!r}"
    return None


def check_policy_tests(state: OrgState) -> list[Problem]:
    """Run every policy test; one problem per failing test."""
    if state.policy is None or not state.policy.tests:
        return []
    from reconciler.policy import run_tests

    out = []
    src = state.policy.source
    for outcome in run_tests(state):
        if outcome.passed:
            continue
        test = outcome.test
        decision = outcome.decision
        why = getattr(decision, "reason", "") or (
            "no rule matched" if decision.rule is None else f"rule {decision.rule.index}")
        port = f"/{test.port}" if test.port is not None else ""
        out.append(Problem(src.file, src.line(f"tests.{test.index}"), "E-POLICY-TEST",
                           f"test {test.index}: {test.src} -> {test.dst} {test.proto}{port} "
                           f"expected {test.expect}, got {decision.action}: {why}",
                           "fix the rules, or the test if the new behaviour is intended"))
    return out


def dedupe(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(set(problems), key=lambda p: (p.file, p.line, p.code, p.message))
