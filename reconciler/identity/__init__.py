"""Who is enrolling: OpenID Connect for ``meshops agent enroll`` and the hub.

* ``identity.http``: the one HTTPS transport towards an issuer (stdlib).
* ``identity.oidc``: discovery and the device authorization grant (RFC 8628);
  used on devices, so it imports no JOSE library.
* ``identity.tokens``: ID-token verification against the issuer's JWKS (the
  only PyJWT user); used by the hub.
* ``identity.users``: PURE: verified claims -> the user file in git.
* ``identity.request``: PURE: the canonical bytes an enrollment request signs.

Layer 4 (beside ``pki``): it imports only ``model``, ``boundedjson`` and
``errors`` from meshops; ``hub``, ``agent`` and ``cli`` import it.
docs/enrollment.md draws the flow.
"""
