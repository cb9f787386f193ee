"""``meshops hub …``: the hub's commands.

``hub publish`` builds signed manifests and certificates once and writes them
as static files (reconciler.hub.publish). ``hub serve`` (the long-running hub)
registers itself in ``_SUBCOMMANDS`` below: add one ``(name, register_fn)``
pair and a ``_register_<name>`` function; nothing else needs to change.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

Registrar = Callable[["argparse._SubParsersAction"], None]


# -- hub publish ---------------------------------------------------------------------------


def _register_publish(hsub: argparse._SubParsersAction) -> None:
    p = hsub.add_parser("publish", help="build, sign and write manifests + certificates to DIR")
    p.add_argument(
        "repo", nargs="?", type=Path, default=Path("."), help="org repository (default .)"
    )
    p.add_argument("--rev", help="git revision to publish (default: the working tree)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--state", default="sqlite:///.meshops/hub.db",
                   help="certificate/serial store: sqlite:///PATH or postgresql://… "
                        "(default sqlite:///.meshops/hub.db, relative to the current "
                        "directory; every run prints where it is)")  # fmt: skip
    p.add_argument("--gnupghome", help="GnuPG home holding the hub's secret key")
    _gate_options(p)
    p.set_defaults(handler=_publish)


def _gate_options(p: argparse.ArgumentParser, *, commit_key: bool = True) -> None:
    p.add_argument("--gate-signers", metavar="FILE",
                   help="turn the commit gate on and trust these mesh admins' PGP "
                        "fingerprints (one per line) besides mesh.yaml admins: of the last "
                        "published commit; with nothing published yet, the head must be "
                        "signed by one of them (docs/security.md)")
    if commit_key:
        p.add_argument("--commit-key", metavar="KEYID",
                       help="the hub's commit key (in --gnupghome): the commit gate accepts "
                            "its commits only as scoped enrollments and key rotations")


def _publish(args: argparse.Namespace) -> int:
    from reconciler.errors import ValidationError
    from reconciler.hub.gate import bootstrap
    from reconciler.hub.publish import publish

    try:
        gate = bootstrap(args.gate_signers, args.commit_key, args.gnupghome)
        result = publish(
            args.repo,
            rev=args.rev,
            out_dir=args.out,
            state=args.state,
            now=time.time(),
            gpg_home=args.gnupghome,
            gate=gate,
        )
    except ValidationError as exc:
        for problem in exc.problems:
            print(str(problem))
        print(f"{len(exc.problems)} problem(s); nothing published")
        return 1
    for name, org in result.orgs.items():
        print(
            f"{name}: serial {org.manifest.serial}, {len(org.manifest.devices)} devices, "
            f"{len(org.issued)} certificate(s) issued, {len(org.revoked)} revoked "
            f"-> {args.out / name / 'manifest.json'}"
        )
    print(f"commit {result.commit}; trust anchors in {args.out / 'trust.json'}")
    print(f"state (issued certificates, serials): {_state_location(args.state)}; "
          "publish with the same --state next time")
    return 0


def _state_location(url: str) -> str:
    """Where ``--state`` lives, said plainly: an absolute SQLite path, or the
    PostgreSQL URL without its password."""
    from urllib.parse import urlsplit

    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        return path if path == ":memory:" else str(Path(path).resolve())
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        netloc = parts.netloc.rpartition("@")[2]  # host:port, never user:password
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{netloc}{parts.path}"
    return str(Path(url).resolve()) if "://" not in url else url


# -- hub serve (owned by the hub-serve work: reconciler/hub/daemon.py) ----------------------


def _register_serve(hsub: argparse._SubParsersAction) -> None:
    p = hsub.add_parser(
        "serve",
        help="follow a branch, serve signed manifests, the endpoint feed and STUN (mTLS)",
        description="Follow a branch of the org repository (a local checkout watched with "
        "watchdog, or a remote URL fetched every --poll seconds), publish each new commit "
        "and serve it over HTTPS with client certificates. See docs/api.md.",
    )
    p.add_argument("--repo", required=True, help="local checkout PATH or remote git URL")
    p.add_argument(
        "--branch",
        help="branch to follow (default, or empty: the branch checked out in --repo; for a "
        "URL, the remote's default branch)",
    )
    p.add_argument(
        "--listen", default="0.0.0.0:8443", help="HTTPS ADDR:PORT (default 0.0.0.0:8443)"
    )
    p.add_argument("--stun", metavar="ADDR:PORT", help="also answer STUN on this UDP address")
    p.add_argument("--db", help="sqlite:///PATH (default STATE_DIR/hub.db) or postgresql://…")
    p.add_argument(
        "--poll",
        type=float,
        help="seconds between fetches of a remote (default 60) "
        "or re-checks of a local checkout (default 30)",
    )
    p.add_argument("--gnupghome", help="GnuPG home holding the hub's secret key (SOPS)")
    p.add_argument(
        "--state-dir",
        default="/var/lib/meshops/hub",
        help="hub state: SQLite database, git mirror (default /var/lib/meshops/hub)",
    )
    p.add_argument("--tls-cert", help="serve this certificate instead of hub-issued per-org ones")
    p.add_argument("--tls-key", help="private key of --tls-cert")
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="DNS",
        help="extra DNS name for the hub-issued certificates (repeatable); only names "
        "inside the org CA's DNS subtrees (ORG.hub, localhost) are used, others are "
        "dropped with a log line: serve a public host name with --tls-cert/--tls-key",
    )
    p.add_argument("--commit-key", metavar="KEYID",
                   help="GPG key (in --gnupghome) that signs the hub's enrollment commits; "
                        "the commit gate accepts its commits only as scoped enrollments "
                        "and key rotations")
    _gate_options(p, commit_key=False)
    p.add_argument("--oidc-ca-file", metavar="PEM",
                   help="CA bundle for the orgs' OpenID issuers (default: the system store)")
    p.add_argument("--store-poll", type=_seconds, default=0.5, metavar="SECONDS",
                   help="how often to read the store for other replicas' feed changes while "
                        "not listening for them (SQLite, --no-store-listen, or the PostgreSQL "
                        "listener down; default 0.5)")
    p.add_argument("--store-poll-listening", type=_seconds, default=5.0, metavar="SECONDS",
                   help="the same, a safety net, while the PostgreSQL listener is up "
                        "(default 5)")
    p.add_argument("--no-store-listen", dest="store_listen", action="store_false",
                   help="PostgreSQL: do not LISTEN for other replicas' feed changes; learn of "
                        "them by --store-poll only")
    p.set_defaults(handler=_serve)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is outside 0.01..3600 seconds")
    return value


def _serve(args: argparse.Namespace) -> int:
    from reconciler.hub.daemon import ServeConfig, run

    config = ServeConfig(
        repo=args.repo,
        branch=args.branch or None,  # "" (an empty MESHOPS_BRANCH): the checked-out branch
        listen=args.listen,
        stun=args.stun,
        db=args.db,
        poll=args.poll,
        gnupghome=args.gnupghome,
        state_dir=args.state_dir,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_names=tuple(args.tls_name),
        commit_key=args.commit_key,
        gate_signers=args.gate_signers,
        oidc_ca_file=args.oidc_ca_file,
        store_poll=args.store_poll,
        store_poll_listening=args.store_poll_listening,
        store_listen=args.store_listen,
    )
    return run(config)


_SUBCOMMANDS: list[tuple[str, Registrar]] = [
    ("publish", _register_publish),
    ("serve", _register_serve),
]


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="the hub: publish signed manifests, serve agents")
    hsub = hub.add_subparsers(dest="hub_command", metavar="ACTION")
    hsub.required = True
    for _name, registrar in _SUBCOMMANDS:
        registrar(hsub)
