"""The agent's state directory (default ``/var/lib/meshops``), all atomic writes.

Files:

- ``manifest.dsse``: the last *verified* manifest envelope, byte for byte
  (fail-static: re-applied when the hub is unreachable, until it expires);
- ``manifest.meta.json``: its serial, commit, not_after and ETag (the
  rollback floor and the ``If-None-Match`` value);
- ``applied.json``: what the last converged pass applied (serial, commit, and
  per peer name / tunnel IPs / path), read by ``agent status``;
- ``peering.json``: the peering hysteresis state, kept across one-shot runs;
- ``feed.json``: the last endpoint feed seen (manifest mode);
- ``view.json``: with a hub, this device's view (``agent.view``): the verified
  manifest restricted to what it needs plus those devices' feed entries, as
  plain JSON after a ``sha256 HEX`` line that detects corruption; its serial
  is the rollback floor in ``manifest.meta.json`` like a manifest's;
- ``discovery.json``: this device's own endpoints (STUN, LAN, NAT mapping);
- ``device.crt``, ``hub-ca.pem``: the device certificate (fetched from the
  hub, public) and the org CA from the pinned trust, for mTLS to the hub.

Typed loading: every JSON file is read within bounds (size, nesting depth,
via ``reconciler.boundedjson``) and checked against the shape its writer
produces (``SCHEMAS``; unknown keys are allowed, so a newer writer does not
break an older reader). A file that is unreadable, not JSON, too large, too
deep, of the wrong types, or a directory where a file should be, counts as
ABSENT and adds a warning naming it to ``StateDir.warnings`` (the pass puts
them in its report; the next save rewrites the file). A ``manifest.dsse``
that is not a DSSE envelope counts as absent the same way. The rollback
floor is never silently lowered: when ``manifest.meta.json`` is corrupt,
``last_serial`` falls back to the highest serial that ``applied.json`` or the
cached envelope still show, with a warning.

Called by ``agent.reconcile``, ``agent.status``, ``agent.render`` and the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.boundedjson import check as check_bounds
from reconciler.boundedjson import loads as bounded_loads
from reconciler.errors import InputRefused, ManifestRefused
from reconciler.fsio import atomic_write
from reconciler.pki.envelope import MAX_ENVELOPE_BYTES, Envelope, parse_envelope
from reconciler.structs import Record, json_dumps, json_dumps_sorted, repr_without

if TYPE_CHECKING:  # pki.view is imported where a view is read
    from reconciler.pki.view import HeldView

MANIFEST = "manifest.dsse"
META = "manifest.meta.json"
APPLIED = "applied.json"
PEERING = "peering.json"
FEED = "feed.json"
DISCOVERY = "discovery.json"
DEVICE_CERT = "device.crt"
HUB_CA = "hub-ca.pem"
VIEW = "view.json"
ROOT = "root.dsse"  # the newest trust root walked to (pki.root), when the org has roots

MAX_STATE_BYTES = 64 * 1024 * 1024  # feed.json of ~130,000 devices, pretty-printed
MAX_STATE_DEPTH = 16  # the deepest writer today nests 5


# -- the shapes the writers produce (a tiny schema language) --------------------
class _Opt:
    def __init__(self, inner: Any) -> None:
        self.inner = inner


class _List:
    def __init__(self, item: Any, length: int | None = None) -> None:
        self.item, self.length = item, length


class _Map:  # string keys, uniform values
    def __init__(self, value: Any) -> None:
        self.value = value


class _Obj:  # known keys typed, ``required`` present; other keys allowed
    def __init__(self, keys: Mapping[str, Any], required: tuple[str, ...] = ()) -> None:
        self.keys, self.required = keys, required


NUMBER = "number"  # int or float, not bool
_CANDIDATE = _Obj({"kind": str, "address": str}, required=("kind", "address"))
SCHEMAS: Mapping[str, Any] = {
    META: _Obj({"serial": int, "commit": str, "not_after": int, "etag": _Opt(str)},
               required=("serial",)),
    APPLIED: _Obj({
        "org": str, "device": str, "interface": str, "serial": int, "commit": str,
        "not_after": int, "member": bool, "relay": bool, "addresses": _List(str),
        "listen_port": _Opt(int),
        "peers": _List(_Obj({"name": str, "public_key": str, "tunnel_ips": _List(str),
                             "path": str, "via": _Opt(str), "endpoint": _Opt(str)},
                            required=("name", "path"))),
    }),
    PEERING: _Obj({
        "version": int,
        "paths": _Map(_Obj({"mode": str, "since": NUMBER, "failures": int,
                            "retry_at": NUMBER}, required=("mode", "since"))),
        "relays": _Map(_Obj({"since": NUMBER, "failures": int, "down_until": NUMBER},
                            required=("since",))),
        "liveness": _Map(_List(NUMBER, length=2)),
        "situation": _Map(_List(_Opt(str))),
        "changed_at": _Map(NUMBER),
    }),
    FEED: _Obj({
        "org": str, "revision": int, "generated_at": int,
        "entries": _List(_Obj({"device": str, "mapping": str, "public_ip": _Opt(str),
                               "updated_at": int, "candidates": _List(_CANDIDATE)},
                              required=("device", "mapping", "updated_at", "candidates"))),
    }, required=("org", "revision", "generated_at", "entries")),
    DISCOVERY: _Obj({"candidates": _List(_CANDIDATE), "mapping": str, "public_ip": _Opt(str),
                     "local_ip": _Opt(str), "checked": _List(str)}),
}


def schema_problem(value: Any, schema: Any, path: str = "$") -> str | None:
    """The first place where ``value`` does not have the shape ``schema``, or None."""
    if isinstance(schema, _Opt):
        return None if value is None else schema_problem(value, schema.inner, path)
    if schema == NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{path}: expected a number"
    if schema in (int, str, bool):
        ok = isinstance(value, schema) and (schema is bool or not isinstance(value, bool))
        return None if ok else f"{path}: expected {schema.__name__}"
    if isinstance(schema, _List):
        if not isinstance(value, list):
            return f"{path}: expected a list"
        if schema.length is not None and len(value) != schema.length:
            return f"{path}: expected {schema.length} items"
        for i, item in enumerate(value):
            if (problem := schema_problem(item, schema.item, f"{path}[{i}]")) is not None:
                return problem
        return None
    if not isinstance(value, dict):
        return f"{path}: expected an object"
    if isinstance(schema, _Map):
        for key, item in value.items():
            if (problem := schema_problem(item, schema.value, f"{path}.{key}")) is not None:
                return problem
        return None
    for key in schema.required:
        if key not in value:
            return f"{path}: {key} is missing"
    for key, sub in schema.keys.items():
        if key in value and (problem := schema_problem(value[key], sub,
                                                       f"{path}.{key}")) is not None:
            return problem
    return None


class CachedManifest(Record):
    envelope: bytes
    serial: int
    commit: str
    not_after: int
    etag: str | None = None
    # ``parse_envelope(envelope)``, as the state dir checked it on reading (None
    # when built elsewhere): verifying these bytes again need not re-parse them
    parsed: Envelope | None = None  # not compared, not in ``repr``

    __repr__ = repr_without("parsed")

    def _compared(self) -> tuple[bytes, int, str, int, str | None]:
        return (self.envelope, self.serial, self.commit, self.not_after, self.etag)

    def __eq__(self, other: object) -> bool:
        if type(other) is not CachedManifest:
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())


class StateDir:
    """Reads and atomic writes of the state directory. Every ``load_*`` returns
    None (or empty) for a missing or corrupt file; ``warnings`` collects, per
    instance and without repeats, one line per corrupt file found."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _warn(self, name: str, problem: str) -> None:
        text = (f"{self.path / name}: {problem}; treated as absent (the agent rewrites it)")
        if text not in self.warnings:
            self.warnings.append(text)

    def _read(self, name: str, max_bytes: int) -> bytes | None:
        """The file's bytes, at most ``max_bytes``; None (and a warning unless it
        simply does not exist) otherwise."""
        path = self.path / name
        try:
            with open(path, "rb", opener=_nonblocking) as fh:
                if not _regular(fh.fileno()):
                    self._warn(name, "not a regular file")
                    return None
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            self._warn(name, "a directory where a file should be")
            return None
        except OSError as exc:
            self._warn(name, f"unreadable ({exc.strerror})")
            return None
        if len(data) > max_bytes:
            self._warn(name, f"over the limit of {max_bytes} bytes")
            return None
        return data

    def _json(self, name: str, *, typed_by_reader: bool = False) -> dict[str, Any] | None:
        """``name`` parsed within bounds and checked against ``SCHEMAS`` — unless
        ``typed_by_reader``: the caller's own typed reader checks every field
        anyway (``agent.memory.Memory.parse``, ``endpoints.feed_from_dict``),
        and at 10,000 peers the generic check costs half a second."""
        raw = self._read(name, MAX_STATE_BYTES)
        if raw is None:
            return None
        try:
            data = bounded_loads(raw, what=name, max_bytes=MAX_STATE_BYTES,
                                 max_depth=MAX_STATE_DEPTH)
        except InputRefused as exc:
            self._warn(name, f"corrupt ({exc})")
            return None
        problem = schema_problem(data, SCHEMAS[name]) if name in SCHEMAS and \
            not typed_by_reader else (None if isinstance(data, dict) else "$: expected an object")
        if problem is not None:
            self._warn(name, f"wrong types ({problem})")
            return None
        assert isinstance(data, dict)
        return data

    def _write(self, name: str, data: bytes, mode: int) -> None:
        self.ensure()
        path = self.path / name
        if path.is_dir() and not path.is_symlink():
            # a directory in a file's place cannot be replaced by rename(2); moved
            # aside (not deleted: it is not ours to judge) so the state heals
            aside = path.with_name(f"{name}.corrupt-{time.time_ns()}")
            os.rename(path, aside)
            self.warnings.append(f"{path}: a directory where a file should be; moved to "
                                 f"{aside.name}")
        atomic_write(path, data, mode=mode)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write(name, _dump(data), 0o600)

    def _save_json(self, name: str, data: dict[str, Any], *, presorted: bool = False) -> None:
        """Write ``name`` only when its bytes would change: a no-op pass writes
        nothing, and compares text instead of parsing the old file again.
        ``presorted``: every dict in ``data`` was built with its keys in sorted
        order, so the encoder need not sort them (the same bytes, faster)."""
        text = _dump(data, presorted=presorted)
        path = self.path / name
        try:
            if path.is_file() and not path.is_symlink() and path.read_bytes() == text:
                return
        except OSError:
            pass
        self._write(name, text, 0o600)

    # -- the verified manifest (fail-static cache and rollback floor) --------
    def last_serial(self) -> int:
        """The rollback floor: the serial of the last manifest saved. When
        ``manifest.meta.json`` is corrupt, the highest serial that ``applied.json``
        or the cached envelope shows (0 when none does), with a warning."""
        if not (self.path / META).exists() and not (self.path / META).is_symlink():
            return 0
        meta = self._json(META)
        if meta is not None:
            return int(meta["serial"])
        applied = self._json(APPLIED)
        floor = max(int(applied.get("serial", 0)) if applied else 0, self._envelope_serial())
        text = (f"{self.path / META}: the rollback floor was recovered as serial {floor} "
                f"from {APPLIED} and {MANIFEST}"
                + ("" if floor else "; none found: only expiry limits replays"))
        if text not in self.warnings:
            self.warnings.append(text)
        return floor

    def _envelope(self) -> tuple[bytes, Envelope] | None:
        """``manifest.dsse`` and its parse when it is a DSSE envelope; None (+
        warning) otherwise."""
        envelope = self._read(MANIFEST, MAX_ENVELOPE_BYTES)
        if envelope is None:
            return None
        try:
            return envelope, parse_envelope(envelope, what=MANIFEST)
        except ManifestRefused as exc:
            self._warn(MANIFEST, f"not a DSSE envelope ({exc})")
            return None

    def _envelope_serial(self) -> int:
        """The serial inside the cached envelope (it verified when it was saved)."""
        read = self._envelope()
        if read is None:
            return 0
        try:
            payload = read[1].payload
            serial = bounded_loads(payload, what=MANIFEST,
                                   max_bytes=len(payload) or 1).get("serial", 0)
        except (ManifestRefused, InputRefused, AttributeError):
            return 0
        return serial if isinstance(serial, int) and not isinstance(serial, bool) else 0

    def load_manifest(self) -> CachedManifest | None:
        """The cached envelope and its meta; None when either is missing or corrupt
        (a corrupt envelope must not pose as the content of the floor's serial)."""
        meta = self._json(META)
        read = self._envelope()
        if meta is None or read is None:
            return None
        return CachedManifest(read[0], int(meta["serial"]), str(meta.get("commit", "")),
                              int(meta.get("not_after", 0)), meta.get("etag"), parsed=read[1])

    def save_manifest(self, cached: CachedManifest) -> None:
        # envelope first: the meta (serial) must never point at an older envelope
        self._write(MANIFEST, cached.envelope, 0o600)
        self._write_json(META, {"serial": cached.serial, "commit": cached.commit,
                                "not_after": cached.not_after, "etag": cached.etag})

    # -- the per-device view (agent.view) ------------------------------------
    def load_view(self, org: str, device: str) -> HeldView | None:
        """``view.json`` when intact and for this org and device; None (+ a
        warning when the file exists but is corrupt or someone else's)."""
        raw = self._read(VIEW, MAX_STATE_BYTES)
        if raw is None:
            return None
        head, _, body = raw.partition(b"\n")
        if head != b"sha256 " + hashlib.sha256(body).hexdigest().encode():
            self._warn(VIEW, "its SHA-256 line does not match (corrupt)")
            return None
        from reconciler.pki.view import HeldView  # views come with a hub only

        try:
            held = HeldView.from_dict(bounded_loads(body, what=VIEW, max_bytes=MAX_STATE_BYTES,
                                                    max_depth=MAX_STATE_DEPTH), check=False)
            held.feed_model()  # KeyError/TypeError here too on a file of the wrong shape
        except (InputRefused, TypeError, KeyError, ValueError, AttributeError) as exc:
            self._warn(VIEW, f"wrong types ({exc})")
            return None
        if held.org != org or held.device not in (device, "*"):
            self._warn(VIEW, f"a view of {held.org}/{held.device}, not of {org}/{device}")
            return None
        return held

    def save_view(self, held: HeldView) -> None:
        """The view (envelope of the floor: ``view.json`` first, then the meta)."""
        body = json.dumps(held.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        self._write(VIEW, b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body,
                    0o600)
        manifest = held.manifest
        self._write_json(META, {"serial": held.serial, "commit": str(manifest["commit"]),
                                "not_after": int(manifest["not_after"]), "etag": None})

    # -- the applied state, the peering state, the feed revision -------------
    def load_applied(self) -> dict[str, Any] | None:
        return self._json(APPLIED)

    def save_applied(self, summary: dict[str, Any], *, presorted: bool = False) -> None:
        self._save_json(APPLIED, summary, presorted=presorted)  # a no-op pass writes nothing

    def load_peering(self) -> dict[str, Any]:
        return self._json(PEERING, typed_by_reader=True) or {}

    def load_peering_bytes(self) -> bytes | None:
        """``peering.json``'s bytes within the size and nesting bounds, for
        ``agent.memory.Memory.decode`` to read and type; None when absent or
        refused (with a warning)."""
        raw = self._read(PEERING, MAX_STATE_BYTES)
        if raw is None:
            return None
        try:
            check_bounds(raw, what=PEERING, max_bytes=MAX_STATE_BYTES, max_depth=MAX_STATE_DEPTH)
        except InputRefused as exc:
            self._warn(PEERING, f"corrupt ({exc})")
            return None
        return raw

    def save_peering(self, data: dict[str, Any]) -> None:
        self._save_json(PEERING, data)

    def load_feed(self) -> dict[str, Any] | None:
        return self._json(FEED, typed_by_reader=True)

    def save_feed(self, data: dict[str, Any]) -> None:
        self._save_json(FEED, data)

    def load_discovery(self) -> dict[str, Any] | None:
        return self._json(DISCOVERY)

    def save_discovery(self, data: dict[str, Any]) -> None:
        self._save_json(DISCOVERY, data)

    def write_if_changed(self, name: str, data: bytes, mode: int = 0o644) -> bool:
        """Atomically replace ``name`` when its content differs; True if written."""
        path = self.path / name
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
        self._write(name, data, mode)
        return True


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)  # a FIFO must not block the read


def _regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


__all__ = ["APPLIED", "DEVICE_CERT", "DISCOVERY", "FEED", "HUB_CA", "MANIFEST", "META",
           "PEERING", "SCHEMAS", "VIEW", "CachedManifest", "StateDir", "schema_problem"]


def _dump(data: dict[str, Any], *, presorted: bool = False) -> bytes:
    """Compact JSON, keys sorted unless ``presorted`` (``structs``: msgspec's
    encoder, ~10x the standard library's at 10,000 peers; ``indent`` would
    fall back to the pure-Python one, ~0.8 s for a 10,000-peer memory)."""
    if presorted:  # written in the order given (agent.decide builds it sorted)
        return json_dumps(data) + b"\n"
    return json_dumps_sorted(data) + b"\n"
