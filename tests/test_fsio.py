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


def test_temp_files_have_recognisable_names(tmp_path: Path, monkeypatch) -> None:
    import os

    from reconciler import fsio

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(fsio.os, "replace", spy)
    atomic_write(tmp_path / "dev.pem", b"x")
    assert len(seen) == 1 and fsio.is_temp_name(seen[0])
    assert seen[0].startswith(f".meshops-tmp.{os.getpid()}.dev.pem.")


def test_remove_stale_temps_removes_only_dead_writers_temp_files(tmp_path: Path) -> None:
    import os
    import subprocess

    from reconciler.fsio import remove_stale_temps

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        stale = tmp_path / f".meshops-tmp.{dead.pid}.a.pem.x1"
        odd = tmp_path / ".meshops-tmp.garbage"  # no pid: not a live writer's
        mine = tmp_path / f".meshops-tmp.{os.getpid()}.b.pem.x2"
        theirs = tmp_path / f".meshops-tmp.{live.pid}.c.pem.x3"
        legacy = tmp_path / ".d.pem.ab12_x9z.tmp"
        for p in (stale, odd, mine, theirs, legacy):
            p.write_text("t")
        (tmp_path / "keep.pem").write_text("k")
        (tmp_path / ".meshops-tmp.1.dir").mkdir()  # directories are never touched
        link_target = tmp_path / "target"
        link_target.write_text("t")
        (tmp_path / f".meshops-tmp.{dead.pid}.link").symlink_to(link_target)
        assert remove_stale_temps(tmp_path) == 2
        names = {p.name for p in tmp_path.iterdir()}
        assert stale.name not in names and odd.name not in names
        assert {mine.name, theirs.name, legacy.name, "keep.pem", "target"} <= names
        assert remove_stale_temps(tmp_path, legacy=True) == 1
        assert legacy.name not in {p.name for p in tmp_path.iterdir()}
        assert link_target.read_text() == "t"
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_interrupted_write_removes_its_temp_file(tmp_path: Path, monkeypatch) -> None:
    from reconciler import fsio

    def boom(src, dst):
        raise KeyboardInterrupt  # Ctrl-C between write and rename

    monkeypatch.setattr(fsio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_many([(tmp_path / f"f{i}", b"x") for i in range(BATCH_SYNC_THRESHOLD + 1)])
    assert list(tmp_path.iterdir()) == []
