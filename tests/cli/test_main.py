"""``reconciler.cli.main``: ``meshops agent ...`` builds only the agent group's
parser (every device runs it every pass), and that parser is the same as in the
whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import ALONE, build_parser, command_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "command"), [
    (["agent", "apply"], "agent"), (["-v", "agent", "run"], "agent"),
    (["-vv", "hub", "serve"], "hub"), (["--version"], None), ([], None),
    (["--", "agent"], None), (["validate", "agent"], "validate"),
])
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def _choices(parser) -> set[str]:
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


def _help(parser, *path: str) -> str:
    for name in path:
        (sub,) = [a for a in parser._actions if hasattr(a, "choices") and
                  isinstance(a.choices, dict) and name in a.choices]
        parser = sub.choices[name]
    return parser.format_help()


def test_agent_commands_build_only_the_agent_group_and_the_same_parser() -> None:
    whole = build_parser()
    assert {"validate", "plan", "hub", "agent", "lab"} <= _choices(whole)
    assert _choices(build_parser(["agent", "apply"])) == {"agent"} == set(ALONE)
    assert _choices(build_parser(["hub", "serve"])) == _choices(whole)
    assert _choices(build_parser(["agentx"])) == _choices(whole)  # its error lists all
    for path in (("agent",), ("agent", "apply"), ("agent", "run"), ("agent", "init")):
        assert _help(build_parser(["-v", *path]), *path) == _help(whole, *path)
    args = build_parser(["agent", "apply"]).parse_args(
        ["-v", "agent", "apply", "--config", "x.json", "--dry-run"])
    assert (args.verbose, args.command, args.agent_command, args.config, args.dry_run) == \
        (1, "agent", "apply", "x.json", True)


def test_agent_apply_loads_no_other_command_group() -> None:
    code = ("import sys\nfrom reconciler.cli import main\ntry:\n    main(['agent', 'apply', "
            "'--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in sys.modules "
            "if m.startswith('reconciler.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    assert out == "['reconciler.cli.agent']"


QUICK = """
import atexit, sys
from reconciler import cli
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
def main(argv):
    print("x" * 200_000)
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "quick":
        cli.exit_quickly()
    return 3
cli._main = main
cli.run()
"""


@pytest.mark.parametrize("how", ["quick", "normal"])
def test_run_leaves_quickly_only_when_asked_and_loses_no_output(how) -> None:
    """``exit_quickly`` (``agent apply``): the process ends without the
    interpreter's teardown, but with its exit code and all of its output."""
    done = subprocess.run([sys.executable, "-c", QUICK, how], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "x" * 200_000 + "\n"
    assert done.stderr.startswith("to stderr\n")
    assert ("atexit ran" in done.stderr) == (how == "normal")


def test_main_forgets_an_earlier_quick_exit(tmp_path) -> None:
    """In one process (tests), a quick exit asked for by one call is not left
    behind for the next one."""
    from reconciler import cli

    cli.exit_quickly()
    assert cli.main(["agent", "status", "--config", str(tmp_path / "none.json")]) != 0
    assert cli._quick_exit is False


def test_main_undoes_what_a_handler_set_up_for_its_exit(monkeypatch) -> None:
    """``agent apply`` switches the cyclic collector off and keeps its values for
    a quick exit; called in-process, ``main`` puts both back."""
    import gc

    from reconciler import cli

    def handler(argv):
        gc.disable()
        cli.exit_quickly(["a big value"])
        return 0

    monkeypatch.setattr(cli, "_main", handler)
    assert gc.isenabled()
    assert cli.main([]) == 0
    assert gc.isenabled() and cli._quick_exit is False and cli._kept == ()
