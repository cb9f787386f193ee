"""The agent's own configuration file and the atomic-write helper.

``meshops agent init`` writes an ``AgentConfig`` as JSON (default
``/etc/meshops/agent.json``); every other ``meshops agent`` command loads it
with ``load_config``. ``atomic_write`` (temp file, fsync, rename, fsync of the
directory) is used for the config, the keys and everything in the state dir,
so a crash or power loss never leaves a half-written file behind.

Stdlib only: this module is on the import path of every ``agent apply``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.fsio import atomic_write  # re-exported: agent.state and agent.keys use it

DEFAULT_CONFIG_PATH = "/etc/meshops/agent.json"
DEFAULT_STATE_DIR = "/var/lib/meshops"
BACKENDS = ("userspace", "kernel")
IFNAME_MAX = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)


def default_interface(org: str) -> str:
    """``mo-<org>`` cut to the kernel's 15-character limit.

    wireguard-go keeps its UAPI socket in ``/run/wireguard/<if>.sock``, and
    ``/run`` is shared by every network namespace, so the name must be unique
    per host: pass ``--interface`` when two agents of one org share a host.
    """
    return f"mo-{org}"[:IFNAME_MAX]


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs to know; paths are absolute."""

    org: str
    name: str
    trust: str  # pinned trust anchors (trust.json)
    private_key: str  # WireGuard X25519 private key file (base64, 0600)
    identity_key: str  # Ed25519 identity key file (PKCS#8 PEM, 0600)
    hub: str | None = None  # hub base URL, e.g. https://hub.example.net:8443
    manifest_url: str | None = None  # file:// or http(s):// when there is no hub
    backend: str = "userspace"
    interface: str = ""
    netns: str | None = None  # run the interface inside this namespace (lab, tests)
    state_dir: str = DEFAULT_STATE_DIR
    listen_port: int | None = None  # overrides the org default
    stun_servers: tuple[str, ...] | None = None  # overrides mesh.yaml's list
    discover: bool = False  # run STUN discovery before binding the port
    tls_cert: str | None = None  # device certificate (mTLS to the hub)
    tls_key: str | None = None  # key of the device certificate (the identity key)
    tls_ca: str | None = None  # CA bundle to verify the hub; None = system store
    interval: float = 30.0  # `agent run`: seconds between passes
    jitter: float = 0.1  # fraction of the interval, uniformly random
    long_poll: int = 55  # `agent run` against a hub: ?wait=N seconds
    timeout: float = 10.0  # HTTP timeout; a long-poll read waits ``wait`` + min(timeout, 2 s)
    max_backoff: float = 300.0
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    hysteresis: Mapping[str, float] = field(default_factory=dict)  # peering timers (lab)

    def __post_init__(self) -> None:
        if not self.interface:
            object.__setattr__(self, "interface", default_interface(self.org))

    @property
    def source_url(self) -> str:
        """Where the manifest comes from: ``manifest_url``, else the hub's API."""
        if self.manifest_url:
            return self.manifest_url
        assert self.hub is not None  # validate() guarantees one of them
        return f"{self.hub.rstrip('/')}/v1/orgs/{self.org}/manifest"

    @property
    def feed_url(self) -> str | None:
        return f"{self.hub.rstrip('/')}/v1/orgs/{self.org}/endpoints" if self.hub else None

    def state_path(self, name: str) -> Path:
        return Path(self.state_dir) / name

    def validate(self) -> AgentConfig:
        """Raise ``ConfigError`` naming the field when the config cannot work."""
        if not self.org or not self.name:
            raise ConfigError("agent config: 'org' and 'name' are required")
        if bool(self.hub) == bool(self.manifest_url):
            raise ConfigError("agent config: set exactly one of 'hub' and 'manifest_url'")
        url = self.source_url
        if not url.startswith(("file://", "http://", "https://")):
            raise ConfigError(
                f"agent config: manifest URL {url!r} must start with file://, http:// or https://"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"agent config: backend {self.backend!r} is not one of {', '.join(BACKENDS)}"
            )
        if len(self.interface) > IFNAME_MAX or "/" in self.interface or " " in self.interface:
            raise ConfigError(
                f"agent config: interface name {self.interface!r} is not a valid Linux "
                f"interface name (at most {IFNAME_MAX} characters, no '/' or spaces)"
            )
        if self.listen_port is not None and not 0 < self.listen_port < 65536:
            raise ConfigError(f"agent config: listen_port {self.listen_port} is out of range")
        if self.interval <= 0 or not 0 <= self.jitter < 1:
            raise ConfigError("agent config: need interval > 0 and 0 <= jitter < 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backend_options"] = dict(self.backend_options)
        data["hysteresis"] = dict(self.hysteresis)
        if self.stun_servers is not None:
            data["stun_servers"] = list(self.stun_servers)
        return {k: v for k, v in data.items() if v is not None}


def config_from_dict(data: Mapping[str, Any], *, where: str = "agent config") -> AgentConfig:
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = dict(data)
    if values.get("stun_servers") is not None:
        values["stun_servers"] = tuple(values["stun_servers"])
    try:
        config = AgentConfig(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from exc
    return config.validate()


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate the agent config; ``ConfigError`` names the file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no agent config; run `meshops agent init` or pass --config"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent config: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the agent config must be a JSON object")
    return config_from_dict(data, where=str(path))


def save_config(config: AgentConfig, path: str | os.PathLike[str]) -> None:
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(path, text.encode(), mode=0o644)


def read_private_key(path: str) -> str:
    """The base64 WireGuard private key from ``path``; refuses world/group access."""
    try:
        st = os.stat(path)
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the WireGuard private key: {exc.strerror}"
        ) from exc
    if st.st_mode & 0o077:
        raise ConfigError(f"{path}: private key file is readable by others; chmod 600 it")
    if len(text) != 44 or not text.endswith("="):
        raise ConfigError(f"{path}: not a base64 WireGuard private key (44 characters)")
    return text
