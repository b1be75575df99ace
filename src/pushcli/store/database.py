"""Where the store is and how to talk to it: ``--db`` URL parsing, engine creation
(errors never quote SQL parameters), SQLite's configuration, and the translation
of driver errors into one-line ``StoreError`` (74), ``Busy`` (75) or ``InputError`` (2).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SAWarning

from pushcli.defaults import db_setting
from pushcli.errors import Busy, InputError, PushcliError, StoreError

BUSY_TIMEOUT_MS = 30_000

# psycopg logs "error ignored terminating <psycopg.Pipeline ...>" when the pipeline of a
# failed write is collected, after the store has already said why in one line
# (StoreError): without a handler Python would print it on stderr as a second line.
# Records still reach any handler an embedding application configures.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


def database_url(value: str | os.PathLike[str] | None = None) -> str:
    """A SQLAlchemy URL from ``--db``/``PUSHCLI_DB``: a URL as is, else a SQLite path."""
    raw = db_setting(value)
    if "://" in raw:
        for plain in ("postgresql://", "postgres://"):
            if raw.startswith(plain):  # psycopg 3 is the driver we ship, not psycopg2
                raw = "postgresql+psycopg://" + raw[len(plain):]
        try:
            url = make_url(raw)
        except ArgumentError as exc:
            raise InputError(f"invalid database URL: {exc}", field="--db") from None
        except ValueError:  # make_url's int(port): "postgresql://u@h:abc/db"
            raise InputError("invalid database URL: the port must be a number "
                             "from 1 to 65535", field="--db") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise InputError(f"unsupported database {url.get_backend_name()!r} "
                             "(sqlite or postgresql)", field="--db")
        if url.port is not None and not 0 < url.port < 65536:
            raise InputError("invalid database URL: the port must be a number "
                             "from 1 to 65535", field="--db")
        return raw
    return f"sqlite:///{Path(raw).expanduser().absolute()}"


def _create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine whose errors never quote SQL parameters (endpoints, auth secrets).

    A URL option the driver would ignore (SQLAlchemy only warns) or cannot
    parse is refused as bad input: a typo must not silently change the store.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAWarning)
            return create_engine(url, hide_parameters=True, **kwargs)
    # NoSuchModuleError is an ArgumentError; ValueError/TypeError: "?timeout=abc"
    except (ArgumentError, ImportError, SAWarning, ValueError, TypeError) as exc:
        reason = _one_line(str(exc))
        if isinstance(exc, SAWarning):  # "... are not accepted by the pysqlite driver and
            reason = reason.split(";")[0].replace(" and are being ignored", "")  # are ignored;"
        raise InputError(f"cannot use this database URL: {reason}", field="--db") from None


#: sqlite3 primary result codes (``sqlite_errorcode & 0xff``).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_SQLITE_STORE_FAULTS = {
    3: "permission denied",  # SQLITE_PERM
    8: "the store is read-only (pushcli needs to write the file and, for SQLite's "
       "-wal and -shm files, its directory)",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    11: "the database file is corrupt",  # SQLITE_CORRUPT
    13: "the disk or the database is full",  # SQLITE_FULL
    14: "cannot open the database file (check the permissions of the file and its "
        "directory)",  # SQLITE_CANTOPEN
}
#: PostgreSQL SQLSTATEs meaning "someone else holds what we need": lock_not_available,
#: deadlock_detected.
_PG_BUSY = {"55P03", "40P01"}
#: SQLSTATEs after which PostgreSQL has rolled the whole transaction back and asks the
#: client to run it again: deadlock_detected, serialization_failure.
_PG_RUN_AGAIN = {"40P01", "40001"}
#: How often a transaction PostgreSQL aborted to break a deadlock is run again.
DEADLOCK_ATTEMPTS = 6


class Deadlock(Busy):
    """PostgreSQL aborted our transaction to break a deadlock (or a serialization
    conflict): nothing of it was written and running it again is safe."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def retry_deadlocks(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run a one-transaction store method again when PostgreSQL aborted it as a deadlock.

    Several senders share a campaign's queue (claims, intent marks, outcomes,
    enqueues); PostgreSQL may pick one of two crossing transactions as a deadlock
    victim. Its work was rolled back whole, so the method (one transaction) is
    simply run again after a short random pause instead of stopping the sender.
    """

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except Deadlock:
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    return wrapper
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_QUOTED_RE = re.compile(r'"([^"]*)"|\'([^\']*)\'')
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_$.]*")


def _one_line(text: str) -> str:
    """A driver's or SQLAlchemy's message on one line, without the help link."""
    text = re.sub(r"\s*\(Background on this \w+ at: \S+\)", "", text)
    return " ".join(text.split())


def _sqlite_code(orig: BaseException) -> int | None:
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(orig: BaseException) -> bool:
    code = _sqlite_code(orig)
    if code is not None:
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return getattr(orig, "sqlstate", None) in _PG_BUSY or "database is locked" in str(orig)


def _reason(orig: BaseException) -> str:
    """Why the database refused, fit to print: no SQL parameters, values or URLs.

    SQLite's messages carry none; PostgreSQL's primary message may quote a
    value (``invalid input syntax for type integer: "..."``) and its DETAIL
    does (``Key (endpoint)=(https://...)``), so only the primary message is
    kept and any quoted text that is not a plain SQL name is elided.
    """
    code = _sqlite_code(orig)
    if code in _SQLITE_STORE_FAULTS:
        return _SQLITE_STORE_FAULTS[code]
    diag = getattr(orig, "diag", None)
    text = getattr(diag, "message_primary", None) or str(orig)
    lines = text.strip().splitlines()
    text = _URL_RE.sub("<url>", lines[0] if lines else "")
    text = _QUOTED_RE.sub(
        lambda m: m.group(0) if _IDENTIFIER_RE.fullmatch(m.group(1) or m.group(2) or "")
        else "\"…\"", text)
    return " ".join(text.split()) or type(orig).__name__


def store_error(exc: DBAPIError, where: str | None, *, action: str = "write") -> PushcliError:
    """The one-line error for a failed database call at the store boundary.

    A lock still held after the busy wait is Busy (75: try later); anything
    else is StoreError (74: what was not written is still to do, re-run).
    The message names the store and the reason, never SQL or its parameters.
    """
    orig = exc.orig if exc.orig is not None else exc
    store = f"the store {where}" if where else "the store"
    if getattr(orig, "sqlstate", None) in _PG_RUN_AGAIN:
        return Deadlock(f"{store}: a concurrent sender's transaction crossed ours "
                        "(deadlock); try again")
    if _is_busy(orig):
        return Busy(f"{store} is locked by another process (still locked after "
                    f"{BUSY_TIMEOUT_MS / 1000:g} s); try again when it has finished")
    if action == "write":
        return StoreError(f"cannot write {store}: {_reason(orig)}; what was not "
                          "written is still to do: re-run once fixed")
    return StoreError(f"cannot {action} {store}: {_reason(orig)}")


def known_error(exc: BaseException) -> PushcliError | None:
    """``exc`` as one of ours: itself if it is, the store's one-line error if it is a
    database error that escaped the store boundary, else None (a bug: let it show).

    The CLI asks this only once a command loaded the store (and so SQLAlchemy).
    """
    if isinstance(exc, PushcliError):
        return exc
    return store_error(exc, None) if isinstance(exc, DBAPIError) else None


def _open_error(exc: DBAPIError, where: str) -> PushcliError:
    """A failure to connect: the store's fault (74/75) or a wrong ``--db`` (2)."""
    orig = exc.orig if exc.orig is not None else exc
    if _is_busy(orig) or _sqlite_code(orig) in _SQLITE_STORE_FAULTS:
        return store_error(exc, where, action="open")
    # refused, unknown host or database, bad credentials, a bad driver option,
    # not a database: the connection parameters are wrong
    return InputError(f"cannot open database: {_one_line(str(orig))}", field="--db")


def dialect_insert(engine: Engine) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_*`` (both SQLite and PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _enter_wal(cur: Any, *, wait_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Switch a connection to WAL, waiting out a concurrent first open.

    Two processes opening a brand-new file at once both switch it from the
    rollback journal to WAL; SQLite answers the loser BUSY at once, without
    calling the busy handler, so we wait here as the busy timeout would.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _enter_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("pushcli_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def printable_url(url: str) -> str:
    """Where a store is, fit to print: a file path, or the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    # the query may carry secrets too (?password=, ?sslpassword=)
    return parsed.set(query={}).render_as_string(hide_password=True)


def open_engine(db: str | os.PathLike[str] | None, *, create: bool) -> tuple[Engine, str]:
    """A connected engine for a path or URL, and its URL; creates a SQLite file (0600).

    Connecting is where a wrong ``--db`` shows (refused, bad option, not a
    database): InputError (2). Past it, failures are the store's (74) or a lock (75).
    """
    url = database_url(db)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # the URL's options are checked (engine) before any file is made
        engine = _create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        path = parsed.database
        if path and path != ":memory:":
            p = Path(path)
            if not p.exists():
                if not create:
                    raise InputError("no such database (import subscribers first)",
                                     file=str(p))
                if not p.parent.is_dir():
                    raise InputError("directory does not exist", file=str(p.parent))
                # another process may create it first: fine, it is 0600 too
                try:
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except OSError as exc:  # a read-only directory, a full disk
                    raise StoreError(f"cannot create the store {p}: {exc.strerror}") \
                        from None
            elif p.is_dir():
                raise InputError("is a directory, not a database", file=str(p))
        _configure_sqlite(engine)
    else:
        engine = _create_engine(url, pool_pre_ping=True)
    try:
        engine.connect().close()
    except DBAPIError as exc:
        engine.dispose()
        raise _open_error(exc, printable_url(url)) from None
    return engine, url


class Database:
    """One SQLAlchemy engine and the transaction boundary every query goes through."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    @property
    def display_url(self) -> str:
        """Where the store is, fit to print: a file path, or the URL without its password."""
        return printable_url(self.url)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def _write(self, *, passthrough: tuple[type[Exception], ...] = ()) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite).

        The store boundary: a database error leaves as one-line StoreError
        (exit 74) or Busy (75), never as SQLAlchemy's text with its SQL
        parameters (endpoints, auth secrets). ``passthrough`` lists errors the
        caller handles itself (a unique clash it retries).
        """
        try:
            with self.engine.connect().execution_options(pushcli_write=True) as conn, conn.begin():
                yield conn
        except passthrough:
            raise
        except DBAPIError as exc:
            raise store_error(exc, self.display_url, action="write") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction; database errors leave as in ``_write``."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise store_error(exc, self.display_url, action="read") from None
