"""The pure packages (reconciler.model, .converge, .policy) stay pure.

pyproject.toml's import-linter contract "Pure packages import no I/O
libraries" is the one list; these tests read it from there, so the contract,
this test and tests/converge/test_property.py cannot drift apart:

- at run time, importing the pure packages loads none of the third-party
  libraries on the list, nor a higher meshops layer (stdlib modules such as
  ``os`` are loaded by the stdlib itself, so only direct imports count for them);
- by AST, no module in the pure packages imports anything on the list,
  not even lazily inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = ("reconciler.model", "reconciler.converge", "reconciler.policy")
# The agent pass's pure modules (issue 9): same forbidden list; they may import
# other agent modules, so the higher-layer rule applies to the packages only.
PURE_AGENT = ("reconciler.agent.decide", "reconciler.agent.inputs", "reconciler.agent.memory",
              "reconciler.agent.paths", "reconciler.agent.peering", "reconciler.agent.desired",
              "reconciler.agent.keyage")
HIGHER_LAYERS = ("reconciler.config", "reconciler.pki", "reconciler.secrets", "reconciler.hub",
                 "reconciler.agent", "reconciler.backends", "reconciler.net", "reconciler.stun")
# What the issue (#9, item 6) requires the contract to forbid at the least.
REQUIRED = {"os", "time", "pathlib", "random", "socket", "ssl", "http", "urllib", "threading",
            "yaml", "jsonschema", "git", "pyroute2", "gnupg", "stun", "aiohttp", "subprocess",
            "psycopg", "watchdog"}


def purity_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == "Pure packages import no I/O libraries")


def test_contract_covers_the_pure_packages_and_the_required_modules() -> None:
    contract = purity_contract()
    assert sorted(contract["source_modules"]) == sorted(PURE + PURE_AGENT)
    missing = REQUIRED - set(contract["forbidden_modules"])
    assert not missing, f"purity contract lacks {sorted(missing)}"


def test_import_loads_no_io_library_and_no_higher_layer() -> None:
    third_party = [m for m in purity_contract()["forbidden_modules"]
                   if m not in sys.stdlib_module_names]
    watched = tuple(third_party) + HIGHER_LAYERS
    code = (
        "import sys, json\n"
        + "".join(f"import {p}\n" for p in PURE)
        + "import reconciler.policy.review, reconciler.converge.planner\n"
        f"bad = [m for m in {watched!r} if m in sys.modules]\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert json.loads(out) == []


def direct_imports(package: str) -> list[tuple[str, int, str]]:
    """(file, line, imported module) for every import statement in ``package``
    (a package directory, or a single module)."""
    found = []
    base = ROOT / package.replace(".", "/")
    paths = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append((path.name, node.lineno, node.module))
    return found


def test_no_pure_module_imports_a_forbidden_module() -> None:
    forbidden = set(purity_contract()["forbidden_modules"])
    for package in PURE:
        imports = direct_imports(package)
        assert imports, f"{package}: no modules found (renamed?)"
        for file, line, name in imports:
            assert name.split(".")[0] not in forbidden, f"{package} {file}:{line} imports {name}"
            assert not name.startswith(HIGHER_LAYERS), f"{package} {file}:{line} imports {name}"


def test_no_pure_agent_module_imports_a_forbidden_module() -> None:
    forbidden = set(purity_contract()["forbidden_modules"])
    for module in PURE_AGENT:
        imports = direct_imports(module)
        assert imports, f"{module}: no imports found (renamed?)"
        for file, line, name in imports:
            assert name.split(".")[0] not in forbidden, f"{module} {file}:{line} imports {name}"


def test_the_ast_check_would_catch_a_lazy_import(tmp_path: Path) -> None:
    # The checker must see imports inside functions too (a lazy `import time`).
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import time\n    return time.time()\n")
    names = [a.name for node in ast.walk(ast.parse(module.read_text()))
             if isinstance(node, ast.Import) for a in node.names]
    assert names == ["time"] and "time" in purity_contract()["forbidden_modules"]
