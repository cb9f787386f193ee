"""The org repository as validated data.

Built by ``reconciler.config.loader``; read by policy, pki, hub and the plan
diff. Every object keeps its ``Source`` (file and per-field line numbers) so
later checks can point at ``file:line``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property

# PortRange and Rule live in model.rules (the agent imports them alone), re-exported here
from reconciler.model.rules import PortRange, Rule  # noqa: F401


@dataclass(frozen=True)
class Source:
    """Where an object came from. ``lines`` maps a dotted field path
    (``"wireguard.public_key"``, ``"tunnel_ips.1"``) to its 1-based line."""

    file: str
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    blob: str = field(default="", compare=False, hash=False)

    def line(self, path: str = "") -> int:
        """Line of ``path``, else of its nearest parent, else 1."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return self.lines.get("", 1)


NO_SOURCE = Source("<memory>")


@dataclass(frozen=True)
class Mesh:
    hub_url: str
    stun_servers: tuple[str, ...] = ()
    cert_lifetime_days: int = 30
    cert_renew_fraction: float = 2 / 3
    manifest_lifetime_days: int = 7
    rotation_overlap_days: int = 7  # meshops ca rotate: old and new keys both trusted
    pgp_recipients: tuple[str, ...] = ()
    require_signed_commits: bool = False
    admins: tuple[str, ...] = ()  # PGP fingerprints of mesh administrators (the commit gate)
    source: Source = NO_SOURCE


@dataclass(frozen=True)
class OrgDefaults:
    listen_port: int = 51820
    keepalive: int = 25
    device_lifetime_days: int | None = None  # enrollment writes expires = now + this


@dataclass(frozen=True)
class Enrollment:
    """``organization.yaml`` ``enrollment:``: the OpenID provider for ``agent enroll``.
    ``auto_approve_roles`` empty: every enrollment is a branch for review."""

    issuer: str
    client_id: str
    auto_approve_roles: tuple[str, ...] = ()
    max_devices_per_user: int | None = None


@dataclass(frozen=True)
class Organization:
    name: str
    cidr_v4: str
    cidr_v6: str | None = None
    owners: tuple[str, ...] = ()
    defaults: OrgDefaults = OrgDefaults()
    description: str = ""
    source: Source = NO_SOURCE
    enrollment: Enrollment | None = None


ROLES = ("owner", "admin", "member")


@dataclass(frozen=True)
class User:
    name: str
    org: str
    email: str
    oidc_issuer: str
    oidc_subject: str
    role: str = "member"
    pgp_fingerprint: str | None = None
    source: Source = NO_SOURCE
    disabled: bool = False


@dataclass(frozen=True)
class Device:
    name: str
    org: str
    owner: str
    wireguard_public_key: str
    identity_public_key: str
    tunnel_ips: tuple[str, ...]
    tags: tuple[str, ...] = ()
    relay: bool = False
    endpoint: str | None = None
    routes: tuple[str, ...] = ()
    exit_node: bool = False
    keepalive: int | None = None
    description: str = ""
    disabled: bool = False
    source: Source = NO_SOURCE
    use_exit_node: str | None = None  # name of an exit node of the org this device routes through
    masquerade_routes: bool = True  # False: forward to ``routes`` keeping mesh source addresses
    expires: str | None = None  # as written: 2027-01-31 or 2027-01-31T12:00:00Z

    @property
    def expires_at(self) -> float | None:
        """``expires`` as unix seconds (None: never, or unreadable; validation
        reports the unreadable ones)."""
        return parse_expiry(self.expires) if self.expires else None

    def expired(self, now: float) -> bool:
        at = self.expires_at
        return at is not None and at <= now


def parse_expiry(text: str) -> float | None:
    """``2027-01-31`` (00:00 UTC) or an RFC 3339 time with its zone -> unix
    seconds; None when it is not a real date or time."""
    try:
        if "T" not in text:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(),
                                    UTC).timestamp()
        when = datetime.fromisoformat(text)  # 3.11+ reads a trailing Z
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


PROTOS = ("tcp", "udp", "icmp", "any")


@dataclass(frozen=True)
class Group:
    name: str
    users: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyTest:
    src: str
    dst: str
    proto: str
    port: int | None
    expect: str  # "accept" | "deny"
    index: int = 0


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, Group] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    source: Source = NO_SOURCE


@dataclass(frozen=True)
class OrgState:
    """One organization with everything under ``orgs/<org>/``."""

    organization: Organization
    users: Mapping[str, User] = field(default_factory=dict)
    devices: Mapping[str, Device] = field(default_factory=dict)
    policy: Policy | None = None  # None: full mesh
    ca_cert_pem: str | None = None  # orgs/<org>/ca.crt, when present
    # orgs/<org>/roots/N.json, the signed trust-root envelopes: roots[i] is version
    # i + 1 (the loader refuses a gap); empty for a repository without roots/
    roots: tuple[bytes, ...] = ()

    @property
    def name(self) -> str:
        return self.organization.name

    def enabled_devices(self) -> tuple[Device, ...]:
        """Enabled devices sorted by name; computed once per (immutable) org state,
        since publish, the policy compiler and the manifest builder all ask."""
        return self._enabled

    @cached_property
    def _enabled(self) -> tuple[Device, ...]:
        # cached_property writes the instance __dict__ directly, so it works on a
        # frozen dataclass
        return tuple(d for _, d in sorted(self.devices.items()) if not d.disabled)


@dataclass(frozen=True)
class Repo:
    mesh: Mesh
    orgs: Mapping[str, OrgState] = field(default_factory=dict)
    commit: str | None = None
