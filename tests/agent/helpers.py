"""Fakes and builders for the agent's unit tests (no root, no sockets).

* ``Org``: an org signing key, its pinned trust bytes, and signed manifests;
* ``FakeFetch``: URL -> body/exception, with ETag and call records;
* ``FakeBackend``: applies plan operations to an in-memory
  ``ObservedInterface`` with ``reconciler.converge.simulate`` (the planner's own
  model of wireguard-go), counts apply calls, can inject drift and failures.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from reconciler.agent.config import AgentConfig
from reconciler.agent.fetch import Response
from reconciler.converge import simulate
from reconciler.errors import FetchError
from reconciler.fsio import atomic_write
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.wg import ABSENT, ObservedInterface
from reconciler.pki.envelope import trust_entry
from reconciler.pki.manifest import encode_manifest, sign_manifest
from reconciler.structs import replace

NOW = 1_763_800_000.0
FP = "A" * 43


def wg_keypair(seed: int) -> tuple[str, str]:
    """Deterministic X25519 pair (base64 private, public) from a small seed."""
    raw = bytes([seed]) * 32
    key = X25519PrivateKey.from_private_bytes(raw)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


def device(name: str, seed: int, ip: str, **kw: Any) -> ManifestDevice:
    kw.setdefault("tunnel_ips", (ip,))
    return ManifestDevice(name=name, wireguard_public_key=wg_keypair(seed)[1],
                          cert_sha256=FP, **kw)


class Org:
    def __init__(self, name: str = "acme", key_seed: int = 7) -> None:
        self.name = name
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([key_seed]) * 32)
        self.trust = json.dumps(
            {"orgs": {name: trust_entry([self.key.public_key()], None)}}).encode()

    def manifest(self, devices: Sequence[ManifestDevice], *, serial: int = 1,
                 commit: str = "c0ffee" * 6 + "abcd", now: float = NOW,
                 lifetime: int = 7 * 86400, cidr_v6: str | None = None,
                 **kw: Any) -> Manifest:
        return Manifest(org=self.name, serial=serial, commit=commit, issued_at=int(now),
                        not_after=int(now) + lifetime, cidr_v4="10.77.0.0/24", cidr_v6=cidr_v6,
                        listen_port=51820, keepalive=25, devices=tuple(devices), **kw)

    def sign(self, manifest: Manifest) -> bytes:
        return sign_manifest(encode_manifest(manifest), self.key)


@dataclass
class FakeFetch:
    """``bodies`` maps URL -> bytes or an exception to raise."""

    bodies: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    posts: list[tuple[str, Any]] = field(default_factory=list)
    resets: int = 0
    closed: int = 0

    def get(self, url: str, *, etag: str | None = None, wait: int | None = None,
            params: Any = None, kind: str = "manifest") -> Response:
        self.calls.append((url, etag, wait))
        body = self.bodies.get(url, FetchError(f"{url}: connection refused"))
        if isinstance(body, Exception):
            raise body
        tag = f'"{len(body)}-{hash(body) & 0xffff:x}"'
        if etag == tag:
            return Response(304, b"", tag)
        return Response(200, body, tag)

    def post_json(self, url: str, obj: Any) -> Any:
        self.posts.append((url, obj))
        return {"accepted": True}

    def reset_tls(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed += 1


class FakeBackend:
    """In-memory interface; ``apply`` uses the planner's simulator."""

    def __init__(self, observed: ObservedInterface = ABSENT) -> None:
        self.state = observed
        self.applied: list[tuple[Any, ...]] = []
        self.observes = 0
        self.closed = False
        self.lose: set[str] = set()  # peer public keys that "refuse" to be added

    def observe(self, name: str) -> ObservedInterface:
        self.observes += 1
        if not self.state.exists:
            return ObservedInterface(name=name, exists=False)
        return self.state

    def apply(self, ops: Sequence[Any]) -> None:
        self.applied.append(tuple(ops))
        state = simulate(self.state, ops)
        if self.lose:
            state = replace(state, peers={k: v for k, v in state.peers.items()
                                          if k not in self.lose})
        # a real link comes up with the MTU it was given
        self.state = state

    def close(self) -> None:
        self.closed = True


def write_agent(tmp: Path, org: Org, *, name: str = "alpha", seed: int = 1,
                manifest_url: str | None = None, hub: str | None = None,
                **kw: Any) -> AgentConfig:
    """Key files (0600), pinned trust and an AgentConfig under ``tmp``."""
    private, _ = wg_keypair(seed)
    atomic_write(tmp / "wireguard.key", (private + "\n").encode(), mode=0o600)
    atomic_write(tmp / "identity.key", b"unused in unit tests\n", mode=0o600)
    atomic_write(tmp / "trust.json", org.trust)
    if manifest_url is None and hub is None:
        manifest_url = f"file://{tmp}/pub/{org.name}/manifest.json"
    kw.setdefault("stun_servers", ("203.0.113.250:3478",))  # discovery itself is a fake
    return AgentConfig(org=org.name, name=name, trust=str(tmp / "trust.json"),
                       private_key=str(tmp / "wireguard.key"),
                       identity_key=str(tmp / "identity.key"), manifest_url=manifest_url,
                       hub=hub, state_dir=str(tmp / "state"), **kw).validate()
