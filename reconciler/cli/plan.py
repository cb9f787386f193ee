"""``meshops plan`` and ``meshops device add``.

``meshops plan [REPO] --base REV [--head REV] [--format markdown|json|text]``
loads the repository at two revisions through ``reconciler.config.load`` and
prints ``reconciler.policy.review.review_diff`` of them: devices added, removed
and changed, and the reachability diff. Without ``--head`` the head side is
the working tree of REPO (uncommitted edits included), which is what a
developer wants before committing; CI passes ``--head HEAD``. Exit codes: 0
(plan printed, whether or not anything changes), 1 (either side is invalid:
its problems go to stderr), 2 (not a repository, unknown revision: the message
names the fix, see ``reconciler.cli.repo.load_explained``). Under the diff it
lists the head side's devices that expired or expire within 14 days
(``policy.review.expiring``; ``--at TIME`` judges at another time than now).

``meshops device add --org ORG NAME --wireguard-key K --identity-key K
[--owner U] [--tag T]... [--relay --endpoint HOST:PORT] [--repo PATH]``
allocates tunnel addresses and writes ``orgs/ORG/devices/NAME.yaml`` through
``reconciler.config.writer.add_device``. Exit codes: 0 written, 1 refused
(invalid repository, duplicate, CIDR full), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.config.loader import LoadResult

FORMATS = ("markdown", "json", "text")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="show what a change does: devices and reachability (PR comment)",
        description="Compare the org repository at --base with --head (default: the working "
        "tree) and report devices added/removed/changed and the pairs of devices that gain or "
        "lose access. Exit 0 printed, 1 a side is invalid, 2 cannot run.")
    p.add_argument("repo", nargs="?", default=".", help="repository directory (default: .)")
    p.add_argument("--base", required=True, metavar="REV",
                   help="git revision before the change, e.g. origin/main")
    p.add_argument("--head", metavar="REV",
                   help="git revision after the change (default: the working tree)")
    p.add_argument("--format", choices=FORMATS, default="markdown",
                   help="output format (default: markdown, ready for a PR comment)")
    p.add_argument("--at", metavar="TIME", type=_when,
                   help="judge device expiry at this time (2027-01-31 or RFC 3339; "
                        "default: now)")
    p.set_defaults(handler=plan)

    dev = sub.add_parser("device", help="manage device files")
    dsub = dev.add_subparsers(dest="device_command", metavar="COMMAND", parser_class=type(dev))
    dsub.required = True
    add = dsub.add_parser(
        "add", help="allocate tunnel IPs and write orgs/ORG/devices/NAME.yaml",
        description="Allocate the lowest free tunnel address(es) of the org and write the "
        "device file. Never renumbers other devices; refuses duplicate names and keys; the "
        "repository must be valid before and after. Exit 0 written, 1 refused, 2 bad args.")
    add.add_argument("name", help="device name (a DNS label; also the file name)")
    add.add_argument("--org", required=True, help="organization (orgs/ORG)")
    add.add_argument("--wireguard-key", required=True, metavar="KEY",
                     help="WireGuard public key (base64, from `meshops agent init`)")
    add.add_argument("--identity-key", required=True, metavar="KEY",
                     help="Ed25519 identity public key (base64, from `meshops agent init`)")
    add.add_argument("--owner", metavar="USER", help="owner (default: the org's first owner)")
    add.add_argument("--tag", action="append", default=[], metavar="TAG",
                     help="a tag; repeat for more")
    add.add_argument("--relay", action="store_true", help="the device relays for others")
    add.add_argument("--endpoint", metavar="HOST:PORT", help="static public endpoint")
    add.add_argument("--description", default="", help="free text")
    add.add_argument("--expires", metavar="TIME", type=_expires,
                     help="when the device leaves the mesh (2027-01-31 or RFC 3339); default: "
                          "the org's defaults.device_lifetime_days from now, else never")
    add.add_argument("--repo", default=".", help="repository directory (default: .)")
    add.set_defaults(handler=device_add)


def _expires(text: str) -> str:
    _when(text)
    return text


def _when(text: str) -> float:
    from reconciler.model.repo import parse_expiry

    at = parse_expiry(text)
    if at is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (2027-01-31) or an RFC 3339 "
                                         "time with a zone (2027-01-31T12:00:00Z)")
    return at


def render_expiring(items: Any, fmt: str) -> str:
    """The devices of the head side that expired or expire within 14 days."""
    from reconciler.policy.review import WARN_DAYS

    if not items:
        return ""
    def when(e: Any) -> str:
        return "expired" if e.expired else f"in {e.days_left:.1f} days"
    if fmt == "markdown":
        rows = [f"| {e.org} | {e.device} | {e.owner} | {e.expires} | {when(e)} |"
                for e in items]
        return "\n".join([f"\n### Devices expiring within {WARN_DAYS} days\n",
                          "| org | device | owner | expires | |", "|---|---|---|---|---|",
                          *rows]) + "\n"
    return "".join([f"\ndevices expiring within {WARN_DAYS} days:\n",
                    *(f"  {e.org}/{e.device} (owner {e.owner}): {e.expires}, {when(e)}\n"
                      for e in items)])


def _print_problems(side: str, problems: Any) -> None:
    print(f"meshops plan: {side} is invalid ({len(problems)} problem(s)):", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def plan(args: argparse.Namespace) -> int:
    import json
    import time

    from reconciler.cli.repo import load_explained
    from reconciler.policy.review import (
        expiring,
        render_json,
        render_markdown,
        render_text,
        review_diff,
    )

    def redo(path: str) -> str:
        head = f" --head {args.head}" if args.head else ""
        return f"meshops plan {path} --base {args.base}{head}"

    base = load_explained(args.repo, args.base, redo=redo)
    head = load_explained(args.repo, args.head, redo=redo)
    bad = 0
    for side, result in ((f"base {args.base}", base),
                         (f"head {args.head or '(working tree)'}", head)):
        if result.repo is None:
            _print_problems(side, result.problems)
            bad = 1
    if bad or base.repo is None or head.repo is None:
        return 1
    report = review_diff(base.repo, head.repo)
    soon = expiring(head.repo, args.at if args.at is not None else time.time())
    if args.format == "json":
        doc = json.loads(render_json(report))
        doc["expiring"] = [e.as_dict() for e in soon]
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    render = {"markdown": render_markdown, "text": render_text}
    sys.stdout.write(render[args.format](report) + render_expiring(soon, args.format))
    return 0


def device_add(args: argparse.Namespace) -> int:
    import time

    from reconciler.cli.repo import load_explained
    from reconciler.config.writer import NewDevice, add_device, tags_of
    from reconciler.errors import ValidationError

    req = NewDevice(
        org=args.org, name=args.name, wireguard_key=args.wireguard_key,
        identity_key=args.identity_key, owner=args.owner, tags=tags_of(args.tag),
        relay=args.relay, endpoint=args.endpoint, description=args.description,
        expires=args.expires,
    )
    def load(path: Path) -> LoadResult:
        return load_explained(path, None, redo=lambda p: f"meshops device add --repo {p} ...")

    try:
        added = add_device(args.repo, req, load=load, now=time.time())
    except ValidationError as exc:
        print(f"meshops device add: refused, nothing written ({len(exc.problems)} problem(s)):",
              file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"wrote {added.rel_path}")
    print(f"  owner:      {added.owner}")
    print(f"  tunnel_ips: {', '.join(added.tunnel_ips)}")
    if added.expires:
        print(f"  expires:    {added.expires}")
    return 0
