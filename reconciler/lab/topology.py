r"""The NAT lab's topology, as data, and the code that builds its network.

Used by ``reconciler.lab.runner`` (``scripts/lab``, ``scripts/demo``) and the e2e
tests. The "internet" is a bridge in its own namespace carrying the
documentation ranges 198.51.100.0/24 and 203.0.113.0/24; sites hide private
10.10.x.0/24 LANs behind iptables NAT gateways. Sites A and D are port-restricted
cone NATs (so cone<->cone across sites is exercised), B and C are symmetric.
Nothing touches the root namespace.

::

                         [inet: br0  198.51.100.0/24 + 203.0.113.0/24]
      |            |            |          |          |           |            |
     hub         stun        relay1     relay2      pub        gw-a         gw-b       gw-c       gw-d
  .100.10     .100.20/.21   .113.31    .113.32    .113.40    .100.50      .100.60    .113.70    .113.80
  hub serve     stund                                        cone NAT     symmetric  symmetric  cone NAT
  + STUN                                                      /    \          |          |          |
                                                             a1    a2        b1         c1         d1
                                                        10.10.1.11 .12  10.10.2.11  10.10.3.11  10.10.4.11
                                                             |
                                                           ahost 10.20.1.50 (no agent)

Policy on the wire (issue 11): ``a1`` is a subnet router for ``10.20.1.0/24``,
where ``ahost`` runs no agent; ``pub`` is an exit node that ``c1`` uses, and
``web`` (``198.51.100.90``) is a host on the lab internet that reports the
source address it sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.lab.netns import Netns

NET_A = "198.51.100"
NET_B = "203.0.113"


@dataclass(frozen=True)
class Site:
    name: str  # "a", "b", "c"
    wan_ip: str
    lan: str  # "10.10.1" (a /24 prefix)
    symmetric: bool


@dataclass(frozen=True)
class Node:
    name: str
    site: str | None  # None: directly on the internet
    ip: str  # LAN address behind a NAT, or public address
    relay: bool = False
    public: bool = False


@dataclass(frozen=True)
class Topology:
    prefix: str  # namespace prefix, e.g. "mo-lab"
    wg_prefix: str  # interface-name prefix, unique per host (wireguard-go sockets share /run)
    hub_ip: str = f"{NET_A}.10"
    stun_ips: tuple[str, str] = (f"{NET_A}.20", f"{NET_A}.21")
    hub_port: int = 8443
    stun_port: int = 3478
    wg_port: int = 51820
    org: str = "lab"
    org_cidr: str = "10.99.0.0/24"
    router: str = "a1"  # subnet router for router_lan, where lan_host runs no agent
    router_lan: str = "10.20.1"  # a /24 prefix behind the router
    lan_host: str = "ahost"
    exit_node: str = "pub"
    exit_client: str = "c1"
    web_ip: str = f"{NET_A}.90"  # a host on the lab internet
    sites: tuple[Site, ...] = (
        Site("a", f"{NET_A}.50", "10.10.1", symmetric=False),
        Site("b", f"{NET_A}.60", "10.10.2", symmetric=True),
        Site("c", f"{NET_B}.70", "10.10.3", symmetric=True),
        Site("d", f"{NET_B}.80", "10.10.4", symmetric=False),
    )
    nodes: tuple[Node, ...] = (
        Node("relay1", None, f"{NET_B}.31", relay=True, public=True),
        Node("relay2", None, f"{NET_B}.32", relay=True, public=True),
        Node("pub", None, f"{NET_B}.40", public=True),
        Node("a1", "a", "10.10.1.11"),
        Node("a2", "a", "10.10.1.12"),
        Node("b1", "b", "10.10.2.11"),
        Node("c1", "c", "10.10.3.11"),
        Node("d1", "d", "10.10.4.11"),
    )

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def ifname(self, node: str) -> str:
        name = f"{self.wg_prefix}{node}"
        assert len(name) <= 15, name
        return name

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def lan_host_ip(self) -> str:
        return f"{self.router_lan}.50"

    @property
    def hub_url(self) -> str:
        return f"https://{self.hub_ip}:{self.hub_port}"

    @property
    def stun_servers(self) -> tuple[str, str]:
        return (f"{self.hub_ip}:{self.stun_port}", f"{self.stun_ips[0]}:{self.stun_port}")


def _other_net(ip: str) -> str:
    return f"{NET_B}.0/24" if ip.startswith(NET_A) else f"{NET_A}.0/24"


def build_network(topo: Topology, nn: Netns) -> None:
    """Namespaces, the internet bridge, NAT gateways and site LANs."""
    inet = nn.add_ns(topo.ns("inet"))
    nn.bridge(inet, "br0")

    def on_internet(name: str, ips: list[str], *, forward: bool = False) -> str:
        ns = nn.add_ns(topo.ns(name), forward=forward)
        nn.veth(ns, "wan", inet, f"v-{name}", master_b="br0")
        for ip in ips:
            nn.addr(ns, "wan", f"{ip}/24")
        # both documentation /24s share one L2 segment: the other one is on-link
        nn.route(ns, _other_net(ips[0]), dev="wan")
        return ns

    on_internet("hub", [topo.hub_ip])
    on_internet("stun", list(topo.stun_ips))
    for node in topo.nodes:
        if node.site is None:
            # relays: the agent enables forwarding itself (SetForwarding); the lab must not
            on_internet(node.name, [node.ip])
    on_internet("web", [topo.web_ip])
    for site in topo.sites:
        gw = on_internet(f"gw-{site.name}", [site.wan_ip], forward=True)
        nn.bridge(gw, "lan")
        nn.addr(gw, "lan", f"{site.lan}.1/24")
        nn.nat(gw, "wan", symmetric=site.symmetric)
        for node in topo.nodes:
            if node.site == site.name:
                attach_to_site(topo, nn, node.name, site, node.ip, create_ns=True)
    # the subnet router's second LAN, with a host that runs no agent
    host = nn.add_ns(topo.ns(topo.lan_host))
    router = topo.ns(topo.router)
    nn.veth(router, "lan2", host, "eth0")
    nn.addr(router, "lan2", f"{topo.router_lan}.1/24")
    nn.addr(host, "eth0", f"{topo.router_lan}.50/24")
    nn.route(host, "default", via=f"{topo.router_lan}.1")


def attach_to_site(topo: Topology, nn: Netns, node: str, site: Site, ip: str, *, create_ns: bool) -> None:
    ns = nn.add_ns(topo.ns(node)) if create_ns else topo.ns(node)
    gw = topo.ns(f"gw-{site.name}")
    nn.veth(ns, "eth0", gw, f"v-{node}", master_b="lan")
    nn.addr(ns, "eth0", f"{ip}/24")
    nn.route(ns, "default", via=f"{site.lan}.1")
