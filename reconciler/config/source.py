"""Where repository files come from: a working tree or a git revision.

The only gitpython user. Called by ``reconciler.config.loader``. A git revision
is read straight from the object database: the commit's tree objects are walked
once (no checkout, no per-file subprocess; blob contents come through
gitpython's persistent ``git cat-file --batch``). Each entry carries its git
blob id, so the loader's ``BlobCache`` can skip unchanged files without reading
them. Working-tree entries have no blob id; the loader keys them by content.

Only the paths a repository can hold are listed: ``mesh.yaml`` and everything
under ``orgs/`` (``secrets/``, ``.github/`` and the rest are not ours to read).
Nothing there is skipped in silence: every path comes back with its type
(``file``, ``dir``, ``symlink``, ``submodule`` or ``special`` for FIFOs,
sockets and devices), directories before their contents, and the loader
decides what each may be. Symbolic links are never followed, in a working
tree (``lstat``) or in a commit (tree entries of mode 120000), so a link can
neither hide a file nor pull one in from outside the repository. Directories
deeper than the layout's (``orgs/ORG/devices/X/``) are listed, not entered.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import UsageError

# Directories of the layout have at most three parts (orgs/ORG/devices); anything
# deeper is listed as a directory and not entered.
MAX_DIR_PARTS = 3
FILE, DIR, SYMLINK, SUBMODULE, SPECIAL = "file", "dir", "symlink", "submodule", "special"


@dataclass(frozen=True)
class Entry:
    """One path relative to the repository root (``/`` separated), its git blob id
    (``None`` in a working tree) and its type: only ``file`` entries are read."""

    path: str
    blob: str | None = None
    type: str = FILE


class RepoSource(Protocol):
    """What the loader reads from."""

    commit: str | None

    def entries(self) -> list[Entry]: ...

    def read(self, entry: Entry) -> bytes: ...

    def lookup(self, rel: str) -> Entry | None: ...

    def read_many(self, entries: list[Entry]) -> Iterator[tuple[Entry, bytes]]: ...


class WorkTreeSource:
    """Files on disk under ``root``. Symlinks are listed as such, never followed."""

    commit: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = root

    def entries(self) -> list[Entry]:
        out = []
        for name in ("mesh.yaml", "orgs"):
            try:
                st = os.lstat(self.root / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot read {self.root / name}: {exc.strerror}") from exc
            kind = _mode_type(st.st_mode)
            out.append(Entry(name, None, kind))
            if name == "orgs" and kind == DIR:
                self._walk(self.root / "orgs", "orgs", out)
        return out

    def _walk(self, directory: Path, rel: str, out: list[Entry]) -> None:
        try:
            with os.scandir(directory) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise UsageError(f"cannot read {directory}: {exc.strerror}") from exc
        enter = rel.count("/") + 2 <= MAX_DIR_PARTS
        for item in items:
            path = f"{rel}/{item.name}"
            if item.is_symlink():
                out.append(Entry(path, None, SYMLINK))
            elif item.is_dir(follow_symlinks=False):
                out.append(Entry(path, None, DIR))
                if enter:
                    self._walk(Path(item.path), path, out)
            elif item.is_file(follow_symlinks=False):
                out.append(Entry(path))
            else:
                out.append(Entry(path, None, SPECIAL))

    def lookup(self, rel: str) -> Entry | None:
        """Any path (``secrets/x.sops.yaml`` too): None when it does not exist, else the
        entry of ``rel`` or of the first component on the way that is not a plain
        directory (a symlinked ``secrets/`` comes back as ``Entry("secrets", type=symlink)``)."""
        parts = rel.split("/")
        for i in range(len(parts)):
            path = "/".join(parts[: i + 1])
            try:
                kind = _mode_type(os.lstat(self.root / path).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
            if kind != DIR or i == len(parts) - 1:
                return Entry(path, None, kind)
        return None

    def read(self, entry: Entry) -> bytes:
        """The file's bytes; refuses a path that became a link or a FIFO since listing."""
        try:
            fd = os.open(os.path.join(self.root, entry.path),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"cannot read {entry.path}: no longer a regular file")
            data = os.read(fd, st.st_size + 1)
            if len(data) <= st.st_size:  # a short read of a regular file is its end
                return data
            chunks = [data]  # the file grew since fstat
            while chunks[-1]:
                chunks.append(os.read(fd, 1 << 20))
            return b"".join(chunks)
        except OSError as exc:
            raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def read_many(self, entries: list[Entry]) -> Iterator[tuple[Entry, bytes]]:
        for entry in entries:
            yield entry, self.read(entry)


def _mode_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISDIR(mode):
        return DIR
    return FILE if stat.S_ISREG(mode) else SPECIAL


TreeCache = dict[bytes, list[tuple[str, str, bytes]]]
_GIT_MODES = {b"40000": DIR, b"100644": FILE, b"100755": FILE, b"100664": FILE,
              b"120000": SYMLINK, b"160000": SUBMODULE}


def parse_tree(data: bytes) -> list[tuple[str, str, bytes]]:
    """Raw git tree object -> ``(name, type, binsha)`` for every entry.

    Format (git's tree-objects): repeated ``<octal mode> SP <name> NUL <20-byte sha>``.
    Modes: 40000 tree, 100644/100755 file (100664 in old repositories), 120000
    symlink, 160000 submodule (gitlink); anything else is reported as special."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        kind = _GIT_MODES.get(data[pos:space], SPECIAL)
        out.append((data[space + 1: nul].decode("utf-8", "surrogateescape"), kind,
                    data[nul + 1: nul + 21]))
        pos = nul + 21
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
            found = [sha for name, kind, sha in self._tree(self._root)
                     if name == part and kind == DIR]
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
        for name, kind, sha in self._tree(self._root):
            if name in ("mesh.yaml", "orgs"):
                out.append(Entry(name, sha.hex(), kind))
                if name == "orgs" and kind == DIR:
                    self._walk(sha, "orgs", out)
        return out

    def _walk(self, binsha: bytes, rel: str, out: list[Entry]) -> None:
        enter = rel.count("/") + 2 <= MAX_DIR_PARTS
        for name, kind, sha in self._tree(binsha):
            path = f"{rel}/{name}"
            out.append(Entry(path, sha.hex(), kind))
            if kind == DIR and enter:
                self._walk(sha, path, out)

    def lookup(self, rel: str) -> Entry | None:
        """As ``WorkTreeSource.lookup``, from the commit's tree objects (a symlink is a
        tree entry of mode 120000 and is returned as such, never resolved)."""
        tree = self._root
        parts = rel.split("/")
        for i, part in enumerate(parts):
            found = next(((k, sha) for name, k, sha in self._tree(tree) if name == part), None)
            if found is None:
                return None
            kind, sha = found
            if kind != DIR or i == len(parts) - 1:
                return Entry("/".join(parts[: i + 1]), sha.hex(), kind)
            tree = sha
        return None

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
