"""reconciler.fsio: atomic replacement, modes, the batch path, cleanup on failure."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from reconciler.fsio import BATCH_SYNC_THRESHOLD, atomic_write, atomic_write_many


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_creates_parents_sets_mode_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "secret.key"
    atomic_write(target, b"one", mode=0o600)
    atomic_write(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.key"]  # no temp left


@pytest.mark.parametrize("count", [3, BATCH_SYNC_THRESHOLD + 6])
def test_atomic_write_many_writes_every_file(tmp_path: Path, count: int) -> None:
    items = [(tmp_path / "certs" / f"d{i}.pem", f"pem {i}".encode()) for i in range(count)]
    atomic_write_many(items)
    assert {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()} == {
        f"d{i}.pem": f"pem {i}".encode() for i in range(count)
    }
    assert {_mode(p) for p, _ in items} == {0o644}


def test_failed_rename_removes_the_temp_files(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write_many([(tmp_path / "ok", b"x"), (tmp_path / "taken", b"y")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "taken"]
