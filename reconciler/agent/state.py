"""The agent's state directory (default ``/var/lib/meshops``), all atomic writes.

Files:

- ``manifest.dsse``: the last *verified* manifest envelope, byte for byte
  (fail-static: re-applied when the hub is unreachable, until it expires);
- ``manifest.meta.json``: its serial, commit, not_after and ETag (the
  rollback floor and the ``If-None-Match`` value);
- ``applied.json``: what the last converged pass applied (serial, commit, and
  per peer name / tunnel IPs / path), read by ``agent status``;
- ``peering.json``: the peering hysteresis state, kept across one-shot runs;
- ``feed.json``: the last endpoint feed seen;
- ``discovery.json``: this device's own endpoints (STUN, LAN, NAT mapping);
- ``device.crt``, ``hub-ca.pem``: the device certificate (fetched from the
  hub, public) and the org CA from the pinned trust, for mTLS to the hub.

Unreadable or corrupt files count as absent (the next pass rewrites them),
except that a corrupt rollback floor is never silently lowered: it is an error.
Called by ``agent.reconcile``, ``agent.status`` and the CLI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.agent.config import atomic_write
from reconciler.errors import ConfigError

MANIFEST = "manifest.dsse"
META = "manifest.meta.json"
APPLIED = "applied.json"
PEERING = "peering.json"
FEED = "feed.json"
DISCOVERY = "discovery.json"
DEVICE_CERT = "device.crt"
HUB_CA = "hub-ca.pem"


@dataclass(frozen=True)
class CachedManifest:
    envelope: bytes
    serial: int
    commit: str
    not_after: int
    etag: str | None = None


class StateDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / name).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        self.ensure()
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        atomic_write(self.path / name, text.encode(), mode=0o600)

    # -- the verified manifest (fail-static cache and rollback floor) --------
    def last_serial(self) -> int:
        meta_path = self.path / META
        if not meta_path.exists():
            return 0
        meta = self._json(META)
        if meta is None or not isinstance(meta.get("serial"), int):
            raise ConfigError(
                f"{meta_path}: corrupt; it holds the rollback floor, so it is not ignored "
                "(delete it only if you trust the next manifest)"
            )
        return int(meta["serial"])

    def load_manifest(self) -> CachedManifest | None:
        meta = self._json(META)
        try:
            envelope = (self.path / MANIFEST).read_bytes()
        except OSError:
            return None
        if meta is None or not isinstance(meta.get("serial"), int):
            return None
        return CachedManifest(envelope, int(meta["serial"]), str(meta.get("commit", "")),
                              int(meta.get("not_after", 0)), meta.get("etag"))

    def save_manifest(self, cached: CachedManifest) -> None:
        self.ensure()
        # envelope first: the meta (serial) must never point at an older envelope
        atomic_write(self.path / MANIFEST, cached.envelope, mode=0o600)
        self._write_json(META, {"serial": cached.serial, "commit": cached.commit,
                                "not_after": cached.not_after, "etag": cached.etag})

    # -- the applied state, the peering state, the feed revision -------------
    def load_applied(self) -> dict[str, Any] | None:
        return self._json(APPLIED)

    def save_applied(self, summary: dict[str, Any]) -> None:
        if self._json(APPLIED) != summary:  # a no-op pass writes nothing
            self._write_json(APPLIED, summary)

    def load_peering(self) -> dict[str, Any]:
        return self._json(PEERING) or {}

    def save_peering(self, data: dict[str, Any]) -> None:
        if self._json(PEERING) != data:
            self._write_json(PEERING, data)

    def load_feed(self) -> dict[str, Any] | None:
        return self._json(FEED)

    def save_feed(self, data: dict[str, Any]) -> None:
        if self._json(FEED) != data:
            self._write_json(FEED, data)

    def load_discovery(self) -> dict[str, Any] | None:
        return self._json(DISCOVERY)

    def save_discovery(self, data: dict[str, Any]) -> None:
        if self._json(DISCOVERY) != data:
            self._write_json(DISCOVERY, data)

    def write_if_changed(self, name: str, data: bytes, mode: int = 0o644) -> bool:
        """Atomically replace ``name`` when its content differs; True if written."""
        path = self.path / name
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
        self.ensure()
        atomic_write(path, data, mode=mode)
        return True
