"""SOPS crypt rules: which values of a file are encrypted.

``reconciler.secrets.sops`` asks :meth:`CryptRules.should_encrypt` for every
leaf's key path, when encrypting and again when decrypting (the rules are read
back from the file's ``sops`` block). The precedence is sops' ``tree.go``: the
unencrypted suffix, then the encrypted suffix, the unencrypted regex and the
encrypted regex, each matched against every key on the path. sops allows only
one rule per file; with none given it uses ``unencrypted_suffix: _unencrypted``.
Regexes are searched (not anchored), like Go's ``regexp.Match``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from reconciler.errors import SecretsError

DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
_RULE_KEYS = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")


@dataclass(frozen=True)
class CryptRules:
    """At most one of the four rules, plus sops' ``mac_only_encrypted`` switch."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    mac_only_encrypted: bool = False

    def __post_init__(self) -> None:
        chosen = [name for name in _RULE_KEYS if getattr(self, name)]
        if len(chosen) > 1:
            raise SecretsError(
                f"choose one crypt rule, not {' and '.join(chosen)} (sops allows only one)"
            )
        for name in ("unencrypted_regex", "encrypted_regex"):
            pattern = getattr(self, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise SecretsError(f"{name} {pattern!r} is not a valid regex: {exc}") from exc

    def effective(self) -> CryptRules:
        """These rules, or the sops default (``_unencrypted`` suffix) when none is set."""
        if any(getattr(self, name) for name in _RULE_KEYS):
            return self
        return CryptRules(
            unencrypted_suffix=DEFAULT_UNENCRYPTED_SUFFIX,
            mac_only_encrypted=self.mac_only_encrypted,
        )

    def should_encrypt(self, path: Sequence[str]) -> bool:
        """Whether the value at ``path`` (mapping keys from the root) is encrypted."""
        encrypted = True
        if self.unencrypted_suffix and any(k.endswith(self.unencrypted_suffix) for k in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(key.endswith(self.encrypted_suffix) for key in path)
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, k) for k in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(re.search(self.encrypted_regex, key) for key in path)
        return encrypted

    def metadata(self) -> dict[str, object]:
        """The fields sops writes into the ``sops`` block for these rules."""
        out: dict[str, object] = {n: getattr(self, n) for n in _RULE_KEYS if getattr(self, n)}
        if self.mac_only_encrypted:
            out["mac_only_encrypted"] = True
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> CryptRules:
        """Read the rules back from a file's ``sops`` block (no rule: encrypt everything)."""
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = meta.get(field.name)
            if raw is None:
                continue
            if field.name == "mac_only_encrypted":
                values[field.name] = _go_bool(raw)
            elif isinstance(raw, str):
                values[field.name] = raw
            else:
                raise SecretsError(f"sops.{field.name} must be a string")
        return cls(**values)  # type: ignore[arg-type]



def _go_bool(raw: object) -> bool:
    """``sops.mac_only_encrypted`` as sops 3.11 reads it: a YAML/JSON boolean only.

    It selects the MAC digest, so anything else (``"true"``, ``1``) is refused,
    as sops refuses it ("cannot unmarshal ... into bool"), rather than guessed."""
    if isinstance(raw, bool):
        return raw
    raise SecretsError(
        f"sops.mac_only_encrypted must be the boolean true or false, got {raw!r} "
        "(it selects how the MAC is computed; sops refuses other spellings too)"
    )
