"""Pure: a verified manifest + peering decisions -> this device's ``DesiredInterface``.

Called by ``agent.decide`` every pass (and so by ``agent render``). No I/O,
no clock: the caller passes the allowed peer set (``policy.peers_allowed``),
one ``PeerPath`` per peer (``agent.peering`` decides them from the endpoint
feed), the private key and the listen port.

Rules (docs/operations.md, "What the agent configures"), the allowed-ips
layout of ``agent.peering``:

* interface addresses: the device's tunnel IPs with the org prefix length
  (``10.77.0.2/24``);
* a **direct** or **lan** peer carries its tunnel IPs as host routes (/32,
  /128) plus the subnets it advertises (``routes``), at the endpoint the
  path chose;
* a peer reached **via a relay** carries nothing itself (its WireGuard peer
  stays, with its endpoint and keepalive, so a direct session can come
  back): its prefixes go on the relay's peer;
* this device's own primary relay (``my_relay``) carries the org CIDRs as a
  catch-all, so relayed traffic from anyone is accepted through it; the
  direct peers' host routes win by longest prefix;
* relays are peers of everyone who needs them, whatever the policy says
  (policy is enforced at the ends, a relay only forwards);
* keepalive: this device's own ``keepalive`` when set, else the org default;
* a device missing from the manifest (removed or disabled in git) keeps its
  interface but gets no peers: it is cut off, fail-closed;
* the exit node this device uses (``policy.exitroute.exit_node_of``: its own
  ``use_exit_node`` in git, and policy allows ``internet``) also carries
  ``0.0.0.0/0`` and ``::/0``, and the interface gets the policy-routing
  ``fwmark`` so WireGuard's own packets keep the host's routes;
* a **relay** (``relay: true``), a subnet router (``routes``) and an exit node
  forward: its desired interface has ``forwarding=True`` (IP forwarding on in its namespace; the
  planner emits ``SetForwarding``, never the reverse) and its peers carry
  every device's host routes;
* **key check**: when this device's WireGuard public key in the manifest is
  not the public key of the local private key, ``compute_desired`` raises
  ``ConfigError`` naming both keys, before anything is planned, so the
  interface is never touched with a key the mesh does not know.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from reconciler.converge.keys import public_key
from reconciler.errors import ConfigError
from reconciler.model.endpoint import canonical_v4, is_canonical_v4_endpoint, parse_or_none
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.wg import DesiredInterface, DesiredPeer
from reconciler.structs import Record

PATHS = ("direct", "lan", "relay")


class PeerPath(Record):
    """How this device reaches one peer: ``direct``, ``lan`` or ``relay`` (``via``)."""

    peer: str
    path: str = "direct"
    endpoint: str | None = None  # "ip:port"; None = wait for the peer / roaming
    via: str | None = None  # relay device name when path == "relay"


class PeerSummary(Record):
    """Per-peer facts ``agent status`` shows (not WireGuard state)."""

    name: str
    public_key: str
    tunnel_ips: tuple[str, ...]
    path: str
    via: str | None = None
    endpoint: str | None = None


class Desired(Record):
    interface: DesiredInterface
    peers: tuple[PeerSummary, ...]  # every allowed peer, also those reached via a relay
    member: bool  # False: this device is not in the manifest (cut off)


def host_network(ip: str) -> str:
    """``10.0.0.3`` -> ``10.0.0.3/32``; ``fd00::3`` -> ``fd00::3/128``."""
    bare = ip.partition("/")[0]
    if canonical_v4(bare) is not None:
        return bare + "/32"
    addr = ipaddress.ip_address(bare)  # far cheaper than ip_interface
    return f"{addr}/{addr.max_prefixlen}"


def canonical(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def sort_cidrs(cidrs: Iterable[str]) -> tuple[str, ...]:
    """Canonical CIDRs, sorted by family, address and prefix."""
    nets = {ipaddress.ip_network(c, strict=False) for c in cidrs}
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n.network_address,
                                                            n.prefixlen)))


def _sort_canonical(cidrs: set[str]) -> tuple[str, ...]:
    """``sort_cidrs`` for entries already canonical (``host_network``,
    ``canonical``): one entry, the common case at 10,000 peers, is not parsed
    again."""
    return tuple(cidrs) if len(cidrs) == 1 else sort_cidrs(cidrs)


def _merge(layout: dict[str, tuple[str, ...] | set[str]], name: str,
           cidrs: Iterable[str]) -> None:
    """Add ``cidrs`` (canonical) to ``name``'s allowed IPs in ``layout``."""
    have = layout.get(name)
    if type(have) is set:
        have.update(cidrs)
    else:
        layout[name] = set(have or ()) | set(cidrs)


def interface_addresses(manifest: Manifest, device: ManifestDevice) -> tuple[str, ...]:
    out = []
    for ip in device.tunnel_ips:
        addr = ipaddress.ip_interface(ip).ip
        cidr = manifest.cidr_v4 if addr.version == 4 else manifest.cidr_v6
        prefix = ipaddress.ip_network(cidr).prefixlen if cidr else addr.max_prefixlen
        out.append(f"{addr}/{prefix}")
    return tuple(out)


def _literal(endpoint: str | None) -> str | None:
    """A static ``ip:port`` endpoint; host names were resolved by ``agent.paths``."""
    if is_canonical_v4_endpoint(endpoint):
        return endpoint
    parsed = parse_or_none(endpoint)
    return str(parsed) if parsed is not None else None


def org_cidrs(manifest: Manifest) -> tuple[str, ...]:
    return tuple(canonical(c) for c in (manifest.cidr_v4, manifest.cidr_v6) if c)


def peer_names(manifest: Manifest, me: str, allowed: Iterable[str]) -> tuple[str, ...]:
    """The peers this device keeps: policy-allowed ones, plus every relay (and,
    on a relay, every device)."""
    mine = manifest.device(me)
    present = {dev.name for dev in manifest.devices}
    names = set(allowed) & present  # set operations: 10,000 names a pass
    if mine is not None and mine.relay:
        names = present
    else:
        names.update(dev.name for dev in manifest.devices if dev.relay)
    return tuple(sorted(names - {me}))


def check_own_key(manifest: Manifest, device: ManifestDevice, private_key: str) -> None:
    """``ConfigError`` unless ``device``'s manifest public key is that of ``private_key``."""
    try:
        local = public_key(private_key)
    except ValueError as exc:
        raise ConfigError(f"device {device.name!r}: the local WireGuard private key is not a "
                          f"valid key ({exc}); restore the key file") from None
    if local != device.wireguard_public_key:
        raise ConfigError(
            f"device {device.name!r}: manifest serial {manifest.serial} (org "
            f"{manifest.org!r}) has WireGuard public key {device.wireguard_public_key}, but the "
            f"local private key's public key is {local}. The key in git is not this device's: "
            "re-run `meshops agent init --force` and update the device file, or restore the "
            "key file. The interface was not touched."
        )


def compute_desired(
    manifest: Manifest,
    me: str,
    *,
    private_key: str,
    interface: str,
    allowed: Iterable[str],
    paths: Mapping[str, PeerPath],
    my_relay: str | None = None,
    listen_port: int | None = None,
    mtu: int = 1420,
    exit_node: str | None = None,
    fwmark: int = 0,
) -> Desired:
    """This device's whole desired interface (see the module docstring).

    Raises ``ConfigError`` when the manifest's public key for ``me`` is not the
    public key of ``private_key``."""
    port = listen_port or manifest.listen_port
    mine = manifest.device(me)
    if mine is None:
        empty = DesiredInterface(name=interface, private_key=private_key, listen_port=port,
                                 addresses=(), peers={}, routes=(), mtu=mtu)
        return Desired(empty, (), member=False)
    check_own_key(manifest, mine, private_key)
    keepalive = mine.keepalive if mine.keepalive is not None else manifest.keepalive
    names = peer_names(manifest, me, allowed)  # sorted, unique
    if my_relay is not None and (mine.relay or my_relay == me or
                                 manifest.device(my_relay) is None):
        my_relay = None
    # peer -> its allowed IPs: a 1-tuple for the common case (one IPv4 address of
    # its own, final as it is), a set once anything is merged into the entry
    layout: dict[str, tuple[str, ...] | set[str]] = {}
    endpoints: dict[str, str | None] = {}
    summaries = []
    routes: set[str] = set()
    device, path_of = manifest.device, paths.get
    for name in names:  # the per-peer loop: 10,000 times a pass, kept lean
        dev = device(name)
        assert dev is not None  # peer_names keeps only present devices
        choice = path_of(name) or PeerPath(name, endpoint=_literal(dev.endpoint))
        via = None
        if choice.path == "relay":
            via = choice.via
            if via is None or via == me or dev.relay or mine.relay or device(via) is None:
                # no usable relay (or one side is a relay itself): try direct
                choice, via = PeerPath(name, "direct", choice.endpoint), None
        ips = dev.tunnel_ips
        endpoints[name] = choice.endpoint
        if via is None and not dev.routes and len(ips) == 1 and name not in layout \
                and canonical_v4(ips[0]) is not None:
            layout[name] = (ips[0] + "/32",)  # host_network's common case, inline
        else:
            own = {host_network(ip) for ip in ips}
            if dev.routes:
                advertised = {canonical(r) for r in dev.routes}
                own |= advertised
                routes |= advertised
            if via is None:
                _merge(layout, name, own)
            else:  # sent through its relay; the peer entry stays (no allowed IPs) for probing
                _merge(layout, name, ())
                _merge(layout, via, own)
        summaries.append(PeerSummary(
            name=name, public_key=dev.wireguard_public_key, tunnel_ips=ips,
            path=choice.path, via=via, endpoint=choice.endpoint))
    if my_relay is not None:  # relayed traffic from anyone reaches me through my relay
        _merge(layout, my_relay, org_cidrs(manifest))
    if exit_node is not None and exit_node in layout:
        # the default route goes through the exit node (policy routing sends
        # everything unmarked into the tunnel; longer prefixes still win)
        _merge(layout, exit_node, ("0.0.0.0/0", "::/0"))
    peers: dict[str, DesiredPeer] = {}
    for name in sorted(layout):
        dev = device(name)
        assert dev is not None
        if name not in endpoints:
            relay_path = paths.get(name)
            endpoints[name] = relay_path.endpoint if relay_path else _literal(dev.endpoint)
        key = dev.wireguard_public_key
        allowed = layout[name]
        peers[key] = DesiredPeer(
            key, allowed if type(allowed) is tuple else _sort_canonical(allowed),
            endpoints[name], keepalive, name)
    addresses = interface_addresses(manifest, mine)
    on_link = {str(ipaddress.ip_interface(a).network) for a in addresses}
    desired = DesiredInterface(
        name=interface,
        private_key=private_key,
        listen_port=port,
        addresses=addresses,
        peers=peers,
        routes=tuple(r for r in sort_cidrs(routes) if r not in on_link),
        mtu=mtu,
        forwarding=mine.relay or bool(mine.routes) or mine.exit_node,
        fwmark=fwmark,
    )
    return Desired(desired, tuple(summaries), member=True)
