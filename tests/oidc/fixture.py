"""pytest fixtures around the real OpenID provider (tests/oidc/harness.py).

Import them into a test module or conftest (``from oidc.fixture import
oidc  # noqa: F401``). ``oidc`` is one provider for the whole session;
``make_oidc`` starts extra ones (another issuer, or one whose keys a test
rotates), each stopped by its pid at the end of the test. Without node or the
npm package the tests skip with the reason, except in CI, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oidc.harness import Provider, missing

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need_provider() -> None:
    why = missing()
    if why is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run the OIDC tests: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    _need_provider()
    provider = Provider(tmp_path_factory.mktemp("oidc")).start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def make_oidc(tmp_path: Path) -> Iterator[Callable[[], Provider]]:
    _need_provider()
    started: list[Provider] = []

    def make() -> Provider:
        provider = Provider(tmp_path / f"oidc-{len(started)}").start()
        started.append(provider)
        return provider

    try:
        yield make
    finally:
        for provider in started:
            provider.stop()
