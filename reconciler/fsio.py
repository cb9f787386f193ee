"""Atomic file replacement, standard library only.

Readers of a file written here see the old contents or the new, never half:
the data goes to a temp file in the target directory (created with ``mode``
already set, so a 0600 secret never exists with wider permissions), is made
durable, renamed over the target, and the directory is fsynced so the rename
survives a power loss.

Callers: ``hub.publish`` (certificates, manifests, trust, CA files),
``backends.render`` (wg-quick files holding a private key), ``cli.agent``
(trust anchors, rendered configs), and the agent's config, keys and state
dir (``agent.config``, ``agent.keys``, ``agent.state``, through the name
``agent.config`` re-exports). It sits at the bottom layer beside
``errors`` and raises plain ``OSError``; callers translate it where they own
the failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# From this many files on, one ``os.sync()`` replaces per-file fsyncs (which
# dominate a cold publish of 10,000 certificates).
BATCH_SYNC_THRESHOLD = 64


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (file mode ``mode``)."""
    atomic_write_many([(path, data)], mode=mode)


def atomic_write_many(
    items: Iterable[tuple[str | os.PathLike[str], bytes]], *, mode: int = 0o644
) -> None:
    """Replace many files atomically: write every temp file, make them durable (one
    ``os.sync()`` for ``BATCH_SYNC_THRESHOLD`` files or more, else an fsync each),
    rename each over its target, then fsync every directory once."""
    targets = [(Path(path), data) for path, data in items]
    directories = {path.parent for path, _ in targets}
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    batch = len(targets) >= BATCH_SYNC_THRESHOLD
    temps: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for path, data in targets:
            temps.append((_write_temp(path, data, mode, sync=not batch), path))
        if batch:
            os.sync()
        for tmp, path in temps:
            os.replace(tmp, path)
            renamed += 1
    finally:
        for tmp, _ in temps[renamed:]:
            _unlink(tmp)
    for directory in directories:
        fsync_dir(directory)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and unlinks in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int, *, sync: bool) -> str:
    import tempfile  # lazily: it pulls in random/hashlib, and an agent no-op pass writes nothing

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
