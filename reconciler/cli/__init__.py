"""The ``meshops`` command line: the only place that prints and picks exit codes.

``main()`` builds one argparse tree. Each command group lives in its own module
here (``repo``, ``secrets``, ``pki``, ``hub``, ``agent``, ``lab``) and exposes
``register(subparsers)``; handlers take the parsed ``args`` and return an exit
code. Group modules import only the standard library at module level and
import their layer lazily inside handlers, so ``meshops agent apply`` does not
pay for the hub's imports.

Exit codes: 0 success, 1 invalid/refused/permanent error, 2 usage (cannot run),
75 temporary failure (EX_TEMPFAIL, retry later).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Sequence

DESCRIPTION = ("GitOps WireGuard meshes: validate an org repository, review a change, publish "
               "signed manifests, run the hub and the agents.")
GROUPS = (
    "reconciler.cli.repo",  # validate
    "reconciler.cli.plan",  # plan, device add
    "reconciler.cli.secrets",  # secrets encrypt/decrypt
    "reconciler.cli.pki",  # ca init, manifest verify
    "reconciler.cli.hub",  # hub publish, hub serve
    "reconciler.cli.agent",  # agent init/apply/run/status/render
    "reconciler.cli.lab",  # lab up/down/status
)


def package_version() -> str:
    """The installed distribution's version (``[project].version`` in pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshops")
    except PackageNotFoundError:  # run from a source tree that was never pip-installed
        return "unknown (not installed: pip install -e . in the source tree)"


class _VersionAction(argparse.Action):
    """``--version``; reads the package metadata only when asked (fast agent starts)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"meshops {package_version()}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 itself; keep that, add usage
        self.print_usage(sys.stderr)
        sys.stderr.write(f"meshops: error: {message}\n")
        raise SystemExit(2)


# A command whose whole group is one module: ``meshops agent ...`` (run by every
# device, every pass) builds only that group's parser. The other groups' modules
# and parsers cost ~45 ms, as much as a 10,000-peer pass's plan.
ALONE = {"agent": "reconciler.cli.agent"}


def command_of(argv: Sequence[str]) -> str | None:
    """The top-level command in ``argv``: the first word that is not an option
    (the top-level options, ``-v`` and ``--version``, take no value)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole tree; for a command in ``ALONE`` (named in ``argv``) only its group."""
    parser = _Parser(prog="meshops", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the installed version (package metadata) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    alone = ALONE.get(command_of(argv)) if argv is not None else None
    for name in (alone,) if alone else GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a group not built yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command in this process (tests, other Python code): what a
    handler set up for its process's exit is undone afterwards (a quick exit
    asked for, values kept for it, the cyclic collector switched off)."""
    global _quick_exit, _kept
    collecting = gc.isenabled()
    try:
        return _main(argv)
    finally:
        _quick_exit, _kept = False, ()
        if collecting:
            gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    from reconciler.errors import MeshopsError, TemporaryError, UsageError

    global _quick_exit, _kept
    _quick_exit, _kept = False, ()  # a handler asks again (exit_quickly) in each call
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"meshops: {exc}", file=sys.stderr)
        return 2
    except TemporaryError as exc:
        print(f"meshops: temporary failure: {exc} (retry in {exc.delay:g}s)", file=sys.stderr)
        return 75
    except MeshopsError as exc:
        print(f"meshops: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


# Set by a handler whose process ends with a large heap and nothing left to
# clean up (``agent apply``): ``run`` then leaves without the interpreter's
# teardown, which frees every object one by one (~25-30 ms after a
# 10,000-peer pass).
_quick_exit = False
_kept: tuple[object, ...] = ()


def exit_quickly(*keep: object) -> None:
    """Ask ``run`` to end the process without the interpreter's teardown:
    output is flushed and logging shut down first; atexit handlers and
    finalizers do not run, so only a handler with nothing left open calls it.
    ``keep``: values to leave alive until then (not freed one by one when the
    handler returns)."""
    global _quick_exit, _kept
    _quick_exit, _kept = True, keep


def run() -> None:
    """The ``meshops`` console script: one command, then the process ends
    (without the interpreter's teardown when the handler asked for it)."""
    code = _main(None)
    if _quick_exit:
        import os

        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            code = code or 1
        os._exit(code)
    sys.exit(code)
