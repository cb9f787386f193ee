"""The whole meshops exception tree.

Every error the project raises on purpose is one of these. Third-party
exceptions are translated where the library is owned (``raise X(...) from exc``)
so callers only ever see this tree. The retry class lives on the exception;
only loops (``agent run``, ``hub serve``) and the CLI read it::

    MeshopsError
    ├── PermanentError                 retrying will not help; a human must act
    │   ├── UsageError                 bad argument, not a repo, missing file (CLI exit 2)
    │   ├── ValidationError            the org repository is invalid; carries .problems
    │   ├── ManifestRefused            a manifest failed verification; carries .reason
    │   ├── SecretsError               SOPS / PGP: no key, MAC mismatch, bad format
    │   ├── PkiError                   CA, certificate or signing-key problem
    │   ├── ConfigError                agent or hub configuration is wrong
    │   ├── InputRefused               a peer or file sent too much, too deep, or not JSON; .reason
    │   ├── IdentityRefused            an ID token or an enrollment was refused; .reason
    │   ├── CommitRefused              the commit gate refused a commit; .commit .path .reason
    │   └── BackendError               the WireGuard/netlink backend refused an operation
    └── TemporaryError(delay)          try again later (agent exit 75)
        ├── FetchError                 hub/manifest/feed unreachable, HTTP 5xx, timeouts
        ├── BackendUnavailable         wireguard-go not running yet, socket busy, EAGAIN
        └── NotConverged               re-observation after apply still differs

The CLI (reconciler.cli) maps: UsageError -> 2, other PermanentError -> 1,
TemporaryError -> 75. Messages must never contain secrets.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.structs import Record


class MeshopsError(Exception):
    """Base of every error meshops raises on purpose."""

    exit_code = 1


class PermanentError(MeshopsError):
    """Retrying will not help."""


class TemporaryError(MeshopsError):
    """Retrying later may help; ``delay`` is a hint in seconds."""

    exit_code = 75

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class UsageError(PermanentError):
    """The command cannot run at all: bad argument, not a repository, missing file."""

    exit_code = 2


class Problem(Record):
    """One validation finding: where, a stable code, what, and how to fix it."""

    file: str
    line: int
    code: str
    message: str
    remedy: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.code}: {self.message}"
        return f"{text} (fix: {self.remedy})" if self.remedy else text

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "message": self.message,
            "remedy": self.remedy,
            "severity": self.severity,
        }


class ValidationError(PermanentError):
    """The org repository is invalid. ``problems`` lists every finding."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid repository"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class ManifestRefused(PermanentError):
    """A manifest failed verification. ``reason`` is a stable code such as
    ``bad-signature``, ``unknown-key``, ``wrong-org``, ``rollback``, ``expired``,
    ``schema``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"manifest refused ({reason}): {message}")
        self.reason = reason


class SecretsError(PermanentError):
    """SOPS or PGP failure."""


class PkiError(PermanentError):
    """CA, certificate or signing-key failure."""


class ConfigError(PermanentError):
    """Agent or hub configuration is wrong."""


class InputRefused(PermanentError):
    """Data from a peer or a file was refused before use: too large, nested too
    deep, not JSON, or a stream that took too long. ``reason`` is a stable code
    (``too-large``, ``too-deep``, ``not-json``, ``too-slow``, ``bomb``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IdentityRefused(PermanentError):
    """An OIDC ID token, a device login or an enrollment request was refused.
    ``reason`` is a stable code: token checks (``bad-token``, ``bad-alg``,
    ``unknown-key``, ``bad-signature``, ``wrong-issuer``, ``wrong-audience``,
    ``expired``, ``not-yet-valid``), user mapping (``unknown-user``,
    ``other-org``, ``disabled-user``), the device grant (``access-denied``,
    ``expired-code``, ``oidc-error``) and enrollment (``bad-request``,
    ``bad-request-signature``, ``stale-request``, ``token-too-old``,
    ``token-used``, ``device-exists``, ``enrollment-pending``, ``branch-moved``,
    ``not-enabled``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CommitRefused(PermanentError):
    """The hub's commit gate (``reconciler.hub.gate``) refused a commit: the last
    good commit keeps serving. ``commit`` is the refused commit (it may be an
    ancestor of the head), ``path`` the file that needed a signature it lacks
    (empty when the whole commit is refused), ``reason`` a stable code such as
    ``unsigned``, ``bad-signature``, ``not-owner``, ``not-admin``, ``two-orgs``,
    ``hub-scope``, ``no-signers``, ``anchor``."""

    def __init__(self, commit: str, path: str, reason: str, message: str) -> None:
        where = f" ({path})" if path else ""
        super().__init__(f"commit {commit[:12]}{where} refused ({reason}): {message}")
        self.commit = commit
        self.path = path
        self.reason = reason


class BackendError(PermanentError):
    """The WireGuard or netlink backend refused an operation."""


class FetchError(TemporaryError):
    """A hub, manifest or feed could not be reached."""


class BackendUnavailable(TemporaryError):
    """The backend is not ready (daemon starting, socket busy)."""


class NotConverged(TemporaryError):
    """After apply, re-observation still differs; ``residual`` names what is left."""

    def __init__(self, residual: Sequence[object], delay: float = 2.0) -> None:
        self.residual = tuple(residual)
        names = "; ".join(str(op) for op in self.residual[:5])
        super().__init__(f"not converged, {len(self.residual)} operation(s) left: {names}", delay)
