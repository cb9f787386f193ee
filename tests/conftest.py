"""Shared test policy.

Tests marked ``root`` need root (network namespaces, wireguard-go, iptables).
Outside CI they skip with a reason; in CI (``CI=true``) a missing privilege or
tool is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IS_ROOT = os.geteuid() == 0
ROOT_TOOLS = ("ip", "wireguard-go", "wg", "iptables", "ping")


def _root_problem() -> str | None:
    if not IS_ROOT:
        return "needs root (network namespaces, wireguard-go); CI runs as root"
    missing = [t for t in ROOT_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools {missing}; scripts/test installs them"
    return None


def pytest_collection_modifyitems(config, items):
    problem = _root_problem()
    if problem is None:
        return
    for item in items:
        needs_root = item.get_closest_marker("root") or item.get_closest_marker("e2e")
        if needs_root and not IN_CI:  # in CI they run, and fail loudly if they cannot
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(scope="session", autouse=True)
def _ci_must_run_root_tests(request):
    if IN_CI and _root_problem() is not None:
        pytest.fail(f"CI must run root tests: {_root_problem()}", pytrace=False)
