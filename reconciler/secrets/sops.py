"""Read and write SOPS files (PGP recipients, YAML or JSON) compatible with ``sops``.

Callers: the hub (``hub publish`` decrypts the org CA and signing keys in
memory), ``pki`` (``ca init`` encrypts new keys) and the ``meshops secrets``
CLI. Public API (docs/architecture.md, docs/secrets.md)::

    encrypt(doc, recipients, *, gpg, fmt="yaml", rules=None, now=None) -> str
    decrypt(text, *, gpg, fmt="yaml", keep_comments=False, ignore_mac=False) -> dict
    encrypt_file(path, recipients, *, gpg, fmt=None, rules=None, now=None) -> str
    decrypt_file(path, gpg, *, fmt=None, keep_comments=False) -> dict

The format is sops' own: a random 32-byte data key encrypts every value
(:mod:`reconciler.secrets.values`) with its key path as AAD, the data key is
PGP-encrypted to each recipient (:mod:`reconciler.secrets.gpg`), and the MAC is
SHA-512 over the plaintext values in document order (comments excluded),
upper-case hex, stored encrypted with ``lastmodified`` as AAD. With
``mac_only_encrypted`` the MAC covers only the values that are encrypted, and
the digest is first fed ``sha256(b"sops")`` (sops' ``MACOnlyEncryptedInitialization``
in sops.go, so the two modes never give the same MAC); ``new_mac_digest`` is the
one place that rule lives.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import SecretsError
from reconciler.secrets import formats
from reconciler.secrets.gpg import Gpg
from reconciler.secrets.rules import CryptRules
from reconciler.secrets.values import (
    AuthenticationFailed,
    Comment,
    decrypt_value,
    encrypt_value,
    is_encrypted,
    mac_bytes,
)

__all__ = ["Comment", "CryptRules", "decrypt", "decrypt_file", "encrypt", "encrypt_file"]

SOPS_VERSION = "3.11.0"  # the sops release whose format we write (and test against)
DATA_KEY_SIZE = 32
_OTHER_KEY_KINDS = ("kms", "gcp_kms", "azure_kv", "hc_vault", "age", "hckms")

Leaf = Callable[[object, list[str]], object]

# sops.go MACOnlyEncryptedInitialization: "echo -n sops | sha256sum", 8a3fd2ad...7d69.
MAC_ONLY_ENCRYPTED_SEED = hashlib.sha256(b"sops").digest()


def new_mac_digest(rules: CryptRules) -> hashlib._Hash:
    """The running MAC digest for a file under ``rules``: plain SHA-512, or SHA-512
    seeded with ``MAC_ONLY_ENCRYPTED_SEED`` when only encrypted values count
    (sops ``Tree.Encrypt``/``Tree.Decrypt``)."""
    digest = hashlib.sha512()
    if rules.mac_only_encrypted:
        digest.update(MAC_ONLY_ENCRYPTED_SEED)
    return digest


def _walk(value: object, path: list[str], leaf: Leaf) -> object:
    """sops' walkValue: mapping keys extend the path, list items share it, nulls pass."""
    if isinstance(value, Mapping):
        out: dict[object, object] = {}
        for key, item in value.items():
            if isinstance(key, Comment):
                out[leaf(key, path)] = None
                continue
            if not isinstance(key, str):
                raise SecretsError(f"only string keys are supported, got {key!r} at {_show(path)}")
            out[key] = _walk(item, [*path, key], leaf)
        return out
    if isinstance(value, (list, tuple)):
        return [leaf(item, path) if isinstance(item, Comment) else _walk(item, path, leaf)
                for item in value]
    if value is None:
        return None
    return leaf(value, path)


def _aad(path: Sequence[str]) -> str:
    return ":".join(path) + ":"


def _show(path: Sequence[str]) -> str:
    return repr(_aad(path)) if path else "the top level"


def _timestamp(now: datetime | None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def encrypt(
    doc: Mapping[str, object],
    recipients: Sequence[str],
    *,
    gpg: Gpg,
    fmt: str = "yaml",
    rules: CryptRules | None = None,
    now: datetime | None = None,
    random: Callable[[int], bytes] = os.urandom,
) -> str:
    """Encrypt a plaintext mapping to PGP ``recipients``; return the file text.

    ``doc`` may hold :class:`Comment` keys/items (YAML comments, encrypted like
    sops does). ``now`` stamps ``lastmodified``/``created_at``; ``random``
    supplies the data key and nonces.
    """
    if "sops" in doc:
        raise SecretsError("the document already has a top-level 'sops' key (already encrypted?)")
    rules = (rules or CryptRules()).effective()
    key = random(DATA_KEY_SIZE)
    digest = new_mac_digest(rules)

    def leaf(value: object, path: list[str]) -> object:
        wanted = rules.should_encrypt(path)
        if not isinstance(value, Comment) and (wanted or not rules.mac_only_encrypted):
            digest.update(mac_bytes(value))
        if not wanted or value == "" or value == b"":
            return value  # sops never encrypts empty values
        sealed = encrypt_value(value, key, _aad(path), random=random)
        return Comment(sealed) if isinstance(value, Comment) else sealed

    tree = _walk(doc, [], leaf)
    assert isinstance(tree, dict)
    stamp = _timestamp(now)
    wrapped = gpg.encrypt_data_key(key, recipients)
    meta: dict[str, object] = {
        "lastmodified": stamp,
        "mac": encrypt_value(digest.hexdigest().upper(), key, stamp, random=random),
        "pgp": [{"created_at": stamp, "enc": armored, "fp": fp} for fp, armored in wrapped],
        **rules.metadata(),
        "version": SOPS_VERSION,
    }
    tree["sops"] = meta
    return formats.dumps(tree, fmt)


def _data_key(meta: Mapping[str, object], gpg: Gpg) -> bytes:
    if meta.get("key_groups") or meta.get("shamir_threshold"):
        raise SecretsError("sops key groups (Shamir secret sharing) are not supported")
    entries = meta.get("pgp") or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise SecretsError("sops.pgp must be a list of {fp, enc, created_at}")
    if not entries:
        others = [kind for kind in _OTHER_KEY_KINDS if meta.get(kind)]
        hint = f" (it uses {', '.join(others)}, which meshops does not support)" if others else ""
        raise SecretsError(f"the file has no PGP recipients{hint}")
    wanted = [str(e.get("fp", "?")) for e in entries]
    reasons = []
    for entry in entries:
        enc = entry.get("enc")
        if not isinstance(enc, str):
            continue
        try:
            key = gpg.decrypt_data_key(enc)
        except SecretsError as exc:
            reasons.append(str(exc))
            continue
        if len(key) == DATA_KEY_SIZE:
            return key
        reasons.append(f"the data key for {entry.get('fp')} has the wrong length")
    where = f"GNUPGHOME={gpg.home}" if gpg.home else "your GNUPGHOME"
    last = f" (last gpg error: {reasons[-1]})" if reasons else ""
    raise SecretsError(
        f"no usable secret key: the file is encrypted to {', '.join(wanted)}; "
        f"import one of them into {where}{last}"
    )


def _mac_aad(meta: Mapping[str, object]) -> str:
    raw = meta.get("lastmodified")
    if not isinstance(raw, str):
        raise SecretsError("sops.lastmodified is missing or not a string")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise SecretsError(f"sops.lastmodified {raw!r} is not an RFC 3339 time") from exc
    # sops re-formats the parsed time with Go's time.RFC3339 (seconds, Z for UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    offset = moment.utcoffset()
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _all_paths(value: object, path: list[str], out: set[str]) -> set[str]:
    out.add(_aad(path))
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                _all_paths(item, [*path, key], out)
    elif isinstance(value, list):
        for item in value:
            _all_paths(item, path, out)
    return out


def decrypt(
    text: str,
    *,
    gpg: Gpg,
    fmt: str = "yaml",
    keep_comments: bool = False,
    ignore_mac: bool = False,
) -> dict[str, object]:
    """Decrypt a sops file's text; verify the MAC; return the plaintext mapping.

    With ``keep_comments`` the result holds :class:`Comment` keys/items
    (decrypted); otherwise comments are dropped. ``ignore_mac`` accepts a file
    without a MAC (never a file whose MAC is wrong). Raises
    :class:`SecretsError` naming the key path on any failure.
    """
    doc = formats.loads(text, fmt, keep_comments=keep_comments)
    meta = doc.pop("sops", None)
    if not isinstance(meta, Mapping):
        raise SecretsError("not a sops file: there is no top-level 'sops' metadata mapping")
    rules = CryptRules.from_metadata(meta)
    key = _data_key(meta, gpg)
    digest = new_mac_digest(rules)
    paths: set[str] = set()

    def other_paths() -> set[str]:
        if not paths:
            _all_paths(doc, [], paths)
        return paths

    def leaf(value: object, path: list[str]) -> object:
        wanted = rules.should_encrypt(path)
        plain = _open(value, path, key, other_paths) if wanted else value
        if not isinstance(plain, Comment) and (wanted or not rules.mac_only_encrypted):
            digest.update(mac_bytes(plain))
        return plain

    tree = _walk(doc, [], leaf)
    assert isinstance(tree, dict)
    _check_mac(meta, key, digest.hexdigest().upper(), ignore_mac=ignore_mac)
    return tree


def _open(value: object, path: list[str], key: bytes, paths: Callable[[], set[str]]) -> object:
    if isinstance(value, Comment):
        if not is_encrypted(value.text):
            return value  # written by a sops older than 3.4, which kept comments in clear
        # comments are not covered by the MAC and their place in the tree is
        # positional, so any key path of this document is accepted for them
        for aad in [_aad(path), *sorted(paths())]:
            try:
                plain = decrypt_value(value.text, key, aad)
            except AuthenticationFailed:
                continue
            return plain if isinstance(plain, Comment) else Comment(str(plain))
        raise SecretsError(f"an encrypted comment under {_show(path)} failed authentication")
    if value == "":
        return value
    if not isinstance(value, str) or not is_encrypted(value):
        raise SecretsError(
            f"the value at {_show(path)} is not encrypted although the file's crypt rules "
            "say it should be (was it edited by hand?)"
        )
    aad = _aad(path)
    try:
        return decrypt_value(value, key, aad)
    except AuthenticationFailed:
        pass
    for other in sorted(paths() - {aad}):
        try:
            decrypt_value(value, key, other)
        except (AuthenticationFailed, SecretsError):
            continue
        raise SecretsError(
            f"the value at {_show(path)} was encrypted for the key path {other!r}: "
            "it was moved or copied from another key"
        ) from None
    raise SecretsError(
        f"the value at {_show(path)} failed authentication: its data, iv or tag was altered "
        "(or it was encrypted with another data key)"
    )


def _check_mac(meta: Mapping[str, object], key: bytes, computed: str, *, ignore_mac: bool) -> None:
    stored = meta.get("mac")
    if not stored:
        if ignore_mac:
            return
        raise SecretsError(
            "the file has no MAC (sops.mac is missing): its integrity cannot be checked; "
            "refusing it"
        )
    if not isinstance(stored, str):
        raise SecretsError("sops.mac is not an encrypted string")
    try:
        expected = decrypt_value(stored, key, _mac_aad(meta))
    except AuthenticationFailed:
        raise SecretsError(
            "the MAC failed authentication: sops.mac or sops.lastmodified was altered"
        ) from None
    if expected != computed:
        raise SecretsError(
            "MAC mismatch: the values in the file are not the ones the MAC was computed over "
            "(a value was changed, added, removed or reordered)"
        )


def encrypt_file(
    path: str | Path,
    recipients: Sequence[str],
    *,
    gpg: Gpg,
    fmt: str | None = None,
    rules: CryptRules | None = None,
    now: datetime | None = None,
) -> str:
    """Encrypt a plaintext YAML/JSON file (comments kept); return the sops text."""
    kind = formats.format_for(path, fmt)
    doc = formats.loads(_read(path), kind, keep_comments=True)
    return encrypt(doc, recipients, gpg=gpg, fmt=kind, rules=rules, now=now)


def decrypt_file(
    path: str | Path, gpg: Gpg, *, fmt: str | None = None, keep_comments: bool = False
) -> dict[str, object]:
    """Decrypt a sops file from disk (format from the extension unless ``fmt``)."""
    kind = formats.format_for(path, fmt)
    return decrypt(_read(path), gpg=gpg, fmt=kind, keep_comments=keep_comments)


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SecretsError(f"{path} is not UTF-8 text") from exc
