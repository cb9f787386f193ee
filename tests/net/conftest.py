"""A fresh network namespace per test for the root tests in tests/net."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

_seq = count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace this test owns (unique per process and test); deleted afterwards,
    tolerating "already gone"."""
    name = f"mo-net-{os.getpid()}-{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# The firewall tests reuse the policy tests' org builders (tests/policy/fworgs.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))


@pytest.fixture
def nft_netns(netns: str) -> str:
    """``netns``, when the real ``nft`` is installed."""
    if shutil.which("nft") is None:
        pytest.skip("nft not installed: apt-get install nftables (scripts/_env.sh does)")
    return netns
