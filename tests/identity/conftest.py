from oidc.fixture import make_oidc, oidc  # noqa: F401  (pytest fixtures)
