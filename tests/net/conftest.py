"""A fresh network namespace per test for the root tests in tests/net."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from itertools import count

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
