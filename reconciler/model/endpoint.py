"""``Endpoint``: one ``host:port`` value type for the whole project.

Every place that reads or writes a WireGuard endpoint, a STUN server, a
candidate address or a listen address goes through ``Endpoint.parse`` and
``str(endpoint)``, so one set of rules holds everywhere:

* IPv6 literals are bracketed, ``[2001:db8::1]:51820``; an unbracketed IPv6
  text is ambiguous and refused;
* zone ids (``fe80::1%eth0``) are refused: a zone names an interface of the
  sender, meaningless to anyone else it is signed to or reported to;
* the port is a decimal integer 1-65535 (ASCII digits only);
* the host is an IP literal (kept in canonical text, ``2001:DB8::01`` ->
  ``2001:db8::1``) or, where ``allow_names`` is set (static endpoints in git,
  a hub URL), a DNS name of letters, digits, ``-`` and ``.``.

Pure and stdlib only; ``EndpointError`` (a ``ValueError``) says what is
wrong, and its ``reason`` says which rule failed (``syntax``, ``zone-id``,
``port``). Called by the agent (peering, desired state, reports), the
planner, the backends, the hub (feed, API, daemon, TLS names) and the config
checks.

``unroutable_reason(ip)`` / ``is_routable_unicast(ip)`` is the one address-class
policy for anything a device claims as a place to send WireGuard traffic to
(the hub's report and reflection checks, ``reconciler.hub.claims``): global or
private unicast only. Refused, with the reason returned:

* ``unspecified``: ``0.0.0.0/8`` ("this network", RFC 1122 3.2.1.3), ``::``;
* ``loopback``: ``127.0.0.0/8``, ``::1``;
* ``link-local``: ``169.254.0.0/16`` (cloud metadata ``169.254.169.254``
  included), ``fe80::/10``;
* ``multicast``: ``224.0.0.0/4``, ``ff00::/8``;
* ``broadcast``: ``255.255.255.255`` (a subnet's directed broadcast cannot be
  told from a host address without the prefix, so it is not caught here);
* ``reserved``: ``240.0.0.0/4`` (class E), ``fec0::/10`` (deprecated
  site-local, RFC 3879), ``::/96`` (deprecated IPv4-compatible, RFC 4291
  2.5.5.1), ``100::/64`` (discard-only, RFC 6666);
* an IPv4-mapped (``::ffff:0:0/96``) or NAT64 (``64:ff9b::/96``, RFC 6052)
  address is judged by the IPv4 address inside it: ``[::ffff:127.0.0.1]:22``
  reaches loopback through a dual-stack socket.

Accepted on purpose: private ranges (``10/8``, ``172.16/12``, ``192.168/16``,
``fc00::/7``: LAN candidates), shared address space ``100.64.0.0/10`` (RFC
6598, carrier-grade NAT: devices behind the same carrier reach each other on
it, and it is as unicast as ``10/8``), the documentation ranges
(``192.0.2.0/24``, ``198.51.100.0/24``, ``203.0.113.0/24``, ``2001:db8::/32``:
the lab's "internet") and every other unicast range.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from reconciler.structs import Record

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


class EndpointError(ValueError):
    """A malformed endpoint text; ``reason`` is ``syntax``, ``zone-id`` or ``port``."""

    def __init__(self, message: str, reason: str = "syntax") -> None:
        super().__init__(message)
        self.reason = reason


class Endpoint(Record, order=True):
    host: str  # canonical IP literal, or a DNS name
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_names: bool = False) -> Endpoint:
        """``"1.2.3.4:5"``, ``"[2001:db8::1]:5"`` (and ``"host:5"`` with
        ``allow_names``) -> ``Endpoint``; ``ValueError`` otherwise."""
        if not isinstance(text, str):
            # ValueError on purpose: callers treat every malformed peer input alike
            raise EndpointError(f"endpoint must be a string, not {type(text).__name__}")
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise EndpointError(f"{text!r}: an IPv6 endpoint is written [address]:port")
            ip = _ip(host, text)
            if ip.version != 6:
                raise EndpointError(f"{text!r}: brackets are for IPv6 addresses only")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or not host:
                raise EndpointError(f"{text!r}: an endpoint is written host:port")
            if ":" in host:
                raise EndpointError(f"{text!r}: write an IPv6 endpoint as [address]:port")
            if _CANONICAL_V4.match(host):  # the common case, without ipaddress
                return cls(host, _port(port, text))
            try:
                ip = _ip(host, text)
            except EndpointError as exc:
                if exc.reason == "zone-id":
                    raise
                if not allow_names or not _NAME.match(host) or host.replace(".", "").isdigit():
                    raise EndpointError(f"{text!r}: {host!r} is not an IP address") from None
                return cls(host.lower().rstrip("."), _port(port, text))
        return cls(str(ip), _port(port, text))

    @classmethod
    def of(cls, ip: str | IPAddress, port: int) -> Endpoint:
        """An endpoint from an address and a port (the address is checked)."""
        text = str(ip)
        return cls(str(_ip(text, text)), _port(str(port), f"{text} port {port}"))

    @property
    def ip(self) -> IPAddress | None:
        """The host as an address, or None for a DNS name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def is_literal(self) -> bool:
        return canonical_v4(self.host) is not None or self.ip is not None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")  # ASCII digits only


_CANONICAL_PORT = (r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                   r"|655[0-2][0-9]|6553[0-5])")
_CANONICAL_V4_ENDPOINT = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}:{_CANONICAL_PORT}\Z")


def is_canonical_v4_endpoint(text: str | None) -> bool:
    """True when ``text`` is an IPv4 ``ip:port`` exactly as ``str(Endpoint.parse(text))``
    writes it (the common case at 10,000 peers: no parsing needed)."""
    return isinstance(text, str) and _CANONICAL_V4_ENDPOINT.match(text) is not None


def canonical_v4(text: str) -> str | None:
    """``text`` when it is an IPv4 address in canonical dotted-quad form (ASCII
    digits, no leading zeros, each part 0-255), else None: a fast check for the
    hot path (10,000 peers); anything else goes through ``ipaddress``."""
    return text if _CANONICAL_V4.match(text) else None


def parse_or_none(text: str | None, *, allow_names: bool = False) -> Endpoint | None:
    """``Endpoint.parse`` for data that may be absent or malformed (peer input
    already validated elsewhere): None instead of an error. Results are
    cached (``Endpoint`` is frozen): a pass at 10,000 peers reads each peer's
    endpoint text in several places."""
    if not text or not isinstance(text, str):
        return None  # Endpoint.parse refuses a non-string too
    return _parse_or_none(text, allow_names)


@functools.lru_cache(maxsize=1 << 16)
def _parse_or_none(text: str, allow_names: bool) -> Endpoint | None:
    try:
        return Endpoint.parse(text, allow_names=allow_names)
    except ValueError:
        return None


def host_of(text: str) -> str:
    """The host of an endpoint text, or the text itself when it is a bare
    address (``"1.2.3.4"``, ``"2001:db8::1"``)."""
    try:
        return Endpoint.parse(text, allow_names=True).host
    except ValueError:
        return text


_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# (network, reason), most specific first: the first match decides.
_UNROUTABLE: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), reason) for net, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "reserved"),
        ("100::/64", "reserved"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved"),
        ("ff00::/8", "multicast"),
    )
)


def unroutable_reason(ip: IPAddress) -> str | None:
    """Why no peer may be told to send to ``ip`` (``loopback``, ``multicast``...;
    the module docstring has the list), or None for global or private unicast."""
    if ip.version == 6 and (ip in _IPV4_MAPPED or ip in _NAT64):
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return unroutable_reason(inner)
    for net, reason in _UNROUTABLE:
        if ip.version == net.version and ip in net:
            return reason
    return None


def is_routable_unicast(ip: IPAddress) -> bool:
    """True for a global or private unicast address (``unroutable_reason`` is None)."""
    return unroutable_reason(ip) is None


def _ip(text: str, whole: str) -> IPAddress:
    if "%" in text:
        raise EndpointError(f"{whole!r}: zone ids (%...) are not allowed in endpoints", "zone-id")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(f"{whole!r}: {text!r} is not an IP address") from None


def _port(text: str, whole: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise EndpointError(f"{whole!r}: the port must be a number from 1 to 65535", "port")
    return int(text)
