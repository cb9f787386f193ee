"""The project's only python-gnupg user: PGP-wrap and unwrap SOPS data keys.

``reconciler.secrets.sops`` calls :class:`Gpg` to encrypt a file's 32-byte
data key to each recipient fingerprint and to decrypt it again; the CLI and
the hub build one :class:`Gpg` per GNUPGHOME. Every gnupg failure becomes a
:class:`~reconciler.errors.SecretsError` here. The data key is never logged:
python-gnupg logs raw gpg output at DEBUG, so its logger is capped at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gnupg

from reconciler.errors import SecretsError

# python-gnupg logs decrypted chunks and imported key material at DEBUG.
logging.getLogger("gnupg").setLevel(logging.INFO)


class Gpg:
    """One GnuPG home (``None``: the default, i.e. ``$GNUPGHOME`` or ``~/.gnupg``)."""

    def __init__(self, home: str | None = None, *, binary: str = "gpg") -> None:
        self.home = home
        try:
            self._gpg = gnupg.GPG(gpgbinary=binary, gnupghome=home)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SecretsError(f"cannot run {binary!r} (is GnuPG installed?): {exc}") from exc
        self._gpg.encoding = "utf-8"

    @property
    def _where(self) -> str:
        return f"GNUPGHOME={self.home}" if self.home else "the default GNUPGHOME"

    def import_keys(self, armored: str) -> tuple[str, ...]:
        """Import armored public/secret keys; return the fingerprints imported."""
        result = self._gpg.import_keys(armored)
        fingerprints = tuple(fp for fp in result.fingerprints if fp)
        if not fingerprints:
            raise SecretsError(f"gpg imported no keys into {self._where}: {_status(result)}")
        return fingerprints

    def encrypt_data_key(self, key: bytes, recipients: Sequence[str]) -> list[tuple[str, str]]:
        """PGP-encrypt ``key`` separately to each fingerprint, as sops does.

        Returns ``[(fingerprint, armored message), ...]`` in recipient order.
        """
        if not recipients:
            raise SecretsError("at least one PGP recipient fingerprint is needed")
        out = []
        for fp in recipients:
            fp = normalize_fingerprint(fp)
            result = self._gpg.encrypt(key, [fp], always_trust=True, armor=True)
            if not result.ok:
                raise SecretsError(
                    f"cannot encrypt the data key to {fp}: {_status(result)}; "
                    f"import its public key into {self._where}"
                )
            out.append((fp, str(result)))
        return out

    def decrypt_data_key(self, armored: str) -> bytes:
        """Decrypt one ``enc`` message; raise :class:`SecretsError` with gpg's reason."""
        result = self._gpg.decrypt(armored)
        if not result.ok:
            raise SecretsError(f"gpg could not decrypt the data key: {_status(result)}")
        return bytes(result.data)

    def secret_fingerprints(self) -> frozenset[str]:
        """Fingerprints (primary keys and subkeys) with a secret key in this home."""
        keys = self._gpg.list_keys(secret=True)
        found: set[str] = set()
        for key in keys:
            found.add(key["fingerprint"].upper())
            for sub in key.get("subkeys", []):
                if len(sub) > 2 and sub[2]:
                    found.add(str(sub[2]).upper())
        return frozenset(found)


    def key_fingerprints(self, key: str) -> frozenset[str]:
        """Fingerprints (primary and subkeys) of the secret key ``key`` (an id, a
        fingerprint or a user id) in this home; raise :class:`SecretsError` when
        there is none. The commit gate matches the hub's commit signatures by them."""
        found: set[str] = set()
        entries = self._gpg.list_keys(secret=True, keys=[key])
        if len(entries) > 1:
            raise SecretsError(f"{key!r} matches {len(entries)} secret keys in {self._where}; "
                               "give the full fingerprint")
        for entry in entries:
            found.add(entry["fingerprint"].upper())
            for sub in entry.get("subkeys", []):
                if len(sub) > 2 and sub[2]:
                    found.add(str(sub[2]).upper())
        if not found:
            raise SecretsError(f"no secret key {key!r} in {self._where}")
        return frozenset(found)


def normalize_fingerprint(fp: str) -> str:
    """Upper-case hex without spaces; raise :class:`SecretsError` when it is not hex."""
    cleaned = fp.replace(" ", "").upper()
    cleaned = cleaned.removeprefix("0X")
    if not cleaned or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise SecretsError(f"not a PGP fingerprint: {fp!r}")
    return cleaned


def _status(result: object) -> str:
    status = getattr(result, "status", None) or "unknown error"
    problems = getattr(result, "problem_reason", None) or getattr(result, "problems", None)
    return f"{status} ({problems})" if problems else str(status)
