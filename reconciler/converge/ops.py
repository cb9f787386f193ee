"""The operations a plan is made of: frozen, printable data.

``reconciler.converge.planner.plan`` returns a tuple of these; backends
(``reconciler.backends``) and the link manager (``reconciler.net.iproute``)
execute them; ``meshops agent apply --dry-run`` prints them with ``str``.
Every operation names its interface in ``interface``; ``__str__`` leaves the
interface out (a plan is about one interface) and never shows a private key:
key changes print the matching public key instead.

``WG_OPS`` are carried out by the WireGuard backend (UAPI or netlink),
``LINK_OPS`` by the link manager (addresses, routes, MTU, link state, and
IP forwarding in the interface's namespace), ``FIREWALL_OPS`` by
``reconciler.net.nftables.Nftables`` and ``ROUTING_OPS`` (the exit-node
client's policy routing) by ``reconciler.net.iproute.IPRouteLinks``.
``reconciler.converge.firewall`` plans the last two.
"""

from __future__ import annotations

from reconciler.converge.keys import public_key, short
from reconciler.model.firewall import Ruleset
from reconciler.model.routing import PolicyRule, TableRoute
from reconciler.model.wg import DesiredPeer
from reconciler.structs import Record, repr_without


def _peer_label(public_key_b64: str, name: str) -> str:
    return f"{short(public_key_b64)} ({name})" if name else short(public_key_b64)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ips(allowed_ips: tuple[str, ...]) -> str:
    return ",".join(allowed_ips) if allowed_ips else "(none)"


class CreateInterface(Record):
    """Create the WireGuard interface with its key and listen port."""

    interface: str
    listen_port: int
    private_key: str

    __repr__ = repr_without("private_key")  # never logged

    def __str__(self) -> str:
        return (
            f"create interface {self.interface} listen-port {self.listen_port} "
            f"(public {short(public_key(self.private_key))})"
        )


class SetPrivateKey(Record):
    interface: str
    private_key: str

    __repr__ = repr_without("private_key")  # never logged

    def __str__(self) -> str:
        return f"set private key (public {short(public_key(self.private_key))})"


class SetListenPort(Record):
    interface: str
    listen_port: int

    def __str__(self) -> str:
        return f"set listen-port {self.listen_port}"


class SetFwmark(Record):
    """The mark WireGuard puts on its own UDP packets (``fwmark=``; 0 clears it):
    the exit-node client's policy routing sends unmarked traffic into the
    tunnel and lets marked traffic (the tunnel itself) use the main table."""

    interface: str
    fwmark: int

    def __str__(self) -> str:
        return f"set fwmark {self.fwmark:#x}" if self.fwmark else "clear fwmark"


class SetMtu(Record):
    interface: str
    mtu: int

    def __str__(self) -> str:
        return f"set mtu {self.mtu}"


class SetLinkUp(Record):
    interface: str

    def __str__(self) -> str:
        return "set link up"


class SetForwarding(Record):
    """Turn IP forwarding on (or off) in the interface's network namespace.

    The planner only ever emits ``enabled=True`` (a relay); it never turns
    forwarding off, since the host may forward for other reasons.
    """

    interface: str
    enabled: bool = True

    def __str__(self) -> str:
        return f"set ip forwarding {'on' if self.enabled else 'off'}"


class AddAddress(Record):
    interface: str
    address: str  # interface form, "10.0.0.1/24"

    def __str__(self) -> str:
        return f"add address {self.address}"


class RemoveAddress(Record):
    interface: str
    address: str

    def __str__(self) -> str:
        return f"remove address {self.address}"


class AddRoute(Record):
    interface: str
    route: str  # network form, "192.168.5.0/24"

    def __str__(self) -> str:
        return f"add route {self.route}"


class RemoveRoute(Record):
    interface: str
    route: str

    def __str__(self) -> str:
        return f"remove route {self.route}"


class AddPeer(Record):
    """Add a peer with all its desired fields."""

    interface: str
    peer: DesiredPeer

    def __str__(self) -> str:
        p = self.peer
        text = f"add peer {_peer_label(p.public_key, p.name)} allowed-ips {_ips(p.allowed_ips)}"
        if p.endpoint is not None:
            text += f" endpoint {p.endpoint}"
        if p.keepalive:
            text += f" keepalive {p.keepalive}"
        return text


class RemovePeer(Record):
    interface: str
    public_key: str
    name: str = ""

    def __str__(self) -> str:
        return f"remove peer {_peer_label(self.public_key, self.name)}"


class UpdatePeer(Record):
    """Change only the fields that differ; ``None`` means leave as is.

    ``allowed_ips`` is the complete new list (backends replace, never patch).
    """

    interface: str
    public_key: str
    allowed_ips: tuple[str, ...] | None = None
    endpoint: str | None = None
    keepalive: int | None = None
    name: str = ""

    def __str__(self) -> str:
        parts = [f"update peer {_peer_label(self.public_key, self.name)}"]
        if self.allowed_ips is not None:
            parts.append(f"allowed-ips {_ips(self.allowed_ips)}")
        if self.endpoint is not None:
            parts.append(f"endpoint {self.endpoint}")
        if self.keepalive is not None:
            parts.append(f"keepalive {self.keepalive}")
        return " ".join(parts)


class ReplaceFirewall(Record):
    """Replace the ``inet meshops`` nftables table with ``ruleset`` in one
    transaction (``EMPTY`` deletes it). ``why`` says what differed."""

    interface: str
    ruleset: Ruleset
    why: str = ""

    def __str__(self) -> str:
        if self.ruleset.empty:
            text = "remove firewall table inet meshops"
        else:
            rs = self.ruleset
            text = (f"replace firewall table inet meshops ({_count(rs.statements, 'statement')}, "
                    f"{_count(len(rs.sets), 'set')}, {_count(rs.elements, 'set element')})")
        return f"{text}: {self.why}" if self.why else text


class AddPolicyRule(Record):
    interface: str
    rule: PolicyRule

    def __str__(self) -> str:
        return f"add {self.rule}"


class RemovePolicyRule(Record):
    interface: str
    rule: PolicyRule

    def __str__(self) -> str:
        return f"remove {self.rule}"


class AddTableRoute(Record):
    interface: str
    route: TableRoute

    def __str__(self) -> str:
        return f"add {self.route}"


class RemoveTableRoute(Record):
    interface: str
    route: TableRoute

    def __str__(self) -> str:
        return f"remove {self.route}"


Operation = (
    CreateInterface
    | SetPrivateKey
    | SetListenPort
    | SetMtu
    | SetLinkUp
    | SetForwarding
    | AddAddress
    | RemoveAddress
    | AddRoute
    | RemoveRoute
    | AddPeer
    | RemovePeer
    | UpdatePeer
    | ReplaceFirewall
    | AddPolicyRule
    | RemovePolicyRule
    | AddTableRoute
    | RemoveTableRoute
)

WG_OPS = (CreateInterface, SetPrivateKey, SetListenPort, SetFwmark, AddPeer, RemovePeer,
          UpdatePeer)
LINK_OPS = (SetMtu, SetLinkUp, SetForwarding, AddAddress, RemoveAddress, AddRoute, RemoveRoute)
FIREWALL_OPS = (ReplaceFirewall,)
ROUTING_OPS = (AddPolicyRule, RemovePolicyRule, AddTableRoute, RemoveTableRoute)
