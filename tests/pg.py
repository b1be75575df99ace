"""A throwaway PostgreSQL server for the test suite (no Docker here).

Uses ``PUSHCLI_TEST_PG_URL`` when set (a server the caller manages); otherwise
runs Debian's ``initdb``/``pg_ctl`` into a temporary folder on a free loopback
port (as the ``postgres`` user when we are root, since initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

PG_ENV = "PUSHCLI_TEST_PG_URL"


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql "
                           f"(scripts/install-deps.sh does), or set {PG_ENV}")
    return found


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (postgresql://user@127.0.0.1:port/postgres)."""
    if os.environ.get(PG_ENV):
        yield os.environ[PG_ENV]
        return
    root = os.geteuid() == 0
    base = tempfile.mkdtemp(prefix="pushcli-pg-")
    data = os.path.join(base, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = "postgres" if root else os.environ.get("USER", "postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    if root:
        shutil.chown(base, "postgres", "postgres")
    subprocess.run([*prefix, _bin("initdb"), "-D", data, "-A", "trust", "-U", user,
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*prefix, _bin("pg_ctl"), "-D", data, "-l", os.path.join(base, "log"),
                    "-w", "-o", f"-p {port} -k {base} -h 127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c max_connections=200", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, _bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(admin_url: str) -> str:
    """Create an empty database and return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
