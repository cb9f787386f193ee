"""``meshops secrets decrypt FILE`` and ``meshops secrets encrypt FILE --pgp FP[,FP...]``.

Both read FILE and print the result on stdout (plaintext or the sops file),
in the format named by the extension (.yaml/.yml/.json) or ``--input-type``.
The work is done by ``reconciler.secrets.sops``; PGP keys come from
``--gnupghome`` (default: ``$GNUPGHOME`` or ``~/.gnupg``).
Exit codes: 0 success, 1 SOPS/PGP failure (no key, MAC mismatch, ...), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    group = sub.add_parser(
        "secrets", help="read and write SOPS-encrypted files (PGP)",
        description="Read and write SOPS files (PGP recipients) that the real sops also reads "
        "and writes. Output goes to stdout.")
    actions = group.add_subparsers(dest="secrets_command", metavar="ACTION")
    actions.required = True

    dec = actions.add_parser(
        "decrypt", help="decrypt a sops file to stdout",
        description="Decrypt FILE, verify its MAC and print the plaintext (comments kept).")
    dec.add_argument("file", help="sops-encrypted YAML or JSON file")
    _common(dec)
    dec.add_argument("--ignore-mac", action="store_true",
                     help="accept a file that has no MAC at all (a wrong MAC is always refused)")
    dec.set_defaults(handler=decrypt)

    enc = actions.add_parser(
        "encrypt", help="encrypt a plaintext file to stdout",
        description="Encrypt FILE to the given PGP recipients and print the sops file.")
    enc.add_argument("file", help="plaintext YAML or JSON file")
    enc.add_argument("--pgp", required=True, metavar="FP[,FP...]",
                     help="comma-separated PGP fingerprints to encrypt the data key to")
    _common(enc)
    rules = enc.add_mutually_exclusive_group()
    rules.add_argument("--unencrypted-suffix", metavar="SUFFIX",
                       help="leave values under keys ending in SUFFIX in clear "
                       "(default: _unencrypted)")
    rules.add_argument("--encrypted-suffix", metavar="SUFFIX",
                       help="encrypt only values under keys ending in SUFFIX")
    rules.add_argument("--unencrypted-regex", metavar="REGEX",
                       help="leave values under keys matching REGEX in clear")
    rules.add_argument("--encrypted-regex", metavar="REGEX",
                       help="encrypt only values under keys matching REGEX")
    enc.set_defaults(handler=encrypt)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gnupghome", metavar="DIR",
                        help="GnuPG home holding the keys (default: $GNUPGHOME or ~/.gnupg)")
    parser.add_argument("--input-type", choices=("yaml", "json"),
                        help="file format (default: from the extension)")


def _check_file(path: str) -> None:
    from reconciler.errors import UsageError

    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")


def decrypt(args: argparse.Namespace) -> int:
    from reconciler.secrets import formats, sops
    from reconciler.secrets.gpg import Gpg

    _check_file(args.file)
    fmt = formats.format_for(args.file, args.input_type)
    text = Path(args.file).read_text(encoding="utf-8")
    doc = sops.decrypt(text, gpg=Gpg(args.gnupghome), fmt=fmt, keep_comments=True,
                       ignore_mac=args.ignore_mac)
    sys.stdout.write(formats.dumps(doc, fmt))
    return 0


def encrypt(args: argparse.Namespace) -> int:
    from reconciler.errors import UsageError
    from reconciler.secrets import sops
    from reconciler.secrets.gpg import Gpg

    _check_file(args.file)
    recipients = [fp.strip() for fp in args.pgp.split(",") if fp.strip()]
    if not recipients:
        raise UsageError("--pgp needs at least one fingerprint")
    rules = sops.CryptRules(
        unencrypted_suffix=args.unencrypted_suffix or "",
        encrypted_suffix=args.encrypted_suffix or "",
        unencrypted_regex=args.unencrypted_regex or "",
        encrypted_regex=args.encrypted_regex or "",
    )
    out = sops.encrypt_file(args.file, recipients, gpg=Gpg(args.gnupghome),
                            fmt=args.input_type, rules=rules)
    sys.stdout.write(out)
    return 0
