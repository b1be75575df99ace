"""Starting child sender processes, and starting them early.

A child sender is a plain ``python -c`` process (see ``workers`` for why not
multiprocessing). It inherits one end of a socket pair; the parent sends its
``sys.path`` down it, then the modules to import while it waits, then (from
``workers``) what to send. Its imports cost about 0.6 s of CPU, as the
parent's own do; ``Spares`` starts the children of a large send at the very
beginning of ``pushcli send``, so those imports run on another core while this
process reads the campaign and opens the store, instead of after it. A spare
that turns out not to be needed (the audience is small) is killed at once: it
holds nothing yet.

This module imports nothing of pushcli's: ``cli`` uses it before the store,
the crypto and the campaign model are loaded. The child's entry point
(``workers._child_main``) is named in the boot string and resolved in the
child, never imported here.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pushcli.defaults import db_setting

#: What a child runs: ``sys.path`` and then the modules to warm up come down the socket it
#: inherits (fd in argv[1]), so it imports the same pushcli the parent runs; then
#: ``_child_main`` reads what to send. Any end-of-file before that: the parent died or
#: did not need it, and it exits quietly.
_BOOT = ("import sys\n"
         "from multiprocessing.connection import Connection\n"
         "link = Connection(int(sys.argv[1]))\n"
         "try:\n"
         "    sys.path[:] = link.recv()\n"
         "    warm = link.recv()\n"
         "except (EOFError, OSError):\n"
         "    sys.exit(0)\n"
         "for name in warm:\n"
         "    __import__(name)\n"
         "from pushcli.workers import _child_main\n"
         "_child_main(link)\n")

#: What a spare imports while it waits for its share: the send path (``delivery`` pulls
#: in the store, the campaign model and the templates; ``engine`` libcurl and the crypto).
SEND_PATH = ("pushcli.delivery", "pushcli.engine")

#: Signals a child leaves to the parent, which turns them into a graceful stop it relays.
RELAYED = frozenset({signal.SIGINT, signal.SIGTERM})

#: ``--workers`` may ask for this many sender processes.
WORKERS_RANGE = (1, 64)
#: Below this many pending messages one process is quicker than spawning more. Measured
#: on 2 cores (bench/send_bench.py --workers 1|2, whole process): 5,000 took 5.0 s alone and
#: 4.3 s with 2; 10,000 7.9-8.3 s and 6.1-6.7 s (a sender starts in under a second).
AUTO_WORKERS_FROM = 5_000
#: Sender processes at most when ``--workers`` is not given (one per core up to this).
AUTO_WORKERS_MAX = 4

#: A SQLite store at least this large (about 5,000 subscribers, the size from which a send
#: uses one sender per core) gets its spares started before the audience is counted.
LARGE_STORE_BYTES = 2_000_000


@dataclass
class Child:
    """One started sender process and the parent's end of its link."""

    process: subprocess.Popen[bytes]
    link: mp_connection.Connection

    def hand(self, args: tuple[Any, ...]) -> None:
        """Give the child its share (what ``workers._child_main`` reads)."""
        try:
            self.link.send(args)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Stop a child that was never handed work: it holds no lock and has sent nothing."""
        self.link.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


def start_child(warm: Sequence[str] = ()) -> Child:
    """Start one sender process; it imports ``warm`` and then waits for ``Child.hand``.

    SIGINT and SIGTERM are blocked while it starts, and blocked signals stay
    blocked across exec: a Ctrl-C, or a service manager's SIGTERM to the whole
    group, during the child's imports reaches only this process (which relays a
    graceful stop) instead of killing the child with its requests in flight."""
    ours, theirs = socket.socketpair()
    masked = threading.current_thread() is threading.main_thread()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED) if masked else None
    try:
        process = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno())],
                                   pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    finally:
        if before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        theirs.close()  # the child has its copy; ours would hide its end-of-file
    child = Child(process, mp_connection.Connection(ours.detach()))
    try:
        child.link.send(sys.path)
        child.link.send(list(warm))
    except BaseException:
        child.discard()
        raise
    return child


def senders_for(pending: int, workers: int | None, *, limit: int | None = None,
                to: str | None = None, cores: int | None = None) -> int:
    """How many sender processes a send of ``pending`` messages runs: one for a test
    send (``--limit``, ``--to``), else ``--workers`` if given, else one per core (at
    most ``AUTO_WORKERS_MAX``) from ``AUTO_WORKERS_FROM``."""
    if _test_send(limit, to):
        return 1
    if workers is not None:
        return workers
    return 1 if pending < AUTO_WORKERS_FROM else _auto_senders(cores)


def _test_send(limit: int | None, to: str | None) -> bool:
    """``--limit`` or ``--to``: a handful of test sends is not worth splitting."""
    return limit is not None or to is not None


def _auto_senders(cores: int | None) -> int:
    return max(1, min(cores if cores is not None else os.cpu_count() or 1, AUTO_WORKERS_MAX))


def spares_for(workers: int | None, db: str | None, *, limit: int | None = None,
               to: str | None = None, cores: int | None = None) -> int:
    """How many child senders to start before the audience is counted.

    None for a test send (``senders_for`` runs it in one process). ``--workers N``
    asks for N-1 children whatever the audience (none for a value out of
    ``WORKERS_RANGE``: the send refuses it). Without it, only a SQLite
    store of at least ``LARGE_STORE_BYTES`` gets them early: a smaller one cannot
    hold ``AUTO_WORKERS_FROM`` subscribers, and a PostgreSQL store cannot be sized
    without loading its driver. A spare that is not needed costs its imports
    (about 0.6 s of CPU on another core) and is killed.
    """
    if _test_send(limit, to):
        return 0
    if workers is not None:
        lo, hi = WORKERS_RANGE
        return workers - 1 if lo <= workers <= hi else 0
    raw = db_setting(db)
    path = raw[len("sqlite:///"):] if raw.startswith("sqlite:///") else raw
    if "://" in path:
        return 0
    try:
        size = os.stat(os.path.expanduser(path)).st_size
    except OSError:
        return 0
    return _auto_senders(cores) - 1 if size >= LARGE_STORE_BYTES else 0


class Spares:
    """Child senders started early; ``take`` hands some out, the rest are killed.

    Used as a context manager around a send, so no spare outlives it, whatever
    happens before the send decides how many senders it runs."""

    def __init__(self, count: int) -> None:
        self._waiting: list[Child] = []
        try:
            for _ in range(count):
                self._waiting.append(start_child(SEND_PATH))
        except BaseException:
            self.close()
            raise

    def take(self, count: int) -> list[Child]:
        """Up to ``count`` spares for the send; any others are killed now (not at the end
        of the send), so they stop using a core the send needs."""
        taken, rest = self._waiting[:count], self._waiting[count:]
        self._waiting = []
        for child in rest:
            child.discard()
        return taken

    def close(self) -> None:
        self.take(0)

    def __enter__(self) -> Spares:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AUTO_WORKERS_FROM", "AUTO_WORKERS_MAX", "LARGE_STORE_BYTES", "RELAYED", "SEND_PATH",
           "WORKERS_RANGE", "Child", "Spares", "senders_for", "spares_for", "start_child"]
