"""The signed per-org peer manifest, as data.

Built by ``reconciler.pki.manifest`` from a validated ``OrgState``, serialized
as canonical JSON (see ``schemas/manifest.schema.json``), verified by agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ManifestDevice:
    name: str
    wireguard_public_key: str
    tunnel_ips: tuple[str, ...]
    cert_sha256: str
    routes: tuple[str, ...] = ()
    relay: bool = False
    endpoint: str | None = None
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # compiled policy membership (owner, groups); see policy
    keepalive: int | None = None
    exit_node: bool = False
    use_exit_node: str | None = None  # the exit node this device routes its default through
    masquerade_routes: bool = True  # a subnet router masquerades towards its routes


@dataclass(frozen=True)
class Manifest:
    org: str
    serial: int
    commit: str
    issued_at: int  # unix seconds
    not_after: int  # unix seconds
    cidr_v4: str
    cidr_v6: str | None
    listen_port: int
    keepalive: int
    devices: tuple[ManifestDevice, ...]
    policy: Mapping[str, Any] | None = None  # compiled policy; None = full mesh
    revoked: tuple[int, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def device(self, name: str) -> ManifestDevice | None:
        for d in self.devices:
            if d.name == name:
                return d
        return None
