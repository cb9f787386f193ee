"""docs/architecture.md's contracts name functions that exist (issue 9)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _resolve(dotted: str) -> object | None:
    parts = (dotted if dotted.startswith("reconciler.") else f"reconciler.{dotted}").split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object | None = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def test_every_called_name_in_the_architecture_doc_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    names = sorted(set(re.findall(r"`((?:reconciler\.)?[a-z_]+(?:\.[A-Za-z_]+)+)\(", text)))
    assert len(names) > 20  # the contracts section is there
    assert [n for n in names if _resolve(n) is None] == []
    assert _resolve("agent.reconcile.no_such_function") is None  # the check can fail
