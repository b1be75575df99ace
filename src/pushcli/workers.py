"""Sender processes: run one campaign's share in each of several processes.

``delivery`` decides what to send and runs one share in-process
(``delivery._run_partition``); this module only spawns the processes, relays
stop/abort to them, aggregates their progress and turns a worker's ledger
failure into the parent's ``StoreError``; ``stop_on_signals`` turns Ctrl-C and
SIGTERM into a graceful stop in the sending process. The partition runner is passed in
(a module-level function, so it pickles by name into a spawned process),
which keeps this module below ``delivery``: no import back up.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from pushcli.campaign import Renderer
from pushcli.errors import PushcliError, StoreError
from pushcli.keys import VapidSigner
from pushcli.messages import Stats, service_rate_limits
from pushcli.store import Store

#: ``delivery._run_partition``: sends one share of a plan in this process. ``plan`` is a
#: ``delivery.Plan`` (typed loosely: this module sits below delivery).
PartitionRunner = Callable[..., None]


class Control:
    """Stop requests, from signals (in-process) or from the parent (in a worker)."""

    def __init__(self) -> None:
        self.stop = False
        self.abort = False
        self.presses = 0

    def press(self) -> None:
        self.presses += 1
        self.stop = True
        if self.presses > 1:
            self.abort = True


@contextmanager
def stop_on_signals(control: Control, enabled: bool) -> Iterator[None]:
    """Ctrl-C / SIGTERM set flags instead of raising, while a send runs."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: control.press())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_workers(
    store: Store, plan: Any, signer: VapidSigner, workers: int, stats: Stats,
    on_progress: Callable[[Stats], None] | None, control: Control,
    heartbeat: Callable[[], None], run_partition: PartitionRunner,
) -> None:
    """Run the campaign in ``workers`` processes and aggregate their progress.

    Each gets an id partition (or, in shared mode, claims from the queue).
    Workers ignore SIGINT; the parent relays stop/abort down each worker's pipe,
    so one Ctrl-C at a terminal (which signals the whole process group) counts
    once. A worker whose parent dies stops by itself: the lock died with the parent.

    One plain pipe per worker carries progress up and stop/abort down. A
    multiprocessing Queue or Event would be named semaphores, which the resource
    tracker reports as "leaked" when a process holding them is killed.
    """
    ctx = multiprocessing.get_context("spawn")
    links = [ctx.Pipe(duplex=True) for _ in range(workers)]
    options = plan.options
    share = replace(options, concurrency=max(1, options.concurrency // workers),
                    rate_limit=options.rate_limit / workers if options.rate_limit else None,
                    rate_limits={s: r / workers for s, r in service_rate_limits(options).items()})
    procs = [
        ctx.Process(target=_worker_main, name=f"pushcli-sender-{i}", daemon=True, args=(
            store.url,
            replace(plan, options=share,
                    partition=None if plan.lease is not None else (i, workers)),
            signer.private_pem(), signer.subject, i, links[i][1], os.getpid(), run_partition))
        for i in range(workers)
    ]
    for p, (_, child_end) in zip(procs, links, strict=True):
        p.start()
        child_end.close()  # the worker has its copy; ours would hide its end-of-file
    conns = {i: parent_end for i, (parent_end, _) in enumerate(links)}
    latest: dict[int, dict[str, Any]] = {}
    store_errors: list[str] = []
    told: set[str] = set()
    last_beat = time.monotonic()

    def tell(command: str) -> None:
        if command in told:
            return
        told.add(command)
        for conn in conns.values():
            # a worker that is gone cannot be told; its end-of-file is read next round
            with contextlib.suppress(OSError):
                conn.send(command)

    try:
        while conns:  # each worker's pipe stays open until that worker exits
            for conn in mp_connection.wait(list(conns.values()), timeout=0.2):
                index = next(i for i, c in conns.items() if c is conn)
                try:
                    _, snapshot = conn.recv()
                except (EOFError, OSError):
                    conn.close()
                    del conns[index]
                    continue
                latest[index] = snapshot
                if snapshot.get("store_error"):
                    store_errors.append(snapshot["store_error"])
                    tell("stop")  # the others write to the same ledger: stop them too
            if control.stop:
                tell("stop")
            if control.abort:
                tell("abort")
            _merge(stats, latest.values())
            if on_progress is not None:
                on_progress(stats)
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                heartbeat()
    finally:
        for conn in conns.values():
            conn.close()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    if store_errors:
        raise StoreError(store_errors[0])
    failed = [p for p in procs if p.exitcode not in (0, None)]
    if failed and not control.stop:
        raise PushcliError(f"a sender process exited with code {failed[0].exitcode}; "
                           "re-run the same command to finish the campaign")


def _merge(stats: Stats, snapshots: Iterable[dict[str, Any]]) -> None:
    snapshots = list(snapshots)
    outcomes: Counter[str] = Counter()
    retries = ambiguous = signatures = 0
    for snap in snapshots:
        outcomes.update(snap["outcomes"])
        retries += snap["retries"]
        ambiguous += snap["ambiguous"]
        signatures += snap["signatures"]
    stats.outcomes = outcomes
    stats.retries, stats.ambiguous, stats.signatures = retries, ambiguous, signatures
    stats.merge_snapshots([snap.get("transport", {}) for snap in snapshots])


def _worker_main(
    db_url: str, plan: Any, private_pem: bytes, subject: str, index: int,
    link: mp_connection.Connection, parent_pid: int, run_partition: PartitionRunner,
) -> None:
    """Entry point of one sender process (spawned, so it shares no state but its args)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from py_vapid import Vapid02

    signer = VapidSigner(Vapid02.from_pem(private_pem), subject)
    control = Control()
    stats = Stats()
    last_sent = 0.0

    link_lock = threading.Lock()  # a Connection is not thread-safe; Queue.put was

    def report(s: Stats, force: bool = False, store_error: str | None = None) -> None:
        with link_lock:
            talk(s, force, store_error)

    def talk(s: Stats, force: bool, store_error: str | None) -> None:
        nonlocal last_sent
        orphaned = os.getppid() != parent_pid
        try:
            while not orphaned and link.poll():
                command = link.recv()
                control.stop = True
                control.abort = control.abort or command == "abort"
        except (EOFError, OSError):  # the parent's end closed: it died, and its lock with it
            orphaned = True
        if orphaned:
            control.stop = control.abort = True
            return
        now = time.monotonic()
        if force or now - last_sent > 0.2:
            last_sent = now
            try:
                link.send((index, {"outcomes": dict(s.outcomes), "retries": s.retries,
                                   "ambiguous": s.ambiguous, "signatures": signer.signatures,
                                   "store_error": store_error, "transport": s.snapshot()}))
            except OSError:  # the parent is gone
                control.stop = control.abort = True

    if os.getppid() != parent_pid:
        return  # the parent (and its lock) died while we started: send nothing
    try:
        with Store.open(db_url) as store:
            run_partition(store, plan, Renderer(plan.campaign), signer, stats, report,
                           control, None, poll=lambda: report(stats))
    except StoreError as exc:  # the parent says it in one line and exits 74
        report(stats, force=True, store_error=str(exc))
        raise SystemExit(exc.exit_code) from None
    report(stats, force=True)


__all__ = ["Control", "PartitionRunner", "run_workers", "stop_on_signals"]
