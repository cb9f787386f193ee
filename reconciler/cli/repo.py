"""``meshops validate [REPO] [--rev REV] [--format text|json|github]``.

Loads the org repository through ``reconciler.config.load`` and prints every
problem: one ``file:line: CODE: message (fix: remedy)`` line each (text),
GitHub Actions ``::error`` annotations (github), or one JSON object (json).
Exit codes: 0 valid, 1 invalid, 2 cannot run (not a repository, bad revision).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check an org repository: schema, semantics, "
                       "policy tests",
                       description="Check an org repository (schema, semantic checks, every "
                       "policy test) and report all problems with file:line. Exit 0 valid, "
                       "1 invalid, 2 cannot run.")
    p.add_argument("repo", nargs="?", default=".", help="repository directory (default: .)")
    p.add_argument("--rev", help="validate this git revision (read from the object database, "
                   "no checkout) instead of the working tree")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="output format (default: text)")
    p.set_defaults(handler=validate)


def _github_escape(text: str, prop: bool = False) -> str:
    # https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _prefixed(repo: str, file: str) -> str:
    """File path as seen from the current directory (GitHub resolves from the checkout)."""
    if repo in ("", "."):
        return file
    return f"{repo.rstrip('/')}/{file}"


def validate(args: argparse.Namespace) -> int:
    from reconciler.config import load

    result = load(args.repo, args.rev)
    problems = result.problems
    if args.format == "json":
        print(json.dumps({"valid": result.valid, "commit": result.commit,
                          "problems": [p.as_dict() for p in problems]}, indent=2))
    elif args.format == "github":
        for p in problems:
            file = _github_escape(_prefixed(args.repo, p.file), prop=True)
            text = f"{p.message} (fix: {p.remedy})" if p.remedy else p.message
            print(f"::error file={file},line={p.line},title={_github_escape(p.code, True)}::"
                  f"{_github_escape(text)}")
        if result.valid:
            print(f"meshops validate: {args.repo} is valid")
    else:
        for p in problems:
            print(str(p))
        where = args.repo + (f" at {args.rev}" if args.rev else "")
        if result.repo is not None:
            orgs = result.repo.orgs
            devices = sum(len(o.devices) for o in orgs.values())
            print(f"{where}: valid ({len(orgs)} org(s), {devices} device(s))")
        else:
            files = len({p.file for p in problems})
            print(f"{where}: {len(problems)} problem(s) in {files} file(s)")
    return 0 if result.valid else 1
