"""Semantic checks of the org repository (docs/repo-format.md lists every code).

Called by ``reconciler.config.loader``. Two kinds of check:

- ``check_*_file``: what one file can get wrong on its own (name vs file name,
  key encoding, address syntax, port ranges). Their results are cached with the
  file, by blob id.
- ``check_org``: what needs the whole org (addresses inside the CIDR and
  unique, keys unique, routes not overlapping, every reference resolving), then
  ``check_policy_tests``, which runs every policy test through
  ``reconciler.policy.run_tests``;
- ``check_repo``: what needs every org and mesh.yaml: org networks that overlap,
  routes inside any org's network, and routes that would carry the traffic to a
  static endpoint, the hub or a STUN server into the tunnel (a routing loop).

Routes and endpoints (docs/repo-format.md, "Routes and endpoints"): a route may
not be loopback, multicast, link-local, unspecified or broadcast space; without
``exit_node`` a device's routes may not take most of the address space (a
prefix shorter than /8, or routes whose union holds a /1); an endpoint may not
be an unspecified, loopback, multicast or broadcast address. Host names are
never resolved here: validate must give the same verdict offline, in CI and on
the hub, so only IP literals (and ``localhost``) are checked.

All checks return ``Problem``s; none raises for bad data.
"""

from __future__ import annotations

import bisect
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


# Address space no advertised route may cover, with the reason shown to the user.
_RESERVED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), what) for net, what in (
        ("0.0.0.0/8", "unspecified ('this network', RFC 1122 3.2.1.3)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "the limited broadcast address"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped (write IPv4 routes as IPv4)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ))
BROAD_PREFIX = 8  # a route shorter than this takes "most of the address space"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def endpoint_host(endpoint: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port``."""
    host = endpoint.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def endpoint_ip(endpoint: str) -> IPAddress | None:
    """The endpoint's address when it is an IP literal (``localhost`` is 127.0.0.1,
    RFC 6761 6.3); None for other host names, which validate never resolves."""
    host = endpoint_host(endpoint)
    if host == "localhost" or host.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bad_endpoint_address(ip: IPAddress) -> str | None:
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip.is_unspecified or (ip.version == 4 and int(ip) >> 24 == 0):
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 4 and int(ip) == 0xFFFFFFFF:
        return "the broadcast address"
    return None


def route_network(route: str, exit_node: bool = False) -> IPNetwork | None:
    """The route as a network, or None when per-file checks refuse it (so whole-org
    checks do not report it a second time)."""
    try:
        net = ipaddress.ip_network(route, strict=True)
    except ValueError:
        return None
    if net.prefixlen == 0 or (net.prefixlen < BROAD_PREFIX and not exit_node) or any(
            net.overlaps(r) for r, _ in _RESERVED if r.version == net.version):
        return None
    return net


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
    out.extend(_check_device_routes(dev))
    if dev.endpoint is not None and not _endpoint_ok(dev.endpoint):
        out.append(_p(src, "endpoint", "E-ENDPOINT-INVALID",
                      f"endpoint {dev.endpoint!r} is not host:port with a port in 1..65535",
                      "write it as host:port, [v6]:port for IPv6"))
    elif dev.endpoint is not None:
        ip = endpoint_ip(dev.endpoint)
        what = _bad_endpoint_address(ip) if ip is not None else None
        if what is not None:
            role = "relay endpoint" if dev.relay else "endpoint"
            out.append(_p(src, "endpoint", "E-ENDPOINT-ADDRESS",
                          f"{role} {dev.endpoint} is {what}: no peer can send to it",
                          "write the device's public address (or a DNS name) and port"))
    if dev.relay and dev.endpoint is None:
        out.append(_p(src, "relay", "E-RELAY-ENDPOINT",
                      "a relay needs a static endpoint", "add endpoint: HOST:PORT"))
    if dev.expires is not None and dev.expires_at is None:
        out.append(_p(src, "expires", "E-EXPIRES-INVALID",
                      f"expires {dev.expires!r} is not a real date or time",
                      "write a date such as 2027-01-31, or 2027-01-31T12:00:00Z"))
    return out


def _check_device_routes(dev: Device) -> Iterator[Problem]:
    src = dev.source
    valid: list[IPNetwork] = []
    for i, route in enumerate(dev.routes):
        where = f"routes.{i}"
        try:
            net = ipaddress.ip_network(route, strict=True)
        except ValueError as exc:
            yield _p(src, where, "E-ROUTE-INVALID", f"route {route!r}: {exc}",
                     "write the network address with its prefix, e.g. 192.168.10.0/24")
            continue
        if net.prefixlen == 0:
            yield _p(src, where, "E-ROUTE-INVALID", f"route {route!r} is a default route",
                     "set exit_node: true instead of advertising a default route")
            continue
        if net.prefixlen < BROAD_PREFIX and not dev.exit_node:
            yield _p(src, where, "E-ROUTE-TOO-BROAD",
                     f"route {route} (shorter than /{BROAD_PREFIX}) takes most of the address "
                     "space away from every peer's own network",
                     "advertise the subnets behind the device, or make it an exit node "
                     "(exit_node: true)")
            continue
        valid.append(net)  # reserved space still counts towards the union below
        clash = next((r for r in _RESERVED if r[0].version == net.version
                      and net.overlaps(r[0])), None)
        if clash is not None:
            yield _p(src, where, "E-ROUTE-RESERVED",
                     f"route {route} covers {clash[0]}, which is {clash[1]}: peers would send "
                     "that traffic into the tunnel", "advertise only unicast subnets")
    if dev.exit_node:
        return
    for version in (4, 6):
        nets = [n for n in valid if n.version == version]
        if len(nets) < 2:
            continue
        block = next((b for b in ipaddress.collapse_addresses(nets)  # type: ignore[misc]
                      if b.prefixlen <= 1), None)
        if block is not None:
            yield _p(src, "routes", "E-ROUTE-TOO-BROAD",
                     f"the routes together cover {block}, half of the IPv{version} address "
                     "space or more", "advertise the subnets behind the device, or make it "
                     "an exit node (exit_node: true)")


def check_policy_file(policy: Policy, raw_ports: list[list[object]]) -> list[Problem]:
    """Port syntax (needs the raw items: the model keeps only the valid ones)."""
    from reconciler.config.build import parse_port

    out = []
    src = policy.source
    for rule, ports in zip(policy.rules, raw_ports):
        for j, item in enumerate(ports):
            if parse_port(item) is None:
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
    out.extend(_check_exit_use(state, broken))
    out.extend(_check_references(state, broken))
    return out


def _check_exit_use(state: OrgState, broken: frozenset[str]) -> Iterator[Problem]:
    """``use_exit_node: NAME`` names another enabled device of the org that has
    ``exit_node: true`` (E-EXIT-NODE)."""
    devices = state.devices
    for name, dev in sorted(devices.items()):
        target = dev.use_exit_node
        if target is None or dev.disabled:
            continue
        exit_dev = devices.get(target)
        if target == name:
            message = "a device cannot use itself as its exit node"
        elif exit_dev is None:
            if f"devices/{target}" in broken:
                continue
            message = f"use_exit_node {target!r} is not a device of {state.name}"
        elif exit_dev.disabled:
            message = f"use_exit_node {target!r} is disabled"
        elif not exit_dev.exit_node:
            message = f"use_exit_node {target!r} does not offer itself (no exit_node: true)"
        else:
            continue
        yield _p(dev.source, "use_exit_node", "E-EXIT-NODE", message,
                 "name an enabled device of this org that has exit_node: true, or remove "
                 "use_exit_node")


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
            net = route_network(route, dev.exit_node)
            if net is None:
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


# --- whole-repository checks ---------------------------------------------------


def check_repo(mesh: Mesh | None, states: dict[str, OrgState]) -> list[Problem]:
    """Checks across orgs and mesh.yaml (see the module docstring)."""
    out: list[Problem] = []
    nets = {name: _networks(state.organization) for name, state in sorted(states.items())}
    out.extend(_check_cidr_overlaps(states, nets))
    targets = _mesh_targets(mesh)
    for name, state in sorted(states.items()):
        out.extend(_check_routes_against(state, nets, targets))
    return out


def _check_cidr_overlaps(states: dict[str, OrgState],
                         nets: dict[str, dict[int, IPNetwork]]) -> Iterator[Problem]:
    seen: list[tuple[str, IPNetwork]] = []
    for name in sorted(nets):
        org = states[name].organization
        for version, net in sorted(nets[name].items()):
            field = "cidr_v4" if version == 4 else "cidr_v6"
            other = next(((o, n) for o, n in seen if n.version == version and n.overlaps(net)),
                         None)
            if other is not None:
                yield _p(org.source, field, "E-CIDR-OVERLAP",
                         f"{field} {net} overlaps {other[1]} of organization {other[0]}",
                         "give each organization its own tunnel network; orgs must never "
                         "share addresses")
            seen.append((name, net))


def _mesh_targets(mesh: Mesh | None) -> list[tuple[IPAddress, str]]:
    """(address, what, where) for the hub and STUN servers given as IP literals."""
    if mesh is None:
        return []
    from urllib.parse import urlsplit

    out = []
    try:
        host = urlsplit(mesh.hub_url).hostname
    except ValueError:
        host = None
    if host:
        ip = endpoint_ip(f"[{host}]:0" if ":" in host else f"{host}:0")
        if ip is not None:
            out.append((ip, f"the hub ({mesh.hub_url}, mesh.yaml hub_url)"))
    for server in mesh.stun_servers:
        ip = endpoint_ip(server)
        if ip is not None:
            out.append((ip, f"STUN server {server} (mesh.yaml stun_servers)"))
    return out


def _check_routes_against(state: OrgState, nets: dict[str, dict[int, IPNetwork]],
                          targets: list[tuple[IPAddress, str]]) -> Iterator[Problem]:
    """Routes inside another org's network, and routes over an endpoint of this org,
    the hub or a STUN server."""
    org = state.organization
    endpoints = list(targets)
    for name, dev in sorted(state.devices.items()):
        if dev.endpoint is None or dev.disabled:
            continue
        ip = endpoint_ip(dev.endpoint)
        if ip is None:
            continue
        role = "relay" if dev.relay else "device"
        endpoints.append((ip, f"the endpoint {dev.endpoint} of {role} {name}"))
        own = nets[org.name].get(ip.version)
        if own is not None and ip in own:
            yield _p(dev.source, "endpoint", "E-ENDPOINT-ADDRESS",
                     f"endpoint {dev.endpoint} is inside the org's tunnel network {own}: "
                     "WireGuard would send its own packets into the tunnel",
                     "write the device's public address, outside the tunnel network")
    others = [(o, n) for o, by_version in nets.items() if o != org.name
              for n in by_version.values()]
    points = sorted(((ip.version, int(ip)), what) for ip, what in endpoints)
    keys = [k for k, _ in points]
    for name, dev in sorted(state.devices.items()):
        if dev.disabled:
            continue
        for i, route in enumerate(dev.routes):
            net = route_network(route, dev.exit_node)
            if net is None:
                continue
            clash = next(((o, n) for o, n in others if n.version == net.version
                          and n.overlaps(net)), None)
            if clash is not None:
                yield _p(dev.source, f"routes.{i}", "E-ROUTE-IN-ORG-CIDR",
                         f"route {route} overlaps {clash[1]}, the tunnel network of "
                         f"organization {clash[0]}", "advertise only subnets outside every "
                         "org's tunnel network")
                continue
            at = bisect.bisect_left(keys, (net.version, int(net.network_address)))
            if at < len(keys) and keys[at] <= (net.version, int(net.broadcast_address)):
                yield _p(dev.source, f"routes.{i}", "E-ROUTE-LOOP",
                         f"route {route} covers {points[at][1]}: traffic to it would enter "
                         "the tunnel it should carry (a routing loop)",
                         "narrow the route so that it leaves that address out")


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
                                            tags_unknown, side, state)
                if problem is not None:
                    code, message = problem
                    yield _p(src, f"rules.{rule.index}.{side}.{i}", code,
                             f"rule {rule.name or rule.index}: {message}",
                             "fix the selector or add what it names")
    for test in policy.tests:
        for side, name in (("src", test.src), ("dst", test.dst)):
            if side == "dst" and _is_ip(name):
                continue  # an address outside the mesh: a routed subnet or the internet
            if not device_known(name):
                yield _p(src, f"tests.{test.index}.{side}", "E-REF-DEVICE",
                         f"test {test.index}: device {name!r} does not exist",
                         "tests name devices of this org")


def _is_ip(text: str) -> bool:
    return _parse_ip(text)[0] != 0


def _selector_problem(sel: str, policy: Policy, user_known: Callable[[str], bool],
                      device_known: Callable[[str], bool], tags: set[str],
                      tags_unknown: bool, side: str = "dst",
                      state: OrgState | None = None) -> tuple[str, str] | None:
    if sel == "*":
        return None
    kind, _, name = sel.partition(":")
    if kind in ("route", "internet") and side == "src":
        return ("E-SELECTOR-SIDE", (f"{sel!r} selects destinations only (routed subnets, "
                                    "the internet); it cannot be a source"))
    if kind == "route" and state is not None:
        return _route_selector_problem(name, state)
    if kind == "internet" and state is not None and not any(
            d.exit_node and not d.disabled for d in state.devices.values()):
        return ("E-REF-EXIT", ("'internet' is reachable only through an exit node, and no "
                               "enabled device has exit_node: true"))
    if kind == "group" and name not in policy.groups:
        return "E-REF-GROUP", f"group {name!r} is not defined in groups"
    if kind == "user" and not user_known(name):
        return "E-REF-USER", f"user {name!r} does not exist"
    if kind == "device" and not device_known(name):
        return "E-REF-DEVICE", f"device {name!r} does not exist"
    if kind == "tag" and name not in tags and not tags_unknown:
        return "E-REF-TAG", f"no device has tag {name!r}"
    return None


def _route_selector_problem(cidr: str, state: OrgState) -> tuple[str, str] | None:
    """``route:CIDR`` must be a network inside some enabled device's advertised route."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        return "E-SELECTOR-INVALID", f"route:{cidr}: {exc}"
    for dev in state.devices.values():
        if dev.disabled:
            continue
        for route in dev.routes:
            try:
                adv = ipaddress.ip_network(route, strict=False)
            except ValueError:
                continue
            if adv.version == net.version and net.subnet_of(adv):  # type: ignore[arg-type]
                return None
    return ("E-REF-ROUTE", f"no enabled device advertises a route that covers {cidr}")


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
