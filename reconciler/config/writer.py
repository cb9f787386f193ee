"""Write a new device file: the engine behind ``meshops device add``.

Called by ``reconciler.cli.plan``. ``add_device`` loads the working tree
(which must already be valid), refuses duplicate names and keys, allocates the
lowest free tunnel addresses with ``allocate.next_free`` (IPv4, plus IPv6 when
the org has a ``cidr_v6``), renders ``orgs/ORG/devices/NAME.yaml`` in a stable
layout and loads the repository again. The file appears atomically (written
to a hidden temp file, fsynced, then hard-linked into place, which also
refuses to overwrite), and is removed again if the repository does not
validate with it, so a failed run leaves nothing behind.

The YAML is rendered here rather than dumped by pyyaml, so the layout is fixed
(key order, block lists) and every scalar that a YAML 1.1 or 1.2 reader could
take for something other than a string is double-quoted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import Problem, UsageError, ValidationError
from reconciler.model.repo import Device, OrgState

from .allocate import next_free
from .loader import LoadResult
from .loader import load as load_repo

Loader = Callable[[Path], LoadResult]

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/+=@-]*\Z")
_IPV4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}\Z")
_IPV6 = re.compile(r"(?=[^:]*:)[0-9A-Fa-f:]*(::|[A-Fa-f])[0-9A-Fa-f:]*\Z")  # never YAML 1.1 sexagesimal
_KEY = re.compile(r"[A-Za-z0-9+/]{43}=\Z")
_ENDPOINT = re.compile(r"([A-Za-z][A-Za-z0-9.-]*|[0-9]{1,3}(\.[0-9]{1,3}){3}):[0-9]{1,5}\Z")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


@dataclass(frozen=True)
class NewDevice:
    """What ``meshops device add`` was asked for."""

    org: str
    name: str
    wireguard_key: str
    identity_key: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    relay: bool = False
    endpoint: str | None = None
    description: str = ""
    expires: str | None = None  # 2027-01-31T00:00:00Z (hub enrollment: org lifetime)


@dataclass(frozen=True)
class AddedDevice:
    path: Path  # absolute path of the new file
    rel_path: str  # orgs/ORG/devices/NAME.yaml
    owner: str
    tunnel_ips: tuple[str, ...]
    expires: str | None = None


def scalar(text: str) -> str:
    """A YAML scalar for ``text``: plain when unambiguous, else JSON-quoted
    (JSON strings are valid YAML double-quoted scalars)."""
    if _PLAIN.match(text) and text.lower() not in _YAML11_WORDS:
        return text
    if any(p.match(text) for p in (_IPV4, _IPV6, _KEY, _ENDPOINT)):
        return text
    return json.dumps(text)


def render_device(device: Device) -> str:
    """The file text for ``device``, fields in schema order, defaults left out."""
    lines = [
        "kind: Device",
        f"name: {scalar(device.name)}",
        f"owner: {scalar(device.owner)}",
    ]
    if device.description:
        lines.append(f"description: {json.dumps(device.description)}")
    lines += [
        "wireguard:",
        f"  public_key: {scalar(device.wireguard_public_key)}",
        "identity:",
        f"  public_key: {scalar(device.identity_public_key)}",
        "tunnel_ips:",
        *(f"  - {scalar(ip)}" for ip in device.tunnel_ips),
    ]
    if device.tags:
        lines.append(f"tags: [{', '.join(scalar(t) for t in device.tags)}]")
    if device.relay:
        lines.append("relay: true")
    if device.endpoint:
        lines.append(f"endpoint: {scalar(device.endpoint)}")
    if device.expires:
        lines.append(f"expires: {json.dumps(device.expires)}")
    return "\n".join(lines) + "\n"


def _check_request(req: NewDevice, state: OrgState, rel: str) -> list[Problem]:
    problems = []
    existing = state.devices.get(req.name)
    if existing is not None:
        problems.append(Problem(existing.source.file, 1, "E-DUP-NAME",
                                f"device {req.name!r} already exists in org {req.org!r}",
                                "pick another name, or edit the existing file"))
    for field, key, label in (
        ("wireguard.public_key", req.wireguard_key, "WireGuard"),
        ("identity.public_key", req.identity_key, "identity"),
    ):
        for other in state.devices.values():
            if key in (other.wireguard_public_key, other.identity_public_key):
                problems.append(Problem(
                    other.source.file, other.source.line(field), "E-DUP-KEY",
                    f"{label} key of {req.name!r} is already used by device {other.name!r}",
                    "generate fresh keys on the new device (meshops agent init)"))
    if req.wireguard_key == req.identity_key:
        problems.append(Problem(rel, 1, "E-DUP-KEY",
                                "the WireGuard and identity keys must differ",
                                "pass the identity key printed by meshops agent init"))
    return problems


def _resolve_owner(req: NewDevice, state: OrgState) -> str:
    owner = req.owner
    if owner is None:
        if not state.organization.owners:
            raise UsageError(f"org {req.org!r} lists no owners; pass --owner USER")
        owner = state.organization.owners[0]
    if owner not in state.users:
        known = ", ".join(sorted(state.users)) or "none"
        raise UsageError(f"no user {owner!r} in org {req.org!r} (users: {known})")
    return owner


def _write_new(final: Path, text: str) -> None:
    """Create ``final`` with ``text`` atomically; FileExistsError if it exists."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, final)  # fails instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)


def default_expiry(state: OrgState, now: float) -> str | None:
    """``now`` plus the org's ``defaults.device_lifetime_days``, as RFC 3339 UTC."""
    days = state.organization.defaults.device_lifetime_days
    if not days:
        return None
    return datetime.fromtimestamp(now + days * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_device(repo_path: str | os.PathLike[str], req: NewDevice, *,
               load: Loader = load_repo, now: float | None = None) -> AddedDevice:
    """Allocate addresses for ``req``, write its file and prove the repo still loads.

    Without ``req.expires``, a device of an org with ``device_lifetime_days``
    expires that many days after ``now`` (when ``now`` is given).

    Raises ``UsageError`` for bad arguments (unknown org or owner, bad name,
    relay without endpoint), ``ValidationError`` when the repository is invalid
    before or after, on duplicates, or when the CIDR is full."""
    if not DNS_LABEL.match(req.name):
        raise UsageError(f"device name {req.name!r} is not a DNS label "
                         "(lowercase letters, digits and '-', at most 63)")
    if not DNS_LABEL.match(req.org):
        raise UsageError(f"org name {req.org!r} is not a DNS label")
    if req.relay and not req.endpoint:
        raise UsageError("a relay needs a static endpoint: pass --endpoint HOST:PORT")
    root = Path(repo_path)
    before = load(root)
    if before.repo is None:
        raise ValidationError(before.problems)
    state = before.repo.orgs.get(req.org)
    if state is None:
        known = ", ".join(sorted(before.repo.orgs)) or "none"
        raise UsageError(f"no org {req.org!r} in {root} (orgs: {known})")
    rel = f"orgs/{req.org}/devices/{req.name}.yaml"
    problems = _check_request(req, state, rel)
    if problems:
        raise ValidationError(problems)
    owner = _resolve_owner(req, state)
    ips = [next_free(state, 4)]
    if state.organization.cidr_v6:
        ips.append(next_free(state, 6))
    device = Device(
        name=req.name, org=req.org, owner=owner, wireguard_public_key=req.wireguard_key,
        identity_public_key=req.identity_key, tunnel_ips=tuple(ips), tags=tuple(req.tags),
        relay=req.relay, endpoint=req.endpoint, description=req.description,
        expires=req.expires or (default_expiry(state, now) if now is not None else None),
    )
    final = root / rel
    try:
        _write_new(final, render_device(device))
    except FileExistsError as exc:
        raise ValidationError([Problem(rel, 1, "E-DUP-NAME", f"{rel} already exists",
                                       "pick another device name")]) from exc
    except OSError as exc:
        raise UsageError(f"cannot write {rel}: {exc.strerror}") from exc
    after = load(root)
    if after.repo is None:
        final.unlink(missing_ok=True)
        raise ValidationError(after.problems)
    return AddedDevice(final, rel, owner, tuple(ips), device.expires)


def tags_of(values: Sequence[str] | None) -> tuple[str, ...]:
    """Deduplicate ``--tag`` values, keeping their order."""
    return tuple(dict.fromkeys(values or ()))
