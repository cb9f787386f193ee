"""Hub test fixtures: a throwaway PostgreSQL cluster on 127.0.0.1 (session scope).

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres``
user (PLATFORM-NOTES): ``initdb -A trust -U meshops`` in a temp dir chowned to
postgres, ``pg_ctl start`` on a free port with the socket in the same dir,
stopped and deleted at teardown. Tests using it are marked ``postgres`` and
``root``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


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


@pytest.fixture(scope="session")
def postgres_url():
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists():
        pytest.skip("needs root and PostgreSQL 15 binaries (Debian postgresql)")
    base = Path(tempfile.mkdtemp(prefix="meshops-pg-"))
    data = base / "data"
    data.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(data, "postgres")
    port = _free_port()
    init = _as_postgres(f"{PG_BIN}/initdb -D {data} -A trust -U meshops")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr}")
    start = _as_postgres(
        f'{PG_BIN}/pg_ctl -D {data} -o "-k {data} -h 127.0.0.1 -p {port}" -l {data}/log -w start'
    )
    try:
        if start.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {start.stderr} {start.stdout}")
        url = f"postgresql://meshops@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -m immediate -w stop")
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
