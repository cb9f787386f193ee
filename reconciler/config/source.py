"""Where repository files come from: a working tree or a git revision.

The only gitpython user. Called by ``reconciler.config.loader``. A git revision
is read straight from the object database: the commit's tree objects are walked
once (no checkout, no per-file subprocess; blob contents come through
gitpython's persistent ``git cat-file --batch``). Each entry carries its git
blob id, so the loader's ``BlobCache`` can skip unchanged files without reading
them. Working-tree entries have no blob id; the loader keys them by content.

Only the paths a repository can hold are listed: ``mesh.yaml`` and everything
under ``orgs/`` (``secrets/``, ``.github/`` and the rest are not ours to read).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """One file: its path relative to the repository root (``/`` separated),
    and its git blob id (``None`` in a working tree)."""

    path: str
    blob: str | None = None


class RepoSource(Protocol):
    """What the loader reads from."""

    commit: str | None

    def entries(self) -> list[Entry]: ...

    def read(self, entry: Entry) -> bytes: ...

    def read_many(self, entries: list[Entry]) -> Iterator[tuple[Entry, bytes]]: ...


class WorkTreeSource:
    """Files on disk under ``root``. Symlinks are not followed."""

    commit: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> list[Entry]:
        out = []
        if (self.root / "mesh.yaml").is_file():
            out.append(Entry("mesh.yaml"))
        self._walk(self.root / "orgs", "orgs", out, depth=0)
        return out

    def _walk(self, directory: Path, rel: str, out: list[Entry], depth: int) -> None:
        if depth > 3:
            return
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise UsageError(f"cannot read {directory}: {exc.strerror}") from exc
        for item in items:
            if item.is_dir(follow_symlinks=False):
                self._walk(Path(item.path), f"{rel}/{item.name}", out, depth + 1)
            elif item.is_file(follow_symlinks=False):
                out.append(Entry(f"{rel}/{item.name}"))

    def read(self, entry: Entry) -> bytes:
        try:
            with open(os.path.join(self.root, entry.path), "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from exc


TreeCache = dict[bytes, list[tuple[str, bool, bytes]]]


def parse_tree(data: bytes) -> list[tuple[str, bool, bytes]]:
    """Raw git tree object -> ``(name, is_dir, binsha)`` for trees and regular files.

    Format (git's tree-objects): repeated ``<octal mode> SP <name> NUL <20-byte sha>``.
    Symlinks (120000) and submodules (160000) are skipped, as in the working tree."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        mode = data[pos:space]
        sha = data[nul + 1: nul + 21]
        pos = nul + 21
        if mode == b"40000":
            out.append((data[space + 1: nul].decode("utf-8", "surrogateescape"), True, sha))
        elif mode in (b"100644", b"100755"):
            out.append((data[space + 1: nul].decode("utf-8", "surrogateescape"), False, sha))
    return out


class GitSource:
    """Files of one commit, read from the object database. ``trees`` caches parsed
    tree objects by id across loads, so unchanged directories are not re-read."""

    def __init__(self, path: Path, rev: str, trees: TreeCache | None = None) -> None:
        import git  # lazily: a working-tree validate does not pay for gitpython

        try:
            self._repo = git.Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise UsageError(f"{path} is not inside a git repository") from exc
        try:
            commit = self._repo.commit(rev)
        except (git.BadName, git.BadObject, ValueError) as exc:
            raise UsageError(f"revision {rev!r} does not resolve to a commit") from exc
        self.commit: str | None = commit.hexsha
        self._odb = self._repo.odb
        self._trees: TreeCache = trees if trees is not None else {}
        top = Path(self._repo.working_tree_dir or self._repo.git_dir).resolve()
        prefix = Path(path).resolve().relative_to(top).as_posix()
        self._root = commit.tree.binsha
        for part in [p for p in prefix.split("/") if p not in ("", ".")]:
            found = [sha for name, is_dir, sha in self._tree(self._root) if name == part and is_dir]
            if not found:
                raise UsageError(f"{prefix} does not exist at revision {rev!r}")
            self._root = found[0]

    def _tree(self, binsha: bytes) -> list[tuple[str, bool, bytes]]:
        entries = self._trees.get(binsha)
        if entries is None:
            entries = parse_tree(self._odb.stream(binsha).read())
            self._trees[binsha] = entries
        return entries

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        for name, is_dir, sha in self._tree(self._root):
            if name == "mesh.yaml" and not is_dir:
                out.append(Entry("mesh.yaml", sha.hex()))
            elif name == "orgs" and is_dir:
                self._walk(sha, "orgs", out, depth=0)
        return out

    def _walk(self, binsha: bytes, rel: str, out: list[Entry], depth: int) -> None:
        if depth > 3:
            return
        for name, is_dir, sha in self._tree(binsha):
            if is_dir:
                self._walk(sha, f"{rel}/{name}", out, depth + 1)
            else:
                out.append(Entry(f"{rel}/{name}", sha.hex()))

    def read(self, entry: Entry) -> bytes:
        assert entry.blob is not None
        try:
            return bytes(self._odb.stream(bytes.fromhex(entry.blob)).read())
        except Exception as exc:  # gitpython raises several unrelated types here
            raise UsageError(f"cannot read {entry.path} from git: {exc}") from exc

    def read_many(self, entries: list[Entry]) -> Iterator[tuple[Entry, bytes]]:
        """Many blobs through one ``git cat-file --batch``: ids are written by a thread
        while contents are read, so there is no round trip per file."""
        if len(entries) < 32:
            for entry in entries:
                yield entry, self.read(entry)
            return
        proc = subprocess.Popen(["git", f"--git-dir={self._repo.git_dir}", "cat-file", "--batch"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def feed() -> None:
            try:
                stdin.write("".join(f"{e.blob}\n" for e in entries).encode())
                stdin.close()
            except OSError:  # git died; the reader reports it
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        try:
            for entry in entries:
                # "<sha> blob <size>\n<content>\n" or "<sha> missing\n" (git-cat-file(1))
                header = stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise UsageError(f"cannot read {entry.path} from git: "
                                     f"{b' '.join(header).decode(errors='replace') or 'EOF'}")
                size = int(header[2])
                data = stdout.read(size)
                stdout.read(1)
                yield entry, data
        finally:  # kill first: a writer blocked on a full pipe then gets EPIPE
            proc.kill()
            writer.join()
            stdout.close()
            proc.wait()

    def close(self) -> None:
        self._repo.close()


def open_source(path: str | os.PathLike[str], rev: str | None,
                trees: TreeCache | None = None) -> WorkTreeSource | GitSource:
    """A working-tree source (``rev`` None) or a git one. ``UsageError`` when
    ``path`` is not a directory or ``rev`` does not resolve."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if rev is not None:
        return GitSource(root, rev, trees)
    if not (root / "mesh.yaml").exists() and not (root / "orgs").is_dir():
        raise UsageError(f"{root} is not a meshops repository (no mesh.yaml, no orgs/)")
    return WorkTreeSource(root)
