"""Per-org manifests: build, canonical JSON, sign, verify.

Called by the hub publisher (``build_manifest``, ``encode_manifest``,
``sign_manifest``) and by the agent and ``meshops manifest verify``
(``verify_manifest``). The agent imports this module on every run, so it does
not import jsonschema: ``check_manifest_dict`` is a small hand check that
mirrors ``schemas/manifest.schema.json`` (tests keep the two in agreement).

JSON form (keys sorted, compact, UTF-8)::

    {"cidr_v4": "10.9.0.0/16", "cidr_v6": "fd00:9::/48", "commit": "<sha>",
     "devices": [{"name": "laptop-7", "wg": "<base64>", "ips": ["10.9.0.7"],
                  "fp": "<sha256 of cert DER, base64url>", "tags": [...], ...}],
     "hub_url": "https://hub.example.com:8443",
     "issued_at": 1763776800, "keepalive": 25, "listen_port": 51820,
     "not_after": 1764381600, "org": "acme", "policy": {...},
     "revoked": [123, ...], "serial": 1763776800000,
     "stun_servers": ["203.0.113.1:3478", ...], "version": 1,
     "root_version": 3}

``root_version`` is the newest trust root the hub had published (signed with
the rest, so an agent knows which root to walk to); it is left out for an org
without ``orgs/ORG/roots/`` (legacy trust.json). During a rotation's overlap
``sign_manifest`` gets both manifest keys and the envelope carries two
signatures (``pki.envelope.sign_envelope_multi``).

``hub_url`` and ``stun_servers`` are mesh.yaml's, passed in by the publisher,
so agents learn them under the org's signature; each is left out when unset.

Per device, defaults and empty fields are left out (``relay``/``exit`` only
when true, ``use_exit`` only when the device's file sets ``use_exit_node``,
``keep_sources`` only when ``masquerade_routes`` is false,
``tags``/``labels``/``routes`` only when non-empty, ``endpoint`` and
``keepalive`` only when set) to keep the manifest near 150 bytes per device.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.errors import ManifestRefused, Problem, ValidationError
from reconciler.model.endpoint import canonical_v4
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.pki.envelope import (
    Envelope,
    OrgTrust,
    Trust,
    load_trust,
    open_envelope,
    sign_envelope,
    sign_envelope_multi,
)

if TYPE_CHECKING:  # the hub builds manifests from the repository model; agents only verify
    from reconciler.model.repo import Mesh, OrgState

MANIFEST_TYPE = "application/vnd.meshops.manifest+json"
FORMAT_VERSION = 1

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_WG = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_FP = re.compile(r"^[A-Za-z0-9_-]{43}$")
_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
# Checks use fullmatch: "$" alone also matches before a trailing newline. The schema's
# patterns end in "(?![\s\S])" (no character follows) for the same reason, in both the
# ECMA-262 and the Python regex dialects.
_TOP_REQUIRED = (
    "version", "org", "serial", "commit", "issued_at", "not_after",
    "cidr_v4", "listen_port", "keepalive", "devices",
)  # fmt: skip
_TOP_OPTIONAL = ("cidr_v6", "policy", "revoked", "extra", "hub_url", "stun_servers",
                 "root_version")
# Same shape as mesh.schema.json's hub_url; fullmatch, so no trailing newline slips in.
_HUB_URL = re.compile(r"https?://[^\s/]+\S*")
_DEV_REQUIRED = ("name", "wg", "ips", "fp")
_DEV_OPTIONAL = ("routes", "relay", "endpoint", "tags", "labels", "keepalive", "exit",
                 "use_exit", "keep_sources")


@functools.cache
def _key_sets(required: tuple[str, ...], optional: tuple[str, ...]
              ) -> tuple[frozenset[str], frozenset[str]]:
    """``_keys``' sets (the keys needed, the keys allowed), built once per shape."""
    return frozenset(required), frozenset(required + optional)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def next_serial(now: float, last_serial: int | None) -> int:
    """Strictly increasing even after state loss: max(issued_at in ms, last + 1)."""
    return max(int(now * 1000), (last_serial or 0) + 1)


def build_manifest(
    org_state: OrgState,
    *,
    commit: str,
    serial: int,
    now: float,
    lifetime_s: int,
    cert_fingerprints: Mapping[str, str],
    revoked: Iterable[int] = (),
    compiled: Any = None,
    entries: MutableMapping[str, tuple[Any, str, tuple[str, ...], ManifestDevice]] | None = None,
    mesh: Mesh | None = None,
    root_version: int | None = None,
) -> Manifest:
    """The manifest for one org. Devices without a fingerprint (no cert) are left
    out, and so are devices whose ``expires`` is at or before ``now`` (the hub
    also revokes their certificates: ``config.expiry.without_expired``).

    ``compiled`` is a precomputed ``CompiledPolicy`` (the publisher caches it);
    by default ``reconciler.policy.compile_policy(org_state)`` is called.
    ``entries`` memoizes ``ManifestDevice`` objects by device name across calls.
    ``mesh`` (``Repo.mesh``) gives ``hub_url`` and ``stun_servers``, signed into
    the manifest as they are (order kept: it is the order agents try). A value
    agents would refuse raises ``ValidationError`` naming mesh.yaml's line:
    the hub never signs a manifest that every agent would then refuse."""
    if mesh is not None:
        problems = mesh_endpoint_problems(mesh)
        if problems:
            raise ValidationError(problems)
    if compiled is None:
        from reconciler.policy import compile_policy

        compiled = compile_policy(org_state)
    org = org_state.organization
    devices = []
    for d in org_state.enabled_devices():
        fp = cert_fingerprints.get(d.name)
        if fp is None or d.expired(now):  # an expired device is out, as a disabled one
            continue
        labels = tuple(compiled.labels(d.name))
        memo = entries.get(d.name) if entries is not None else None
        if memo is not None and memo[0] is d and memo[1] == fp and memo[2] == labels:
            devices.append(memo[3])
            continue
        entry = ManifestDevice(
            name=d.name,
            wireguard_public_key=d.wireguard_public_key,
            tunnel_ips=tuple(d.tunnel_ips),
            cert_sha256=fp,
            routes=tuple(d.routes),
            relay=d.relay,
            endpoint=d.endpoint,
            tags=tuple(d.tags),
            labels=labels,
            keepalive=d.keepalive,
            exit_node=d.exit_node,
            use_exit_node=d.use_exit_node,
            masquerade_routes=d.masquerade_routes,
        )
        if entries is not None:
            entries[d.name] = (d, fp, labels, entry)
        devices.append(entry)
    issued = int(now)
    return Manifest(
        org=org.name,
        serial=serial,
        commit=commit,
        issued_at=issued,
        not_after=issued + int(lifetime_s),
        cidr_v4=org.cidr_v4,
        cidr_v6=org.cidr_v6,
        listen_port=org.defaults.listen_port,
        keepalive=org.defaults.keepalive,
        devices=tuple(devices),
        policy=compiled.as_dict(),
        revoked=tuple(sorted(set(revoked))),
        hub_url=(mesh.hub_url or None) if mesh is not None else None,
        stun_servers=tuple(mesh.stun_servers) if mesh is not None else (),
        root_version=root_version,
    )


def tag_labels_used(policy: Mapping[str, Any] | None) -> frozenset[str]:
    """The ``t:TAG`` labels the compiled policy's rules mention."""
    used: set[str] = set()
    rules = policy.get("rules") if isinstance(policy, Mapping) else None
    for rule in rules if isinstance(rules, list) else ():
        if isinstance(rule, Mapping):
            for side in ("src", "dst"):
                sel = rule.get(side)
                if isinstance(sel, list):
                    used.update(x for x in sel if isinstance(x, str) and x.startswith("t:"))
    return frozenset(used)


def _implied(tags: Iterable[str], used: frozenset[str]) -> set[str]:
    return {f"t:{t}" for t in tags} & used


def device_to_dict(d: ManifestDevice, used: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One device's JSON. Tag labels that ``tags`` and the policy imply are left out
    of ``labels`` (``manifest_from_dict`` puts them back), when ``labels`` is canonical
    (sorted, unique, as ``compile_policy`` makes it)."""
    labels = list(d.labels)
    if labels and labels == sorted(set(labels)):
        implied = _implied(d.tags, used)
        labels = [lab for lab in labels if lab not in implied]
    out: dict[str, Any] = {
        "name": d.name,
        "wg": d.wireguard_public_key,
        "ips": list(d.tunnel_ips),
        "fp": d.cert_sha256,
    }
    if d.routes:
        out["routes"] = list(d.routes)
    if d.relay:
        out["relay"] = True
    if d.endpoint:
        out["endpoint"] = d.endpoint
    if d.tags:
        out["tags"] = list(d.tags)
    if labels:
        out["labels"] = labels
    if d.keepalive is not None:
        out["keepalive"] = d.keepalive
    if d.exit_node:
        out["exit"] = True
    if d.use_exit_node:
        out["use_exit"] = d.use_exit_node
    if not d.masquerade_routes:
        out["keep_sources"] = True
    return out


def top_to_dict(m: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "org": m.org,
        "serial": m.serial,
        "commit": m.commit,
        "issued_at": m.issued_at,
        "not_after": m.not_after,
        "cidr_v4": m.cidr_v4,
        "listen_port": m.listen_port,
        "keepalive": m.keepalive,
    }
    if m.cidr_v6:
        out["cidr_v6"] = m.cidr_v6
    if m.policy is not None:
        out["policy"] = m.policy
    if m.revoked:
        out["revoked"] = list(m.revoked)
    if m.extra:
        out["extra"] = dict(m.extra)
    if m.hub_url:
        out["hub_url"] = m.hub_url
    if m.stun_servers:
        out["stun_servers"] = list(m.stun_servers)
    if m.root_version is not None:
        out["root_version"] = m.root_version
    return out


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    out = top_to_dict(m)
    used = tag_labels_used(m.policy)
    out["devices"] = [device_to_dict(d, used) for d in m.devices]
    return out


FragmentCache = MutableMapping[str, tuple[frozenset[str], ManifestDevice, bytes]]


def encode_manifest(m: Manifest, fragments: FragmentCache | None = None) -> bytes:
    """``canonical_json(manifest_to_dict(m))``, reusing per-device JSON fragments.

    The hub keeps ``fragments`` (device name -> (tag labels used, device, JSON))
    across publishes, so an unchanged device costs a dict lookup and two identity
    checks. Output is byte-identical to the plain form (tested)."""
    used = tag_labels_used(m.policy)
    frags = []
    for d in m.devices:
        memo = fragments.get(d.name) if fragments is not None else None
        if memo is not None and (memo[1] is d or memo[1] == d) and memo[0] == used:
            frags.append(memo[2])
            continue
        frag = canonical_json(device_to_dict(d, used))
        if fragments is not None:
            fragments[d.name] = (used, d, frag)
        frags.append(frag)
    top = top_to_dict(m)
    top["devices"] = None
    parts = []
    for key in sorted(top):
        value = b"[" + b",".join(frags) + b"]" if key == "devices" else canonical_json(top[key])
        parts.append(canonical_json(key) + b":" + value)
    return b"{" + b",".join(parts) + b"}"


class SchemaViolation(ValueError):
    """A manifest dict does not match schemas/manifest.schema.json (path and problem)."""


def _fail(path: str, problem: str) -> None:
    raise SchemaViolation(f"{path}: {problem}")


def _int(v: Any, path: str, lo: int = 0, hi: int | None = None) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        _fail(path, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


def _str_list(v: Any, path: str, check: Any = None) -> None:
    if not isinstance(v, list):
        _fail(path, "must be an array")
    for i, item in enumerate(v):
        if not isinstance(item, str) or (check is not None and not check(item)):
            _fail(f"{path}[{i}]", f"invalid value {item!r}")


def _is_ip(text: str) -> bool:
    if canonical_v4(text) is not None:  # the common case, without ipaddress
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def _keys(d: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    need, allowed = _key_sets(required, optional)
    if isinstance(d, dict) and need <= d.keys() <= allowed:
        return  # the common case, in two set operations
    if not isinstance(d, dict):
        _fail(path, "must be an object")
    missing = [k for k in required if k not in d]
    if missing:
        _fail(path, f"missing {', '.join(missing)}")
    extra = sorted(set(d) - set(required) - set(optional))
    if extra:
        _fail(path, f"unexpected {', '.join(extra)}")


_PORTS = re.compile(r"[0-9]+(-[0-9]+)?")
_PROTOS = ("tcp", "udp", "icmp", "any")


def _check_policy(policy: Any) -> None:
    """The compiled policy's shape (``policy.compile_policy(...).as_dict()``)."""
    _keys(policy, "$.policy", ("version", "rules"), ())
    _int(policy["version"], "$.policy.version", 1)
    if not isinstance(policy["rules"], list):
        _fail("$.policy.rules", "must be an array")
    for i, rule in enumerate(policy["rules"]):
        p = f"$.policy.rules[{i}]"
        _keys(rule, p, ("src", "dst", "proto"), ("ports", "name"))
        _str_list(rule["src"], f"{p}.src")
        _str_list(rule["dst"], f"{p}.dst")
        if rule["proto"] not in _PROTOS:
            _fail(f"{p}.proto", f"must be one of {', '.join(_PROTOS)}")
        if "ports" in rule:
            _str_list(rule["ports"], f"{p}.ports", _PORTS.fullmatch)
        if "name" in rule and not isinstance(rule["name"], str):
            _fail(f"{p}.name", "must be a string")


def _check_endpoints(d: Mapping[str, Any]) -> None:
    """``hub_url`` and ``stun_servers`` (mesh.yaml's), wherever they come from."""
    hub_url = d.get("hub_url", "https://x")
    if not isinstance(hub_url, str) or not _HUB_URL.fullmatch(hub_url):
        _fail("$.hub_url", "must be an http(s):// URL without spaces")
    if "stun_servers" in d:
        _str_list(d["stun_servers"], "$.stun_servers", _ENDPOINT.fullmatch)
        if len(set(d["stun_servers"])) != len(d["stun_servers"]):
            _fail("$.stun_servers", "must not repeat a server")


def mesh_endpoint_problems(mesh: Mesh) -> list[Problem]:
    """mesh.yaml's ``hub_url`` and ``stun_servers`` as the manifest (and so every
    agent) will check them; one ``Problem`` per bad value, at its line."""
    checks: list[tuple[str, Any, dict[str, Any]]] = [
        ("hub_url", mesh.hub_url, {"hub_url": mesh.hub_url})]
    checks += [(f"stun_servers.{i}", s, {"stun_servers": [s]})
               for i, s in enumerate(mesh.stun_servers)]
    if len(set(mesh.stun_servers)) != len(mesh.stun_servers):
        checks.append(("stun_servers", list(mesh.stun_servers),
                       {"stun_servers": list(mesh.stun_servers)}))
    problems = []
    for path, value, doc in checks:
        try:
            _check_endpoints(doc)
        except SchemaViolation as exc:
            problems.append(Problem(
                mesh.source.file, mesh.source.line(path), "E-MANIFEST-FIELD",
                f"{path} {value!r} cannot go into the signed manifest: "
                f"{str(exc).partition(': ')[2]}",
                "write hub_url as http(s)://host[:port][/path] and each STUN server as "
                "host:port, each server once"))  # fmt: skip
    return problems


def check_manifest_dict(d: Any) -> None:
    """Hand-written mirror of schemas/manifest.schema.json; raises ``SchemaViolation``."""
    _keys(d, "$", _TOP_REQUIRED, _TOP_OPTIONAL)
    if d["version"] != FORMAT_VERSION or isinstance(d["version"], bool):
        _fail("$.version", f"must be {FORMAT_VERSION}")
    if not isinstance(d["org"], str) or not _NAME.fullmatch(d["org"]):
        _fail("$.org", "must be a DNS label")
    _int(d["serial"], "$.serial", 1)
    if not isinstance(d["commit"], str) or not d["commit"]:
        _fail("$.commit", "must be a non-empty string")
    _int(d["issued_at"], "$.issued_at")
    _int(d["not_after"], "$.not_after")
    _int(d["listen_port"], "$.listen_port", 0, 65535)
    _int(d["keepalive"], "$.keepalive", 0, 65535)
    for key in ("cidr_v4", "cidr_v6"):
        if key in d and (not isinstance(d[key], str) or not _is_cidr(d[key])):
            _fail(f"$.{key}", "must be a CIDR")
    if "policy" in d:
        _check_policy(d["policy"])
    if "extra" in d and not isinstance(d["extra"], dict):
        _fail("$.extra", "must be an object")
    _check_endpoints(d)
    if "root_version" in d:
        _int(d["root_version"], "$.root_version", 1)
    if "revoked" in d:
        if not isinstance(d["revoked"], list):
            _fail("$.revoked", "must be an array")
        for i, s in enumerate(d["revoked"]):
            _int(s, f"$.revoked[{i}]", 1)
    if not isinstance(d["devices"], list):
        _fail("$.devices", "must be an array")
    names: set[str] = set()
    for i, dev in enumerate(d["devices"]):
        p = f"$.devices[{i}]"
        _keys(dev, p, _DEV_REQUIRED, _DEV_OPTIONAL)
        if not isinstance(dev["name"], str) or not _NAME.fullmatch(dev["name"]):
            _fail(f"{p}.name", "must be a DNS label")
        if dev["name"] in names:
            _fail(f"{p}.name", f"duplicate device {dev['name']!r}")
        names.add(dev["name"])
        if not isinstance(dev["wg"], str) or not _WG.fullmatch(dev["wg"]):
            _fail(f"{p}.wg", "must be a base64 WireGuard key")
        if not isinstance(dev["fp"], str) or not _FP.fullmatch(dev["fp"]):
            _fail(f"{p}.fp", "must be a base64url SHA-256")
        _str_list(dev["ips"], f"{p}.ips", _is_ip)
        if not dev["ips"]:
            _fail(f"{p}.ips", "must not be empty")
        for key in ("routes", "tags", "labels"):
            if key in dev:
                _str_list(dev[key], f"{p}.{key}", _is_cidr if key == "routes" else None)
        if "use_exit" in dev and (
            not isinstance(dev["use_exit"], str) or not _NAME.match(dev["use_exit"])
        ):
            _fail(f"{p}.use_exit", "must be a DNS label")
        for key in ("relay", "exit", "keep_sources"):
            if key in dev and dev[key] is not True:
                _fail(f"{p}.{key}", "must be true when present")
        if "endpoint" in dev and (
            not isinstance(dev["endpoint"], str) or not _ENDPOINT.fullmatch(dev["endpoint"])
        ):
            _fail(f"{p}.endpoint", "must be host:port")
        if "keepalive" in dev:
            _int(dev["keepalive"], f"{p}.keepalive", 0, 65535)


def _labels(x: Mapping[str, Any], used: frozenset[str]) -> tuple[str, ...]:
    explicit = x.get("labels", [])
    if not used or "tags" not in x:
        return tuple(explicit)  # no tag label to put back (the common case)
    implied = _implied(x["tags"], used)
    if not implied:
        return tuple(explicit)
    return tuple(sorted(set(explicit) | implied))


# How each optional key of a device dict maps to a ManifestDevice field (a key
# left out leaves the field's default: tests/test_structs.py checks they agree)
_OPTIONAL_FIELD: dict[str, tuple[str, Any]] = {
    "routes": ("routes", tuple), "relay": ("relay", bool), "endpoint": ("endpoint", None),
    "tags": ("tags", tuple), "keepalive": ("keepalive", None), "exit": ("exit_node", bool),
    "use_exit": ("use_exit_node", None),
    "keep_sources": ("masquerade_routes", lambda keep: not keep)}


def _device(x: Mapping[str, Any], used: frozenset[str]) -> ManifestDevice:
    """One device dict (schema-checked) as a ``ManifestDevice``: the defaults,
    then only the keys the dict has (10,000 devices a pass)."""
    if len(x) == 4:  # only name, wg, ips and fp: every other field its default
        return ManifestDevice(x["name"], x["wg"], tuple(x["ips"]), x["fp"])
    extra: dict[str, Any] = {}
    for key, value in x.items():
        mapped = _OPTIONAL_FIELD.get(key)
        if mapped is not None:
            extra[mapped[0]] = value if mapped[1] is None else mapped[1](value)
    extra["labels"] = _labels(x, used)
    return ManifestDevice(x["name"], x["wg"], tuple(x["ips"]), x["fp"], **extra)


def manifest_from_dict(d: Mapping[str, Any], *, check: bool = True) -> Manifest:
    """Check ``d`` against the schema and build the ``Manifest``. ``check=False``
    only for a dict that passed the check before (the agent's own ``view.json``)."""
    if check:
        check_manifest_dict(d)
    used = tag_labels_used(d.get("policy"))
    devices = tuple(_device(x, used) for x in d["devices"])
    return Manifest(
        org=d["org"],
        serial=d["serial"],
        commit=d["commit"],
        issued_at=d["issued_at"],
        not_after=d["not_after"],
        cidr_v4=d["cidr_v4"],
        cidr_v6=d.get("cidr_v6"),
        listen_port=d["listen_port"],
        keepalive=d["keepalive"],
        devices=devices,
        policy=d.get("policy"),
        revoked=tuple(d.get("revoked", ())),
        extra=dict(d.get("extra", {})),
        hub_url=d.get("hub_url"),
        stun_servers=tuple(d.get("stun_servers", ())),
        root_version=d.get("root_version"),
    )


def sign_manifest(payload: bytes,
                  key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey]) -> bytes:
    """The DSSE envelope over canonical manifest JSON, signed by ``key`` or, during
    a rotation's overlap, by every key given (old and new)."""
    keys = (key,) if isinstance(key, Ed25519PrivateKey) else tuple(key)
    return sign_envelope_multi(payload, MANIFEST_TYPE, keys)


DEFAULT_MAX_SKEW = 300.0  # seconds a manifest may be issued in the verifier's future


def verify_manifest(
    data: bytes, trust: Trust, org: str, last_serial: int | None, now: float,
    max_skew: float | None = DEFAULT_MAX_SKEW, *, schema_checked: bool = False,
    parsed: Envelope | None = None,
) -> Manifest:
    """Verify an envelope for ``org``; refuse with ``ManifestRefused(reason)``.

    Reasons: ``malformed``, ``unknown-key``, ``bad-signature``, ``wrong-org``,
    ``schema``, ``expired``, ``future`` (``issued_at`` more than ``max_skew``
    seconds after ``now``: a hub whose clock runs ahead, or a replay prepared
    for later; ``None`` skips the check), ``rollback`` (serial <=
    ``last_serial``: a replay or an older manifest). A refusal never moves the
    caller's rollback floor. Hostile input (an envelope or payload too large,
    nested too deep, not UTF-8 or not JSON) is ``malformed`` (envelope) or
    ``schema`` (payload), never a ``RecursionError``.

    ``schema_checked``: these exact bytes passed this whole verification
    before (the agent's own cache of the manifest it applied, compared byte
    for byte): the schema check, a pure function of the signed payload, is
    not repeated. Everything else is (signature, org, expiry, skew, floor).
    ``parsed``: ``parse_envelope(data)`` when the caller holds it (``open_envelope``)."""
    if org not in trust.orgs:
        raise ManifestRefused("wrong-org", f"no trust anchor for org {org!r}")
    opened = open_envelope(data, trust, MANIFEST_TYPE, org=org, parsed=parsed)
    doc = opened.json("signed manifest payload")  # bounded: ManifestRefused("schema")
    try:
        manifest = manifest_from_dict(doc, check=not schema_checked)
    except (ValueError, TypeError, KeyError) as exc:  # SchemaViolation is a ValueError
        raise ManifestRefused("schema", f"signed payload is not a valid manifest: {exc}") from exc
    if manifest.org != org:
        raise ManifestRefused("wrong-org", f"manifest is for org {manifest.org!r}, not {org!r}")
    if now > manifest.not_after:
        raise ManifestRefused(
            "expired", f"manifest serial {manifest.serial} expired at {manifest.not_after}"
        )
    if max_skew is not None and manifest.issued_at > now + max_skew:
        raise ManifestRefused(
            "future", f"manifest serial {manifest.serial} was issued at {manifest.issued_at}, "
                      f"{manifest.issued_at - now:.0f} s in this device's future (more than "
                      f"{max_skew:.0f} s of clock skew): check the clocks of the hub and this "
                      "device (NTP)")
    if last_serial is not None and manifest.serial <= last_serial:
        raise ManifestRefused(
            "rollback",
            f"serial {manifest.serial} is not above the last applied serial {last_serial}",
        )
    return manifest


__all__ = [
    "MANIFEST_TYPE",
    "OrgTrust",
    "SchemaViolation",
    "Trust",
    "build_manifest",
    "canonical_json",
    "check_manifest_dict",
    "encode_manifest",
    "load_trust",
    "manifest_from_dict",
    "manifest_to_dict",
    "mesh_endpoint_problems",
    "next_serial",
    "open_envelope",
    "sign_envelope",
    "sign_manifest",
    "verify_manifest",
]
