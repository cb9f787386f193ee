"""Hub test fixtures: a throwaway PostgreSQL cluster on 127.0.0.1 (session scope).

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres``
user (PLATFORM-NOTES): ``initdb -A trust -U meshops`` in a temp dir chowned to
postgres, ``pg_ctl start`` on a free port with the socket in the same dir,
stopped and deleted at teardown. Tests using it are marked ``postgres`` and
``root``.

The server binaries are found with ``pg_config --bindir`` or, failing that, the
newest ``/usr/lib/postgresql/*/bin`` (Debian), so any installed major version
works. Outside CI a missing server skips these tests with the reason; in CI
(``CI`` set, ``tests/conftest.py``) it is a failure: CI must never silently
skip PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# the same rule as tests/conftest.py (conftest modules are not importable by name)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_GLOB = "/usr/lib/postgresql/*/bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["su", "postgres", "-s", "/bin/sh", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``pg_config --bindir``
    when it has them (libpq's pg_config may belong to a client-only version),
    else the newest Debian ``/usr/lib/postgresql/N/bin``."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            candidates.append(Path(out))
    import glob

    candidates += sorted((Path(p) for p in glob.glob(PG_GLOB)), key=_version_key, reverse=True)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _unavailable(reason: str) -> None:
    """Skip outside CI; fail in CI (PostgreSQL tests must run there)."""
    if IN_CI:
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url():
    if os.geteuid() != 0:
        _unavailable("needs root to run PostgreSQL as the postgres user")
    pg_bin = find_pg_bin()
    if pg_bin is None:
        _unavailable(f"no PostgreSQL server binaries (pg_config --bindir, {PG_GLOB}); "
                     "scripts/test installs Debian postgresql")
    assert pg_bin is not None
    base = Path(tempfile.mkdtemp(prefix="meshops-pg-"))
    data = base / "data"
    data.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(data, "postgres")
    port = _free_port()
    init = _as_postgres(f"{pg_bin}/initdb -D {data} -A trust -U meshops")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"initdb ({pg_bin}) failed: {init.stderr.strip()[-500:]}")
    start = _as_postgres(
        f'{pg_bin}/pg_ctl -D {data} -o "-k {data} -h 127.0.0.1 -p {port}" -l {data}/log -w start'
    )
    try:
        if start.returncode != 0:
            log = (data / "log").read_text(errors="replace")[-1000:] if (data / "log").exists() \
                else ""
            _unavailable(f"pg_ctl start ({pg_bin}) failed: {start.stderr.strip()} "
                         f"{start.stdout.strip()} {log}")
        url = f"postgresql://meshops@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    _unavailable(f"PostgreSQL on 127.0.0.1:{port} did not accept connections: "
                                 f"{exc}")
                time.sleep(0.2)
        yield url
    finally:
        _as_postgres(f"{pg_bin}/pg_ctl -D {data} -m immediate -w stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url):
    """A new empty database in the session cluster for one test."""
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the example repository with its throwaway (EXAMPLE ONLY) PGP key ---------------------------

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"


def kill_gpg_agent(home: str | Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False)  # fmt: skip


@pytest.fixture(scope="session")
def example_gnupghome(tmp_path_factory):
    """A GnuPG home holding example-repo/keys/example-hub.sec.asc."""
    from reconciler.hub.publish import example_gnupghome as make

    home = tmp_path_factory.mktemp("gnupg")
    make(EXAMPLE_REPO, home)
    yield str(home)
    kill_gpg_agent(home)


@pytest.fixture
def example_repo(tmp_path) -> Path:
    """A private copy of example-repo (tests edit it freely)."""
    dst = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, dst, ignore=shutil.ignore_patterns(".git"))
    return dst
