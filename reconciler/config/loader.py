"""Load an org repository (working tree or git revision) into a validated ``Repo``.

``load()`` is the entry point behind ``reconciler.config.load``; ``meshops
validate``, ``meshops plan``, ``hub publish`` and ``hub serve`` call it. It
collects every problem at once: YAML, schema, per-file and whole-org semantic
checks, then the policy tests of each org that is otherwise clean.

Every path the source lists is either read or reported (``layout_problem``):
a symbolic link, a directory where a file belongs (``policy.yaml/``), a file
where a directory belongs (``orgs``), an unknown file or directory under
``orgs/`` are all errors with a fix, never skipped in silence, because a path
that is skipped changes the mesh (a dropped device, an org without its policy).

Per-file work (read, YAML, schema, model object, per-file checks) is cached in
a ``BlobCache`` keyed by path and git blob id (content hash for working trees),
so reloading after a one-file commit parses one file.

``orgs/ORG/roots/N.json`` (N = 1, 2, ... without leading zeros) are the org's
signed trust roots (``meshops ca init`` and ``ca rotate`` write them). Here
they are checked for shape only: a bounded JSON object, and no gap in the
versions (a gap breaks every agent's walk). The signatures are checked by the
hub publisher with ``reconciler.pki.root`` (config sits below pki in the
layers), which reports a bad root at its file too.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from reconciler.boundedjson import loads as bounded_loads
from reconciler.config import build, schema, semantic
from reconciler.config.source import (
    DIR,
    FILE,
    SPECIAL,
    SUBMODULE,
    SYMLINK,
    Entry,
    RepoSource,
    open_source,
)
from reconciler.config.yamlload import Document, load_yaml
from reconciler.errors import InputRefused, Problem, UsageError
from reconciler.model.repo import (
    Device,
    Mesh,
    Organization,
    OrgState,
    Policy,
    Repo,
    Source,
    User,
)


@dataclass(frozen=True)
class LoadResult:
    """``repo`` is None when any error exists; ``problems`` lists them all, sorted by
    file and line; ``commit`` is the git commit read (None for a working tree)."""

    repo: Repo | None
    problems: tuple[Problem, ...]
    commit: str | None

    @property
    def valid(self) -> bool:
        return self.repo is not None


@dataclass(frozen=True)
class Parsed:
    """The cached outcome of one file: its model object (None when it failed the
    YAML or schema stage) and the problems found in the file alone."""

    obj: Any
    problems: tuple[Problem, ...]


@dataclass
class BlobCache:
    """Parsed files keyed by ``(path, blob id or content hash)``. Pass the same
    instance to successive ``load`` calls; only files whose blob changed are parsed
    again. ``hits``/``misses`` count lookups of the last load."""

    entries: dict[tuple[str, str], Parsed] = field(default_factory=dict)
    trees: dict[bytes, list[tuple[str, str, bytes]]] = field(default_factory=dict)
    ips: dict[str, tuple[int, int]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def __len__(self) -> int:
        return len(self.entries)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        """Drop everything not used by the last load, so memory stays bounded."""
        if len(keys) != len(self.entries):
            self.entries = {k: v for k, v in self.entries.items() if k in keys}
        if len(self.trees) > 4096:
            self.trees.clear()
        if len(self.ips) > 4 * len(self.entries) + 1024:
            self.ips.clear()


@dataclass
class _OrgFiles:
    """What one load found under ``orgs/<org>/``."""

    org: Organization | None = None
    users: dict[str, User] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    policy: Policy | None = None
    ca: str | None = None
    roots: dict[int, bytes] = field(default_factory=dict)  # version -> envelope
    broken: set[str] = field(default_factory=set)  # "users/NAME", "devices/NAME"
    has_org_file: bool = False
    has_policy_file: bool = False
    has_problems: bool = False
    layout_broken: bool = False  # users/ or devices/ is not a readable directory

    def add(self, kind: str, stem: str, parsed: Parsed) -> None:
        if parsed.problems:
            self.has_problems = True
        if kind in ("User", "Device"):
            folder = "users" if kind == "User" else "devices"
            if parsed.obj is None:
                self.broken.add(f"{folder}/{stem}")
            else:
                getattr(self, folder)[stem] = parsed.obj
        elif kind == "Organization":
            self.org, self.has_org_file = parsed.obj, True
        elif kind == "Policy":
            self.policy, self.has_policy_file = parsed.obj, True
        elif kind == "Root":
            if parsed.obj is not None:
                self.roots[int(stem)] = parsed.obj
        else:
            self.ca = parsed.obj


# kind by path shape (relative to orgs/<org>/)
_ORG_FILES = {"organization.yaml": "Organization", "policy.yaml": "Policy"}
_DIR_KINDS = {"users": "User", "devices": "Device"}
ROOTS_DIR = "roots"
_ROOT_FILE = re.compile(r"[1-9][0-9]{0,8}\.json")
MAX_ROOT_FILE_BYTES = 1 << 20  # reconciler.pki.root.MAX_ROOT_BYTES


def load(path: str | os.PathLike[str], rev: str | None = None, *,
         cache: BlobCache | None = None) -> LoadResult:
    """Load and validate the repository at ``path`` (at git ``rev`` when given)."""
    cache = cache if cache is not None else BlobCache()
    source = open_source(path, rev, cache.trees)
    # Parsing allocates ~100 small objects per file and frees none of them: the cyclic
    # GC would rescan the growing heap many times for nothing (~15% of a cold 10k validate).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(source, cache)
    finally:
        if gc_was_enabled:
            gc.enable()
        close = getattr(source, "close", None)
        if close is not None:
            close()


@lru_cache(maxsize=1 << 16)
def classify(path: str) -> tuple[str, str, str]:
    """(kind, org, stem) for a repository file; ("?", org, name) for any other file
    under ``orgs/`` (misplaced YAML, ``.yml``, ``README.md``, editor and temp files)."""
    parts = path.split("/")
    if parts == ["mesh.yaml"]:
        return ("Mesh", "", "mesh")
    if len(parts) == 2:  # orgs/x: everything belongs in an org directory
        return ("?", "", parts[1])
    org = parts[1]
    name = parts[-1]
    if len(parts) == 3:
        if name in _ORG_FILES:
            return (_ORG_FILES[name], org, org)
        if name == "ca.crt":
            return ("CA", org, org)
    elif len(parts) == 4 and parts[2] == ROOTS_DIR and _ROOT_FILE.fullmatch(name):
        return ("Root", org, name[: -len(".json")])
    elif len(parts) == 4 and parts[2] in _DIR_KINDS and name.endswith(".yaml"):
        return (_DIR_KINDS[parts[2]], org, name[: -len(".yaml")])
    return ("?", org, name)


def _is_layout_dir(parts: list[str]) -> bool:
    """orgs, orgs/ORG, orgs/ORG/users, orgs/ORG/devices, orgs/ORG/roots."""
    return (parts[0] == "orgs" and len(parts) <= 3
            and (len(parts) < 3 or parts[2] in _DIR_KINDS or parts[2] == ROOTS_DIR))


_WHAT = {DIR: "a directory", SYMLINK: "a symbolic link", SUBMODULE: "a git submodule",
         SPECIAL: "a FIFO, socket or device file"}


def layout_problem(entry: Entry) -> Problem | None:
    """The problem with a path that is not a file the loader reads, or None for the
    directories of the layout. Line 0: the path itself is wrong, not a line in it."""
    path, kind = entry.path, entry.type
    parts = path.split("/")
    if kind == SYMLINK:
        return Problem(path, 0, "E-LAYOUT-SYMLINK",
                       f"{path} is a symbolic link; meshops never follows links (a link "
                       "could hide a file or pull one in from outside the repository)",
                       "replace the link with the file or directory itself")
    if kind == DIR:
        if _is_layout_dir(parts):
            return None
        if parts == ["mesh.yaml"] or (len(parts) == 3 and parts[2] in _ORG_FILES) or (
                len(parts) == 4 and parts[2] in _DIR_KINDS and parts[3].endswith(".yaml")):
            return _not_a_file(path, kind)
        return Problem(path, 0, "E-LAYOUT-UNKNOWN-DIR",
                       f"{path}/ is not a directory of the repository layout; nothing in it "
                       "is read", "orgs/ holds only ORG/ directories, and those only "
                       "organization.yaml, policy.yaml, ca.crt, users/, devices/ and roots/; "
                       "move or "
                       "remove it")
    if kind == FILE or _is_layout_dir(parts):  # something else where a directory belongs
        what = "a file" if kind == FILE else _WHAT.get(kind, kind)
        return Problem(path, 0, "E-LAYOUT-NOT-A-DIR",
                       f"{path} is {what}; it must be a directory",
                       "orgs/, orgs/ORG/, orgs/ORG/users/, orgs/ORG/devices/ and "
                       "orgs/ORG/roots/ are plain directories")
    return _not_a_file(path, kind)


def _not_a_file(path: str, kind: str) -> Problem:
    name = path.rpartition("/")[2]
    effect = ""
    if name == "policy.yaml":
        effect = "; without a readable policy the org would be a full mesh"
    elif name == "mesh.yaml":
        effect = "; the mesh settings cannot be read"
    elif path.endswith(".yaml"):
        effect = "; the object it should hold would not exist"
    return Problem(path, 0, "E-LAYOUT-NOT-A-FILE",
                   f"{path} is {_WHAT.get(kind, kind)}, not a regular file{effect}",
                   f"replace it with the {name} file itself")


def _mark_broken(orgs: dict[str, _OrgFiles], path: str) -> None:
    """A reported path under orgs/ORG/: the org's policy tests wait, and when the path
    should have held a user or device (or all of them), references to it are not
    reported again, as for a file that failed its schema."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "orgs":
        return
    files_of = orgs.setdefault(parts[1], _OrgFiles())
    files_of.has_problems = True  # policy tests wait until the layout is clean
    if parts[2] not in _DIR_KINDS:
        return
    if len(parts) == 3:  # the users/ or devices/ directory itself
        files_of.layout_broken = True
    elif parts[3].endswith(".yaml"):
        files_of.broken.add(f"{parts[2]}/{parts[3][: -len('.yaml')]}")


def _unknown_file(path: str) -> Problem:
    parts = path.split("/")
    if len(parts) == 4 and parts[2] == ROOTS_DIR:
        return Problem(path, 0, "E-LAYOUT-UNKNOWN-FILE",
                       f"{path} is not a trust-root file and would be ignored",
                       "orgs/ORG/roots/ holds only N.json (1.json, 2.json, ... as `meshops ca "
                       "init` and `meshops ca rotate` write them); remove anything else")
    if path.endswith((".yaml", ".yml")):
        return Problem(path, 1, "E-LAYOUT-UNKNOWN-FILE",
                       f"{path} is not a known repository file",
                       "users and devices go in orgs/ORG/users/NAME.yaml and "
                       "orgs/ORG/devices/NAME.yaml (.yaml, not .yml)")
    return Problem(path, 0, "E-LAYOUT-UNKNOWN-FILE",
                   f"{path} is not a repository file and would be ignored",
                   "orgs/ holds only meshops files (.yaml and ca.crt); move notes to the "
                   "repository root or a description field, and delete editor or temp files")


def _parse(kind: str, org: str, stem: str, entry: Entry, data: bytes, key: str) -> Parsed:
    file = entry.path
    if kind == "Root":
        return _parse_root(file, data)
    if kind == "CA":
        try:
            return Parsed(data.decode("ascii"), ())
        except UnicodeDecodeError:
            return Parsed(None, (Problem(file, 1, "E-FILE-ENCODING",
                                         "ca.crt is not an ASCII PEM file",
                                         "write the CA certificate as PEM"),))
    doc = load_yaml(data, file)
    if isinstance(doc, Problem):
        return Parsed(None, (doc,))
    problems = _check_shape(kind, doc, file)
    if problems:
        return Parsed(None, tuple(problems))
    problems = schema.check(kind, doc.value, file, doc.lines)
    if problems:
        return Parsed(None, tuple(problems))
    src = Source(file, doc.lines, key)
    value = doc.value
    if kind == "Mesh":
        obj: Any = build.mesh(value, src)
        found = semantic.check_mesh_file(obj)
    elif kind == "Organization":
        obj = build.organization(value, src)
        found = semantic.check_org_file(obj, org)
    elif kind == "User":
        obj = build.user(value, org, src)
        found = semantic.check_user_file(obj, stem)
    elif kind == "Device":
        obj = build.device(value, org, src)
        found = semantic.check_device_file(obj, stem)
    else:
        obj = build.policy(value, src)
        raw_ports = [list(r.get("ports", ())) for r in value.get("rules", ())]
        found = semantic.check_policy_file(obj, raw_ports)
    return Parsed(obj, tuple(found))


def _parse_root(file: str, data: bytes) -> Parsed:
    """A trust-root envelope's shape (bounded JSON with a payload and signatures);
    ``reconciler.hub.publish`` verifies the chain."""
    fix = ("restore the file as `meshops ca init`/`meshops ca rotate` wrote it (git "
           "history); trust roots are signed and cannot be edited by hand")
    try:
        doc = bounded_loads(data, what=file, max_bytes=MAX_ROOT_FILE_BYTES, max_depth=8)
    except InputRefused as exc:
        return Parsed(None, (Problem(file, 1, "E-ROOT-FORMAT", f"not a trust root: {exc}",
                                     fix),))
    if not isinstance(doc, dict) or not {"payload", "payloadType", "signatures"} <= set(doc):
        return Parsed(None, (Problem(file, 1, "E-ROOT-FORMAT",
                                     "not a trust root: a signed envelope (payload, "
                                     "payloadType, signatures) is expected", fix),))
    return Parsed(data, ())


def _check_shape(kind: str, doc: Document, file: str) -> list[Problem]:
    value = doc.value
    if not isinstance(value, dict):
        return [Problem(file, doc.lines.get("", 1), "E-YAML-NOT-MAPPING",
                        f"a {kind} file must be a YAML mapping (key: value lines)",
                        f"start the file with 'kind: {kind}'")]
    found = value.get("kind")
    if found != kind:
        line = doc.lines.get("kind", doc.lines.get("", 1))
        what = "no kind" if found is None else f"kind {found!r}"
        return [Problem(file, line, "E-KIND", f"file has {what}; this path holds a {kind}",
                        f"set 'kind: {kind}' or move the file")]
    return []


def _root_chain(org: str, roots: dict[int, bytes]) -> tuple[bytes, ...] | Problem:
    """The envelopes in version order, or the problem with the first gap, reported
    at the first file after it."""
    missing = [v for v in range(1, max(roots, default=0)) if v not in roots]
    if missing:
        after = min(v for v in roots if v > missing[0])
        gap = [v for v in missing if v < after]
        names = ", ".join(f"{v}.json" for v in gap)
        return Problem(f"orgs/{org}/roots/{after}.json", 1, "E-ROOT-GAP",
                       f"trust root {names} {'is' if len(gap) == 1 else 'are'} missing: "
                       "agents walk the chain one version at a time, from 1.json upward",
                       f"restore orgs/{org}/roots/{gap[0]}.json from git history; roots "
                       "are never deleted")
    return tuple(roots[v] for v in sorted(roots))


def _load(source: RepoSource, cache: BlobCache) -> LoadResult:
    entries = source.entries()
    if not entries:
        raise UsageError("not a meshops repository: no mesh.yaml and no orgs/")
    problems: list[Problem] = []
    used: set[tuple[str, str]] = set()
    cache.hits = cache.misses = 0
    mesh: Mesh | None = None
    orgs: dict[str, _OrgFiles] = {}
    read: Callable[[Entry], bytes] = source.read
    files: list[tuple[str, str, str, tuple[str, str]]] = []
    todo: dict[Entry, tuple[str, str, str]] = {}
    bad_dirs: set[str] = set()  # reported directories: their contents are not reported again
    for entry in entries:
        path = entry.path
        parent = path.rpartition("/")[0]
        if parent in bad_dirs:
            if entry.type == DIR:
                bad_dirs.add(path)
            continue
        if entry.type != FILE or path == "orgs" or (
                path.count("/") == 2 and path.rpartition("/")[2] in (*_DIR_KINDS, ROOTS_DIR)):
            problem = layout_problem(entry)
            if problem is not None:
                problems.append(problem)
                if entry.type == DIR:
                    bad_dirs.add(path)
                _mark_broken(orgs, path)
            elif path.count("/") == 1:  # orgs/ORG: an org, even when it holds nothing
                orgs.setdefault(path[5:], _OrgFiles())
            continue
        kind, org, stem = classify(path)
        if kind == "?":
            problems.append(_unknown_file(path))
            continue
        if entry.blob is not None:  # git: the blob id is the key, read only on a miss
            ckey = (entry.path, entry.blob)
            if ckey not in cache.entries:
                todo[entry] = (kind, org, stem)
        else:  # working tree: the content hash is the key
            data = read(entry)
            ckey = (entry.path, "sha1:" + hashlib.sha1(data).hexdigest())
            if ckey not in cache.entries:
                cache.entries[ckey] = _parse(kind, org, stem, entry, data, ckey[1])
                cache.misses += 1
        used.add(ckey)
        files.append((kind, org, stem, ckey))
    if todo:  # all missing blobs in one batch: no per-file round trip to git
        for entry, data in source.read_many(list(todo)):
            kind, org, stem = todo[entry]
            cache.entries[(entry.path, entry.blob or "")] = _parse(kind, org, stem, entry, data,
                                                                    entry.blob or "")
        cache.misses += len(todo)
    cache.hits = len(files) - cache.misses
    for kind, org, stem, ckey in files:
        parsed = cache.entries[ckey]
        problems.extend(parsed.problems)
        if kind == "Mesh":
            mesh = parsed.obj
            continue
        files_of = orgs.get(org)
        if files_of is None:
            files_of = orgs[org] = _OrgFiles()
        files_of.add(kind, stem, parsed)
    cache.retain(used)
    if mesh is None and not any(p.file == "mesh.yaml" for p in problems):
        problems.append(Problem("mesh.yaml", 1, "E-MESH-MISSING", "mesh.yaml is missing",
                                "add mesh.yaml with kind: Mesh and hub_url"))
    states: dict[str, OrgState] = {}
    for org_name, files_of in sorted(orgs.items()):
        if not files_of.has_org_file and not any(
                p.file == f"orgs/{org_name}/organization.yaml" for p in problems):
            problems.append(Problem(f"orgs/{org_name}/organization.yaml", 1, "E-ORG-MISSING",
                                    f"orgs/{org_name}/ has no organization.yaml",
                                    "add organization.yaml with kind: Organization"))
            continue
        if files_of.org is None or files_of.layout_broken or (
                files_of.has_policy_file and files_of.policy is None):
            continue  # already reported; cross-file checks would only add noise
        roots = _root_chain(org_name, files_of.roots)
        if isinstance(roots, Problem):
            problems.append(roots)
            roots = ()
        state = OrgState(organization=files_of.org, users=files_of.users,
                         devices=files_of.devices, policy=files_of.policy,
                         ca_cert_pem=files_of.ca, roots=roots)
        found = semantic.check_org(state, frozenset(files_of.broken), cache.ips)
        problems.extend(found)
        if not found and not files_of.has_problems:
            problems.extend(semantic.check_policy_tests(state))
        states[org_name] = state
    problems.extend(semantic.check_repo(mesh, states))
    ordered = tuple(semantic.dedupe(problems))
    if ordered or mesh is None:
        return LoadResult(None, ordered, source.commit)
    return LoadResult(Repo(mesh=mesh, orgs=states, commit=source.commit), (), source.commit)
