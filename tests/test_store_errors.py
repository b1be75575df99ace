"""Store failures reach the operator as one line and the documented exit code.

A wrong ``--db`` exits 2 naming ``--db``; a store that cannot be written
(read-only file or directory, disk full, database refusing writes) exits 74; a
lock still held after the busy wait exits 75. Never a traceback, never
SQLAlchemy's ``[parameters: ...]``, never an endpoint, an auth secret or the
database password.
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from pushcli import cli, store
from pushcli.cli import app
from pushcli.errors import Busy
from pushcli.store import Store
from tests.support import fresh_database, real_subscription

PASSWORD = "s3cretPassw0rd"
runner = CliRunner()

#: Capabilities that let root ignore file modes: CAP_DAC_OVERRIDE,
#: CAP_DAC_READ_SEARCH, CAP_FOWNER.
_DAC_CAPS = (1, 2, 3)
_PR_CAPBSET_DROP = 24


def _as_file_modes_apply() -> None:
    """In the child: make chmod bind as it does for the cron user, also as root.

    Root ignores file modes through its capabilities; dropping them from the
    bounding set before exec leaves a root process that obeys 0400 and 0555.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def pushcli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real ``pushcli`` process (real main(), real stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHCLI_")}
    return subprocess.run([sys.executable, "-m", "pushcli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_as_file_modes_apply)


def write_subscribers(path: Path, n: int) -> list[dict]:
    subs = [real_subscription() for _ in range(n)]
    path.write_text("\n".join(json.dumps(s) for s in subs) + "\n")
    return subs


def assert_one_clean_line(stderr: str, subs: list[dict]) -> str:
    """stderr is one ``error:`` line quoting no SQL parameter, endpoint or secret."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for leak in ("[parameters:", "[SQL:", PASSWORD, "https://"):
        assert leak not in stderr, stderr
    for s in subs:
        assert s["keys"]["auth"] not in stderr and s["keys"]["p256dh"] not in stderr
    return lines[0]


# --- a wrong --db: exit 2 naming --db ------------------------------------------------------

BAD_URLS = {
    "non-numeric port": f"postgresql://u:{PASSWORD}@db.internal:abc/push",
    "port out of range": f"postgresql://u:{PASSWORD}@db.internal:70000/push",
    "unknown psycopg option": f"postgresql://u:{PASSWORD}@127.0.0.1:1/push?foo=bar",
    "unknown sqlite option": "sqlite:///{dir}/store.db?foo=bar",
    "sqlite option not a number": "sqlite:///{dir}/store.db?timeout=abc",
    "unknown dialect": f"nosuchdb://u:{PASSWORD}@db.internal/push",
}


@pytest.mark.parametrize("name", list(BAD_URLS))
def test_a_bad_db_url_is_one_line_naming_db_and_exit_2(tmp_path: Path, name: str) -> None:
    subs = write_subscribers(tmp_path / "subs.ndjson", 1)
    url = BAD_URLS[name].format(dir=tmp_path)
    proc = pushcli(tmp_path, "--db", url, "subscribers", "import", "subs.ndjson")
    assert proc.returncode == 2, proc.stderr
    assert "--db" in assert_one_clean_line(proc.stderr, subs)
    assert not (tmp_path / "store.db").exists()  # a typo never silently makes a store


READING_COMMANDS = [["subscribers", "count"], ["subscribers", "export"], ["report", "x"],
                    ["campaigns", "list"], ["prune"], ["doctor"]]


@pytest.mark.parametrize("argv", READING_COMMANDS, ids=" ".join)
def test_reading_commands_exit_2_on_a_missing_store_and_create_none(tmp_path: Path,
                                                                     argv: list[str]) -> None:
    for db in (tmp_path / "missing.db", None):  # --db, and the default ./pushcli.db
        proc = pushcli(tmp_path, *(["--db", str(db)] if db else []), *argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert "no such database" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [], "made a store"


# --- a store that cannot be written: exit 74 -----------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[Path, list[dict]]]:
    """A store holding 3 subscribers, closed (no -wal/-shm left), and a file of new ones."""
    db = tmp_path / "store.db"
    write_subscribers(tmp_path / "old.ndjson", 3)
    assert pushcli(tmp_path, "--db", str(db), "subscribers", "import", "old.ndjson"
                   ).returncode == 0
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    new = write_subscribers(tmp_path / "new.ndjson", 3)
    yield db, new
    tmp_path.chmod(0o755)
    db.chmod(0o600)


def test_a_read_only_store_file_refuses_writes_with_74_and_still_reads(filled) -> None:
    db, new = filled
    db.chmod(0o400)
    proc = pushcli(db.parent, "--db", str(db), "subscribers", "import", "new.ndjson")
    assert proc.returncode == 74, proc.stderr
    line = assert_one_clean_line(proc.stderr, new)
    assert str(db) in line and "read-only" in line
    counted = pushcli(db.parent, "--db", str(db), "subscribers", "count")
    assert counted.returncode == 0 and counted.stdout.strip() == "3", counted.stderr


@pytest.mark.parametrize("command", [["subscribers", "import", "new.ndjson"],
                                     ["subscribers", "count"], ["prune"]])
def test_a_read_only_directory_is_74_for_every_command(filled, command: list[str]) -> None:
    """SQLite needs the directory for its -wal and -shm files, even to read."""
    db, new = filled
    db.parent.chmod(0o555)
    proc = pushcli(db.parent, "--db", str(db), *command)
    assert proc.returncode == 74, proc.stderr
    assert "read-only" in assert_one_clean_line(proc.stderr, new)


@pytest.fixture
def max_pages() -> Iterator[list[int]]:
    """Every SQLite connection opened meanwhile is capped at ``max_pages[0]`` pages.

    ``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL exactly as a
    full disk does, without filling one.
    """
    cap: list[int] = []

    def on_connect(dbapi_conn, _record) -> None:
        if cap:
            dbapi_conn.execute(f"PRAGMA max_page_count={cap[0]}")

    sa.event.listen(sa.engine.Engine, "connect", on_connect)
    yield cap
    sa.event.remove(sa.engine.Engine, "connect", on_connect)


def test_disk_full_during_import_is_74_and_a_rerun_finishes(tmp_path: Path, max_pages) -> None:
    db = tmp_path / "store.db"
    write_subscribers(tmp_path / "old.ndjson", 3)
    assert runner.invoke(app, ["--db", str(db), "subscribers", "import", "old.ndjson"]
                         ).exit_code == 0
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    max_pages.append(pages + 5)  # room for a few rows, not for 3,000
    subs = write_subscribers(tmp_path / "many.ndjson", 3000)

    full = runner.invoke(app, ["--db", str(db), "subscribers", "import", "many.ndjson"])
    assert full.exit_code == 74, full.output
    line = assert_one_clean_line(full.stderr, subs)
    assert "full" in line and "re-run" in line

    max_pages.clear()  # space freed: the same command finishes the job
    again = runner.invoke(app, ["--db", str(db), "subscribers", "import", "many.ndjson"])
    assert again.exit_code == 0, again.output
    with Store.open(db) as st:
        assert st.count() == 3003


@pytest.mark.parametrize("command", [["subscribers", "import", "new.ndjson"],
                                     ["subscribers", "count"],
                                     ["subscribers", "export"],
                                     ["campaigns", "list"],
                                     ["prune"]])
def test_a_lock_held_past_the_busy_wait_is_75(filled, monkeypatch, command) -> None:
    db, new = filled
    monkeypatch.setattr(store.database, "BUSY_TIMEOUT_MS", 100)  # the wait, not a sleep
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write, for longer than the wait
    try:
        proc = runner.invoke(app, ["--db", str(db), *command])
    finally:
        holder.rollback()
        holder.close()
    assert proc.exit_code == 75, proc.output
    assert "locked" in assert_one_clean_line(proc.stderr, new)


def test_postgresql_refusing_writes_is_74_without_parameters(pg_admin: str,
                                                             tmp_path: Path) -> None:
    """psycopg's messages carry values in their DETAIL; none reaches the operator."""
    url = fresh_database(pg_admin)
    Store.open(url).close()  # schema in place
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    admin.dispose()
    subs = write_subscribers(tmp_path / "subs.ndjson", 2)
    proc = pushcli(tmp_path, "--db", url, "subscribers", "import", "subs.ndjson")
    assert proc.returncode == 74, proc.stderr
    assert "read-only transaction" in assert_one_clean_line(proc.stderr, subs)


def test_main_turns_a_stray_database_error_into_one_line(monkeypatch, capsys) -> None:
    """A database call that bypassed the store boundary still ends as one line, 74."""
    sub = real_subscription()

    def app_raising() -> None:
        raise sa.exc.OperationalError("INSERT INTO subscriptions (endpoint, auth) VALUES (?, ?)",
                                      (sub["endpoint"], sub["keys"]["auth"]),
                                      sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(cli, "app", app_raising)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 74
    assert "full" in assert_one_clean_line(capsys.readouterr().err, [sub])


def test_known_error_keeps_ours_translates_database_errors_and_leaves_bugs() -> None:
    """What the CLI may print as one line: ours as is, a stray driver error as the
    store's error (74 here), anything else None so that a bug shows itself."""
    ours = Busy("locked")
    assert store.known_error(ours) is ours
    stray = sa.exc.OperationalError("SELECT 1", (), sqlite3.OperationalError("disk I/O error"))
    error = store.known_error(stray)
    assert error is not None and error.exit_code == 74 and "disk I/O error" in str(error)
    assert store.known_error(ValueError("a bug")) is None
    assert store.known_error(KeyError("endpoint")) is None


def test_a_postgresql_deadlock_is_a_deadlock_error_that_a_store_method_runs_again(
        pg_admin: str) -> None:
    """Two senders' crossing transactions: PostgreSQL aborts one (40P01). The store
    names that Deadlock (nothing of it was written) and its write methods run again."""
    import threading

    from pushcli.store.database import DEADLOCK_ATTEMPTS, Deadlock, retry_deadlocks

    url = fresh_database(pg_admin)
    with Store.open(url) as a, Store.open(url) as b:
        with a._write() as conn:
            conn.exec_driver_sql("CREATE TABLE crossing (id int primary key, n int)")
            conn.exec_driver_sql("INSERT INTO crossing VALUES (1, 0), (2, 0)")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def cross(s: Store, first: int, second: int) -> None:
            try:
                with s._write() as conn:
                    conn.exec_driver_sql(f"UPDATE crossing SET n = n + 1 WHERE id = {first}")
                    barrier.wait()
                    conn.exec_driver_sql(f"UPDATE crossing SET n = n + 1 WHERE id = {second}")
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=cross, args=(a, 1, 2)),
                   threading.Thread(target=cross, args=(b, 2, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(errors) == 1 and isinstance(errors[0], Deadlock), errors
        assert "deadlock" in str(errors[0]) and "UPDATE" not in str(errors[0])

    calls: list[int] = []

    @retry_deadlocks
    def flaky(fail_times: int) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise Deadlock("crossed")
        return "written"

    assert flaky(2) == "written" and len(calls) == 3
    calls.clear()
    with pytest.raises(Deadlock):
        flaky(DEADLOCK_ATTEMPTS)
    assert len(calls) == DEADLOCK_ATTEMPTS
