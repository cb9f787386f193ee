"""``meshops ca init`` and ``meshops manifest verify``.

``ca init --org ORG`` makes the org CA and manifest-signing key
(reconciler.hub.publish.init_org_ca). ``manifest verify FILE --trust
TRUST.json --org ORG`` checks a published manifest the way an agent does
(reconciler.pki.manifest.verify_manifest) and prints the refusal reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="the per-org certificate authority")
    csub = ca.add_subparsers(dest="ca_command", metavar="ACTION")
    csub.required = True
    init = csub.add_parser(
        "init",
        help="make an org CA + manifest-signing key: orgs/ORG/ca.crt, secrets/ORG-ca.sops.yaml",
    )
    init.add_argument("--org", required=True, help="organization name")
    init.add_argument("--repo", type=Path, default=Path("."), help="org repository (default .)")
    init.add_argument("--gnupghome", help="GnuPG home with the recipients' public keys")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_ca_init)

    man = sub.add_parser("manifest", help="signed manifests")
    msub = man.add_subparsers(dest="manifest_command", metavar="ACTION")
    msub.required = True
    verify = msub.add_parser("verify", help="verify a manifest envelope as an agent would")
    verify.add_argument("file", type=Path, help="manifest.json (the DSSE envelope)")
    verify.add_argument("--trust", type=Path, required=True, help="trust.json the agent pins")
    verify.add_argument("--org", required=True, help="the org the manifest must be for")
    verify.add_argument("--min-serial", type=int, default=None,
                        help="last applied serial: refuse this serial or older")  # fmt: skip
    verify.set_defaults(handler=_manifest_verify)


def _ca_init(args: argparse.Namespace) -> int:
    from reconciler.hub.publish import init_org_ca

    cert, secret = init_org_ca(
        args.repo, args.org, now=time.time(), gpg_home=args.gnupghome, force=args.force
    )
    print(f"wrote {cert} and {secret} (commit both)")
    return 0


def _manifest_verify(args: argparse.Namespace) -> int:
    from reconciler.errors import ManifestRefused, UsageError
    from reconciler.pki.manifest import load_trust, verify_manifest

    try:
        data = args.file.read_bytes()
        trust = load_trust(args.trust.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        m = verify_manifest(data, trust, args.org, args.min_serial, time.time())
    except ManifestRefused as exc:
        print(f"meshops: {exc}", file=sys.stderr)
        return 1
    print(
        f"OK org={m.org} serial={m.serial} commit={m.commit} devices={len(m.devices)} "
        f"not_after={m.not_after} revoked={len(m.revoked)}"
    )
    return 0
