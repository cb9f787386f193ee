"""The agent's own configuration file.

``meshops agent init`` writes an ``AgentConfig`` as JSON (default
``/etc/meshops/agent.json``) with ``reconciler.fsio.atomic_write``, as the
keys and the state dir are written, so a crash or power loss never leaves a
half-written file behind; every other ``meshops agent`` command loads it with
``load_config``.

Stdlib only: this module is on the import path of every ``agent apply``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import ConfigError, InputRefused
from reconciler.fsio import atomic_write
from reconciler.structs import Record, as_dict, field, field_names, force_setattr

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


class AgentConfig(Record):
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
    max_clock_skew: float = 300.0  # a manifest issued further in the future is refused
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    hysteresis: Mapping[str, float] = field(default_factory=dict)  # peering timers (lab)
    # rotate the WireGuard key through the hub once it is this many days old
    # (agent.keyage decides, agent.autorotate acts); None: only by hand
    key_rotation_days: int | None = None

    def __post_init__(self) -> None:
        if not self.interface:
            force_setattr(self, "interface", default_interface(self.org))

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

    def validate(self, *, where: str = "agent config") -> AgentConfig:
        """Raise ``ConfigError`` listing every field that cannot work, one line each:
        ``WHERE: field: what is wrong (fix)``."""
        found = problems(self.to_dict())
        if found:
            raise ConfigError("\n".join(f"{where}: {p}" for p in found))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = as_dict(self)
        data["backend_options"] = dict(self.backend_options)
        data["hysteresis"] = dict(self.hysteresis)
        if self.stun_servers is not None:
            data["stun_servers"] = list(self.stun_servers)
        return {k: v for k, v in data.items() if v is not None}


# -- typed loading ------------------------------------------------------------
# Every field's type and range, checked on the raw JSON before the dataclass is
# built, so a wrong type is a message naming the field, never a traceback later.
MAX_CONFIG_BYTES = 1024 * 1024
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # DNS label, as in the manifest
_REQUIRED = ("org", "name", "trust", "private_key", "identity_key")
_PATHS = ("trust", "private_key", "identity_key", "state_dir")
_OPTIONAL_PATHS = ("tls_cert", "tls_key", "tls_ca")
# seconds: (field, lowest allowed (exclusive when the flag is set), highest)
_SECONDS = (("interval", 0.0, True, 86400.0), ("timeout", 0.0, True, 300.0),
            ("max_backoff", 1.0, False, 86400.0), ("max_clock_skew", 0.0, False, 86400.0))
LONG_POLL_MAX = 300  # the hub's longest ?wait= (hub.api.MAX_WAIT)
MAX_STUN_SERVERS = 16
KEY_ROTATION_DAYS_MAX = 3650
# What each backend's constructor takes from JSON (reconciler.backends); netns,
# links and state_dir are set by the agent itself.
BACKEND_OPTIONS: Mapping[str, Mapping[str, type]] = {
    "userspace": {"run_dir": str, "state_dir": str, "wireguard_go": str,
                  "start_timeout": float},
    "kernel": {},
}
# agent.peering.HysteresisConfig's fields (a test keeps the two in agreement)
HYSTERESIS_FIELDS = ("stale_after", "establish_timeout", "retry_initial", "retry_max",
                     "stable_after")


def _kind(value: Any) -> str:
    """How a JSON value reads to a person: 'the string "30"', 'a list', ..."""
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value!r}"[:60]
    return {dict: "an object", list: "a list", tuple: "a list"}.get(type(value), "a value")


def _number(value: Any) -> float | None:
    """``value`` as a finite number (JSON int or float, not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _seconds(name: str, value: Any, low: float, open_low: bool, high: float) -> str | None:
    number = _number(value)
    bound = f"{'>' if open_low else '>='} {low:g} and <= {high:g}"
    if number is None:
        quoted = isinstance(value, str) and _number(_try_float(value)) is not None
        fix = f"write {value} without quotes" if quoted else f"use a number {bound}"
        return f"{name}: {_kind(value)} is not a number of seconds ({fix})"
    if (number <= low if open_low else number < low) or number > high:
        return f"{name}: {value!r} is out of range (use a number {bound})"
    return None


def _try_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _path(name: str, value: Any, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        return f"{name}: {_kind(value)} is not a file path (use an absolute path string)"
    if "\0" in value or not value.startswith("/"):
        return f"{name}: {value[:80]!r} is not an absolute path (start it with /)"
    return None


def _url(name: str, value: Any, schemes: tuple[str, ...]) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{name}: {_kind(value)} is not a URL (use {' or '.join(schemes)} URLs)"
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        return (f"{name}: {value[:80]!r} must start with "
                f"{', '.join(s + '://' for s in schemes)}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return f"{name}: {value[:80]!r} is not a local file URL (use file:///abs/path)"
        return None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or port == 0 or any(c.isspace() for c in value):
        return f"{name}: {value[:80]!r} is not a valid URL (use {parts.scheme}://host[:port])"
    return None


def _ifname(value: Any) -> str | None:
    # the kernel's dev_valid_name(): not "." or "..", no "/", ":" or whitespace
    if not isinstance(value, str):
        return f"interface: {_kind(value)} is not an interface name (use a string)"
    if value == "":
        return None  # the default, mo-<org>
    if len(value) > IFNAME_MAX or value in (".", "..") or any(
            c in "/:" or c.isspace() or not c.isprintable() for c in value):
        return (f"interface: {value[:40]!r} is not a valid Linux interface name (at most "
                f"{IFNAME_MAX} characters, no '/', ':' or spaces)")
    return None


def _stun_servers(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        return [f'stun_servers: {_kind(value)} is not a list (use ["host:port", ...])']
    out = []
    if len(value) > MAX_STUN_SERVERS:
        out.append(f"stun_servers: {len(value)} servers, more than {MAX_STUN_SERVERS} "
                   "(discovery uses the first two distinct ones)")
    for i, item in enumerate(value[:MAX_STUN_SERVERS]):
        if not isinstance(item, str) or not _is_host_port(item):
            out.append(f"stun_servers[{i}]: {_kind(item)} is not a STUN server "
                       "(use host, host:port or [v6]:port)")
    return out


def _is_host_port(text: str) -> bool:
    if not text or len(text) > 255 or any(c.isspace() or not c.isprintable() for c in text):
        return False
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("3478" if not rest else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "3478"
    return bool(host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536


def _backend_options(backend: Any, value: Any) -> list[str]:
    if not isinstance(value, Mapping):
        example = '{"wireguard_go": "/usr/bin/wireguard-go", ...}'
        return [f"backend_options: {_kind(value)} is not an object (use {example})"]
    allowed = BACKEND_OPTIONS.get(backend) if isinstance(backend, str) else None
    if allowed is None:
        return []  # the backend itself is reported
    out = []
    for key in sorted(value, key=str):
        want = allowed.get(key) if isinstance(key, str) else None
        item = value[key]
        if want is None:
            known = ", ".join(sorted(allowed)) or "none"
            out.append(f"backend_options: {str(key)[:40]!r} is not an option of the "
                       f"{backend} backend (known: {known})")
        elif want is str and (not isinstance(item, str) or not item):
            out.append(f"backend_options.{key}: {_kind(item)} is not a string "
                       "(use a non-empty string)")
        elif want is float and ((n := _number(item)) is None or n <= 0 or n > 600):
            out.append(f"backend_options.{key}: {_kind(item)} is not a number of "
                       "seconds (use a number > 0 and <= 600)")
    return out


def _hysteresis(value: Any) -> list[str]:
    if not isinstance(value, Mapping):
        example = '{"stale_after": 180, ...}'
        return [f"hysteresis: {_kind(value)} is not an object (use {example}, in seconds)"]
    out = []
    for key in sorted(value, key=str):
        if key not in HYSTERESIS_FIELDS:
            out.append(f"hysteresis: {str(key)[:40]!r} is not a timer (known: "
                       f"{', '.join(HYSTERESIS_FIELDS)})")
            continue
        n = _number(value[key])
        if n is None or n <= 0 or n > 7 * 86400:
            out.append(f"hysteresis.{key}: {_kind(value[key])} is not a number of seconds "
                       "(use a number > 0 and <= 604800)")
    return out


def _key_rotation_days(value: Any, hub: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 < value <= KEY_ROTATION_DAYS_MAX:
        hint = " (write it without quotes)" if isinstance(value, str) and value.isdigit() \
            else f" (use 1-{KEY_ROTATION_DAYS_MAX}, or leave it out to rotate by hand)"
        return [f"key_rotation_days: {_kind(value)} is not a whole number of days{hint}"]
    if hub is None:
        # a static manifest has no hub to commit the new key: the setting could never act
        return [("key_rotation_days: needs a hub (`hub` in the agent config); with a "
                 "static manifest, rotate by hand: put the new public key into the device "
                 "file (remove key_rotation_days)")]
    return []


def problems(data: Mapping[str, Any]) -> list[str]:
    """Every problem of a raw agent config (the JSON object), ``field: what (fix)``;
    empty when the config can work. Pure: no file is opened."""
    known = set(field_names(AgentConfig))
    out = [f"{str(k)[:40]!r}: unknown field (remove it; known fields are in "
           "docs/operations.md)" for k in sorted(set(data) - known, key=str)]
    for name in _REQUIRED:
        if data.get(name) is None:
            out.append(f"{name}: missing (required; `meshops agent init` writes it)")
    for name in ("org", "name"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not _LABEL.fullmatch(value)):
            out.append(f"{name}: {_kind(value)} is not a DNS label (lower-case letters, "
                       "digits and '-', at most 63)")
    for name in _PATHS:  # a missing required one is reported above
        if data.get(name) is not None or (name == "state_dir" and name in data):
            out.extend(p for p in [_path(name, data[name], optional=False)] if p)
    for name in _OPTIONAL_PATHS:
        out.extend(p for p in [_path(name, data.get(name), optional=True)] if p)
    hub, manifest_url = data.get("hub"), data.get("manifest_url")
    if (hub is None) == (manifest_url is None):
        out.append("hub, manifest_url: set exactly one (a hub base URL, or a manifest URL)")
    if hub is not None:
        out.extend(p for p in [_url("hub", hub, ("https", "http"))] if p)
    if manifest_url is not None:
        out.extend(p for p in [_url("manifest_url", manifest_url,
                                    ("file", "https", "http"))] if p)
    backend = data.get("backend", "userspace")
    if backend not in BACKENDS:
        out.append(f"backend: {_kind(backend)} is not a backend (use one of "
                   f"{', '.join(BACKENDS)})")
    out.extend(p for p in [_ifname(data.get("interface", ""))] if p)
    netns = data.get("netns")
    if netns is not None and (not isinstance(netns, str) or not netns or len(netns) > 255
                              or "/" in netns or netns in (".", "..")):
        out.append(f"netns: {_kind(netns)} is not a network namespace name (a name "
                   "under /run/netns, no '/')")
    port = data.get("listen_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        hint = " (write it without quotes)" if isinstance(port, str) and port.isdigit() \
            else " (use 1-65535, or leave it out for the org's port)"
        out.append(f"listen_port: {_kind(port)} is not a UDP port{hint}")
    for name, low, open_low, high in _SECONDS:
        if name in data:
            out.extend(p for p in [_seconds(name, data[name], low, open_low, high)] if p)
    jitter = _number(data.get("jitter", 0.1))
    if jitter is None or not 0 <= jitter < 1:
        out.append(f"jitter: {_kind(data.get('jitter'))} is not a fraction (use a number "
                   ">= 0 and < 1)")
    poll = data.get("long_poll", 55)
    if isinstance(poll, bool) or not isinstance(poll, int) or not 0 <= poll <= LONG_POLL_MAX:
        out.append(f"long_poll: {_kind(poll)} is not a whole number of seconds (use 0-"
                   f"{LONG_POLL_MAX})")
    if not isinstance(data.get("discover", False), bool):
        out.append(f"discover: {_kind(data.get('discover'))} is not true or false")
    out.extend(_stun_servers(data.get("stun_servers")))
    out.extend(_key_rotation_days(data.get("key_rotation_days"), hub))
    out.extend(_backend_options(backend, data.get("backend_options", {})))
    out.extend(_hysteresis(data.get("hysteresis", {})))
    return out


def config_from_dict(data: Mapping[str, Any], *, where: str = "agent config") -> AgentConfig:
    """Check every field (``problems``) and build the ``AgentConfig``; a
    ``ConfigError`` lists each problem as ``WHERE: field: what is wrong (fix)``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the agent config must be a JSON object")
    found = problems(data)
    if found:
        raise ConfigError("\n".join(f"{where}: {p}" for p in found))
    values = dict(data)
    if values.get("stun_servers") is not None:
        values["stun_servers"] = tuple(values["stun_servers"])
    for name, *_ in _SECONDS:
        if name in values:
            values[name] = float(values[name])
    if "jitter" in values:
        values["jitter"] = float(values["jitter"])
    values["backend_options"] = dict(values.get("backend_options", {}))
    values["hysteresis"] = {k: float(v) for k, v in values.get("hysteresis", {}).items()}
    return AgentConfig(**values)


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate the agent config; ``ConfigError`` names the file and field."""
    try:
        with open(path, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{path}: not a regular file (point --config at the "
                                  "agent.json file)")
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no agent config; run `meshops agent init` or pass --config"
        ) from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory (point --config at the agent.json "
                          "file)") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent config: {exc.strerror}") from exc
    try:
        data = bounded_loads(raw, what=str(path), max_bytes=MAX_CONFIG_BYTES, max_depth=8)
    except InputRefused as exc:
        raise ConfigError(f"{exc} (the agent config is a small JSON object; "
                          "`meshops agent init --force` rewrites it)") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the agent config must be a JSON object, not "
                          f"{_kind(data)}")
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
