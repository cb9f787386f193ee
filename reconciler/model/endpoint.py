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

Pure and stdlib only; ``ValueError`` says what is wrong. Called by the
agent (peering, desired state, reports), the planner, the backends, the hub
(feed, API, daemon) and the config checks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str  # canonical IP literal, or a DNS name
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_names: bool = False) -> Endpoint:
        """``"1.2.3.4:5"``, ``"[2001:db8::1]:5"`` (and ``"host:5"`` with
        ``allow_names``) -> ``Endpoint``; ``ValueError`` otherwise."""
        if not isinstance(text, str):
            # ValueError on purpose: callers treat every malformed peer input alike
            raise ValueError(f"endpoint must be a string, not {type(text).__name__}")  # noqa: TRY004
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r}: an IPv6 endpoint is written [address]:port")
            ip = _ip(host, text)
            if ip.version != 6:
                raise ValueError(f"{text!r}: brackets are for IPv6 addresses only")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r}: an endpoint is written host:port")
            if ":" in host:
                raise ValueError(f"{text!r}: write an IPv6 endpoint as [address]:port")
            try:
                ip = _ip(host, text)
            except ValueError:
                if not allow_names or not _NAME.match(host) or host.replace(".", "").isdigit():
                    raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
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
        return self.ip is not None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_or_none(text: str | None, *, allow_names: bool = False) -> Endpoint | None:
    """``Endpoint.parse`` for data that may be absent or malformed (peer input
    already validated elsewhere): None instead of an error."""
    if not text:
        return None
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


def _ip(text: str, whole: str) -> IPAddress:
    if "%" in text:
        raise ValueError(f"{whole!r}: zone ids (%...) are not allowed in endpoints")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{whole!r}: {text!r} is not an IP address") from None


def _port(text: str, whole: str) -> int:
    if not _PORT.match(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port must be a number from 1 to 65535")
    return int(text)
