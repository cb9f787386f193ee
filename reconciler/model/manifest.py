"""The signed per-org peer manifest, as data.

Built by ``reconciler.pki.manifest`` from a validated ``OrgState``, serialized
as canonical JSON (see ``schemas/manifest.schema.json``), verified by agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from reconciler.structs import Record, field


class ManifestDevice(Record):
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


class Manifest(Record, dict=True):
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
    # mesh.yaml's hub_url and stun_servers, signed with the rest so agents can trust
    # them; reconciler.agent.meshconfig.effective_endpoints merges them with the
    # agent's own config. None / () when the hub did not set them.
    hub_url: str | None = None
    stun_servers: tuple[str, ...] = ()
    # The newest trust-root version the hub published when it signed this manifest
    # (reconciler.pki.root); None for an org without roots/ (legacy trust.json).
    root_version: int | None = None

    @cached_property
    def _by_name(self) -> Mapping[str, ManifestDevice]:
        # built once per manifest (``dict=True``: cached_property keeps it in __dict__)
        return {d.name: d for d in self.devices}

    def device(self, name: str) -> ManifestDevice | None:
        """The device called ``name``, by index: no scan per lookup."""
        return self._by_name.get(name)
