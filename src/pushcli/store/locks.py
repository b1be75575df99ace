"""Cross-process locks in the ``locks`` table, and every lock name in one place.

A send holds its campaign's lock (one per sender process on PostgreSQL, where
several share a campaign); prune holds ``prune`` and waits for every campaign
lock. A lock whose process is gone (same host) or whose heartbeat is older than
``LOCK_STALE_AFTER`` is taken over, so kill -9 never blocks the next run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from pushcli.errors import Busy
from pushcli.store.database import Database
from pushcli.store.schema import locks

#: A lock whose owner has not refreshed it for this long is considered dead
#: even when we cannot check its process (another host).
LOCK_STALE_AFTER = 120.0
#: Held by prune (and its dry run) while it selects and deletes.
PRUNE_LOCK = "prune"
_CAMPAIGN = "campaign:"
_SENDER = "#"


def campaign_lock(campaign: str, owner: str | None = None) -> str:
    """The lock a send of ``campaign`` holds: ``campaign:<name>`` alone (SQLite), or
    ``campaign:<name>#<owner>``, one per sender sharing the campaign (PostgreSQL)."""
    return f"{_CAMPAIGN}{campaign}" + (f"{_SENDER}{owner}" if owner is not None else "")


def is_campaign_lock(name: str, campaign: str | None = None) -> bool:
    """Whether lock ``name`` is a send's: of any campaign, or of ``campaign`` in either form."""
    if campaign is None:
        return name.startswith(_CAMPAIGN)
    own = campaign_lock(campaign)
    return name == own or name.startswith(own + _SENDER)


def is_prune_lock(name: str) -> bool:
    """Whether lock ``name`` is prune's (a send waits for it)."""
    return name == PRUNE_LOCK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(row: Mapping[str, Any], now: float, host: str) -> bool:
    """A holder that stopped refreshing its lock, or whose process on this host is gone."""
    return now - row["heartbeat_at"] > LOCK_STALE_AFTER or (
        row["host"] == host and not _pid_alive(row["pid"]))


class Locks(Database):
    """The lock queries of ``Store``."""

    def acquire_lock(self, name: str, *, wait: float = 0.0, poll: float = 0.2,
                     blocked_by: Callable[[str], bool] | None = None) -> Lock:
        """Take a named cross-process lock, or raise Busy naming the holder.

        ``blocked_by`` says which other locks must not be held either (prune
        waits for every campaign lock: ``blocked_by=is_campaign_lock``). A lock
        whose process is gone (same host) or whose heartbeat is older than
        LOCK_STALE_AFTER is taken over: kill -9 never blocks the next run.
        ``wait`` applies only to blockers: the same name held elsewhere refuses
        at once.
        """
        deadline = time.monotonic() + wait
        host = socket.gethostname()
        pid = os.getpid()
        owner = f"pid {pid} on {host}"
        while True:
            now = time.time()
            holder: str | None = None
            same_name = False
            with self._write() as conn:
                for row in conn.execute(select(locks)).all():
                    m = row._mapping
                    if m["name"] != name and not (blocked_by and blocked_by(m["name"])):
                        continue
                    if _stale(m, now, host):
                        conn.execute(delete(locks).where(locks.c.name == m["name"]))
                    elif holder is None or m["name"] == name:
                        since = time.strftime("%H:%M:%S", time.localtime(m["acquired_at"]))
                        holder = f"{m['name']} is locked by {m['owner']}, since {since}"
                        same_name = m["name"] == name
                if holder is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(locks.insert().values(
                                name=name, owner=owner, pid=pid, host=host, acquired_at=now,
                                heartbeat_at=now))
                    except IntegrityError:  # another process took it between our read and write
                        holder = f"{name} is locked by another process"
                        same_name = True
                    else:
                        return Lock(self, name, pid, host)
            if same_name or time.monotonic() >= deadline:
                raise Busy(f"{holder}; try again when it has finished")
            time.sleep(poll)

    def running_senders(self, campaign: str) -> int:
        """Live holders of this campaign's lock(s): one on SQLite, one per sender on PostgreSQL."""
        now = time.time()
        host = socket.gethostname()
        n = 0
        with self._read() as conn:
            for row in conn.execute(select(locks)):
                m = row._mapping
                if is_campaign_lock(m["name"], campaign):
                    n += not _stale(m, now, host)
        return n


@dataclass
class Lock:
    """A held lock; refresh with heartbeat() during long runs, release() at the end."""

    db: Database
    name: str
    pid: int
    host: str
    released: bool = False

    def _mine(self) -> Any:
        return (locks.c.name == self.name, locks.c.pid == self.pid, locks.c.host == self.host)

    def heartbeat(self) -> None:
        """Show this holder is alive, so no one takes the lock over as stale."""
        with self.db._write() as conn:
            conn.execute(update(locks).where(*self._mine()).values(heartbeat_at=time.time()))

    def release(self) -> None:
        if not self.released:
            with self.db._write() as conn:
                conn.execute(delete(locks).where(*self._mine()))
            self.released = True

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
