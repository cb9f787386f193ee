"""PURE: map a verified ID token's ``(iss, sub)`` to a user file in git.

Called by ``reconciler.hub.enroll`` after ``identity.tokens.verify_id_token``.
Each refusal has its own ``IdentityRefused`` reason, so the person enrolling
learns what to fix: ``unknown-user`` (no user file carries this issuer and
subject), ``other-org`` (a user file does, but in another organization),
``disabled-user`` (the file says ``disabled: true``).
"""

from __future__ import annotations

from reconciler.errors import IdentityRefused
from reconciler.model.repo import Repo, User

from .tokens import Claims


def find_user(repo: Repo, org: str, claims: Claims) -> User:
    key = (claims.issuer, claims.subject)
    state = repo.orgs.get(org)
    if state is not None:
        for user in state.users.values():
            if (user.oidc_issuer, user.oidc_subject) == key:
                if user.disabled:
                    raise IdentityRefused("disabled-user", f"user {user.name!r} of org {org!r} "
                                                           "is disabled in git ("
                                                           f"{user.source.file})")
                return user
    others = sorted(name for name, other in repo.orgs.items() if name != org
                    for user in other.users.values()
                    if (user.oidc_issuer, user.oidc_subject) == key)
    if others:
        raise IdentityRefused("other-org", f"subject {claims.subject!r} of {claims.issuer} is a "
                                           f"user of org {others[0]!r}, not of {org!r}")
    raise IdentityRefused("unknown-user", f"no user of org {org!r} has issuer "
                                          f"{claims.issuer} and subject {claims.subject!r}; "
                                          f"add orgs/{org}/users/NAME.yaml with that oidc "
                                          "issuer and subject")
