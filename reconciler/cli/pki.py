"""``meshops ca init`` and ``meshops manifest verify``.

``ca init --org ORG`` makes the org CA and manifest-signing key
(reconciler.hub.publish.init_org_ca) and trust root 1. ``ca rotate --org ORG
[--signing-key] [--ca] [--overlap-days N]`` replaces either or both in band
(reconciler.hub.carotate.rotate_org_keys). ``manifest verify FILE --trust
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
    rotate = csub.add_parser(
        "rotate",
        help="replace the manifest-signing key and/or the CA; old and new are both trusted "
             "during an overlap, then the old ones retire (orgs/ORG/roots/, no file copying)",
    )
    rotate.add_argument("--org", required=True, help="organization name")
    rotate.add_argument("--repo", type=Path, default=Path("."), help="org repository (default .)")
    rotate.add_argument("--gnupghome", help="GnuPG home that decrypts the org secret")
    rotate.add_argument("--signing-key", action="store_true", help="rotate the manifest-signing key")
    rotate.add_argument("--ca", action="store_true", help="rotate the org CA")
    rotate.add_argument("--overlap-days", type=int, default=None,
                        help="days both generations stay trusted (default: mesh.yaml "
                             "rotation_overlap_days, 7)")
    rotate.set_defaults(handler=_ca_rotate)

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
    print(f"wrote {cert}, {secret} and orgs/{args.org}/roots/1.json (commit all three)")
    return 0


def _ca_rotate(args: argparse.Namespace) -> int:
    from reconciler.errors import UsageError
    from reconciler.hub.carotate import rotate_org_keys
    from reconciler.pki.ca import utc

    if not (args.signing_key or args.ca):
        raise UsageError("say what to rotate: --signing-key, --ca, or both")
    done = rotate_org_keys(args.repo, args.org, now=time.time(), signing=args.signing_key,
                           ca=args.ca, overlap_days=args.overlap_days, gpg_home=args.gnupghome)
    first, last = done.versions
    print(f"wrote {', '.join(done.written)}")
    print(f"trust root {first} (old and new keys) publishes now; root {last} (new keys only) "
          f"publishes at {utc(done.overlap_until).isoformat()}, when the old keys retire. "
          "Commit all of these files in one commit.")
    return 0


def _manifest_verify(args: argparse.Namespace) -> int:
    """Exit 0 with a summary, 1 with the refusal (reason and file named), 2 when a
    file cannot be read. The files may be hostile: both are read within bounds
    (size first, then JSON depth), so a huge or deeply nested file is a refusal,
    not a traceback."""
    from reconciler.errors import ConfigError, ManifestRefused
    from reconciler.pki.envelope import MAX_ENVELOPE_BYTES, MAX_TRUST_BYTES
    from reconciler.pki.manifest import load_trust, verify_manifest

    # one byte over the limit is enough for verify_manifest to refuse the size
    data = _read_bounded(args.file, MAX_ENVELOPE_BYTES + 1)
    try:
        trust = load_trust(_read_bounded(args.trust, MAX_TRUST_BYTES + 1))
    except ConfigError as exc:
        raise ConfigError(f"{args.trust}: {exc}") from exc
    try:
        m = verify_manifest(data, trust, args.org, args.min_serial, time.time())
    except ManifestRefused as exc:
        print(f"meshops: {args.file}: {exc}", file=sys.stderr)
        return 1
    print(
        f"OK org={m.org} serial={m.serial} commit={m.commit} devices={len(m.devices)} "
        f"not_after={m.not_after} revoked={len(m.revoked)}"
    )
    return 0


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a regular file; ``UsageError`` (exit 2) when it
    cannot be read or is not a regular file (``/dev/zero`` never ends)."""
    import os
    import stat as stat_mod

    from reconciler.errors import UsageError

    try:
        # O_NONBLOCK: a FIFO given as the file must not block the open
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK)) as fh:
            if not stat_mod.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise UsageError(f"{path}: not a regular file")
            return fh.read(max_bytes)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
