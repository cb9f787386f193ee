"""reconciler.secrets: SOPS files (PGP recipients, YAML/JSON) that the real sops reads too.

``sops`` is the entry point (``encrypt``/``decrypt``/``encrypt_file``/``decrypt_file``),
``gpg`` the only python-gnupg user, ``values`` the AES-256-GCM value cipher, ``rules`` the
crypt rules, ``goyaml``/``formats`` the go-yaml-compatible document handling. Callers: the
hub (decrypts CA and signing keys in memory), ``pki`` (``ca init``) and the ``meshops
secrets`` CLI. See docs/secrets.md and docs/architecture.md.
"""
