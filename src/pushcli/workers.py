"""Sender processes: run one campaign's shares in this process and in child processes.

``delivery`` decides what to send and how one share is sent
(``delivery._run_partition``); this module sends share 0 here, starts a child
process for each other share, relays stop/abort to them, aggregates their
progress and turns a child's ledger failure into the parent's ``StoreError``;
``stop_on_signals`` turns Ctrl-C and SIGTERM into a graceful stop in the sending
process. The partition runner is passed in (a module-level function, so it
pickles by name to a child), which keeps this module below ``delivery``: no
import back up.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection as mp_connection
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from pushcli import heap
from pushcli.campaign import Renderer
from pushcli.errors import PushcliError, StoreError
from pushcli.keys import VapidSigner
from pushcli.messages import Stats, service_rate_limits
from pushcli.spawn import RELAYED, Child, Spares, start_child
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
    heartbeat: Callable[[], None], run_partition: PartitionRunner, renderer: Renderer,
    spares: Spares | None = None,
) -> None:
    """Run the campaign in ``workers`` senders and aggregate their progress.

    This process sends share 0 itself and ``workers - 1`` child processes send
    the others: a parent that only watched would hold a whole Python, its store
    and the send path's imports (about 70 MB) for nothing, and start one process
    more. Each share is an id partition (or, in shared mode, claims from the queue).
    Children ignore SIGINT and SIGTERM; this process relays stop/abort down each child's link,
    so one Ctrl-C at a terminal (which signals the whole process group) counts
    once. A child whose parent dies stops by itself: the lock died with the parent.

    Children are plain ``python -c`` processes (``spawn``), not multiprocessing
    ones: spawn starts a resource tracker (one more 12 MB process) and re-imports
    the parent's ``__main__``. One socket per child carries its arguments and then
    progress up and stop/abort down. ``spares`` holds children started before the
    audience was counted: those needed are used (one that died meanwhile is replaced
    by a fresh child), the others killed.
    """
    options = plan.options
    share = replace(options, concurrency=max(1, options.concurrency // workers),
                    rate_limit=options.rate_limit / workers if options.rate_limit else None,
                    rate_limits={s: r / workers for s, r in service_rate_limits(options).items()})

    def share_of(i: int) -> Any:
        return replace(plan, options=share,
                       partition=None if plan.lease is not None else (i, workers))

    children: dict[int, Child] = {}
    conns: dict[int, mp_connection.Connection] = {}
    latest: dict[int, dict[str, Any]] = {}
    store_errors: list[str] = []
    told: set[str] = set()
    mine = Stats()  # share 0's figures; ``stats`` gets every share's sum

    def tell(command: str) -> None:
        if command in told:
            return
        told.add(command)
        for conn in conns.values():
            # a child that is gone cannot be told; its end-of-file is read next round
            with contextlib.suppress(OSError):
                conn.send(command)

    def gather(timeout: float) -> None:
        """Read what the children said (waiting up to ``timeout``), relay stop/abort,
        and show the sum of every share's progress."""
        for conn in mp_connection.wait(list(conns.values()), timeout=timeout):
            index = next(i for i, c in conns.items() if c is conn)
            try:
                snapshot = conn.recv()
            except (EOFError, OSError):
                conn.close()
                del conns[index]
                continue
            latest[index] = snapshot
            if snapshot.get("store_error"):
                store_errors.append(snapshot["store_error"])
                control.stop = True  # the others write to the same ledger: stop them too
        if control.stop:
            tell("stop")
        if control.abort:
            tell("abort")
        latest[0] = _snapshot(mine, signer)
        _merge(stats, latest.values())
        if on_progress is not None:
            on_progress(stats)

    own_error: StoreError | None = None
    ready: list[Child] = []
    try:
        ready = spares.take(workers - 1) if spares is not None else []
        for i in range(1, workers):
            args = (store.url, share_of(i), signer.private_pem(), signer.subject,
                    os.getpid(), run_partition)
            children[i] = _hand(ready.pop(0) if ready else None, args)
            conns[i] = children[i].link
        try:
            run_partition(store, share_of(0), renderer, signer, mine, None, control,
                          heartbeat, poll=lambda: gather(0))
        except StoreError as exc:  # said after the children have stopped
            own_error = exc
            control.stop = True
        last_beat = time.monotonic()
        while conns:  # each child's socket stays open until that child exits
            gather(0.2)
            if time.monotonic() - last_beat > 15:
                last_beat = time.monotonic()
                heartbeat()
        gather(0)
    finally:
        for unused in ready:  # a hand-over failed before they got their shares
            unused.discard()
        for conn in conns.values():
            conn.close()  # a child reads end-of-file: it stops, and aborts
        for child in children.values():
            try:
                child.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
    if own_error is not None:
        raise own_error
    if store_errors:
        raise StoreError(store_errors[0])
    failed = [c.process.returncode for c in children.values() if c.process.returncode != 0]
    if failed and not control.stop:
        raise PushcliError(f"a sender process exited with code {failed[0]}; "
                           "re-run the same command to finish the campaign")


def _hand(spare: Child | None, args: tuple[Any, ...]) -> Child:
    """Give a share to ``spare``, or to a fresh child if there is none or it has died
    while the audience was counted (killed, out of memory): its share is never lost."""
    if spare is not None:
        try:
            spare.hand(args)
        except OSError:  # its end of the link is closed: it is gone (hand reaped it)
            spare = None
        else:
            return spare
    try:
        child = start_child()
        child.hand(args)
    except OSError as exc:
        raise PushcliError(f"a sender process could not be started: {exc}") from None
    return child


def _snapshot(stats: Stats, signer: VapidSigner,
              store_error: str | None = None) -> dict[str, Any]:
    """One sender's progress in a picklable form (what a child sends up its link)."""
    return {"outcomes": dict(stats.outcomes), "retries": stats.retries,
            "ambiguous": stats.ambiguous, "signatures": signer.signatures,
            "ledger_retries": stats.ledger_retries,
            "store_error": store_error, "transport": stats.snapshot()}


def _merge(stats: Stats, snapshots: Iterable[dict[str, Any]]) -> None:
    snapshots = list(snapshots)
    outcomes: Counter[str] = Counter()
    retries = ambiguous = signatures = ledger_retries = 0
    for snap in snapshots:
        outcomes.update(snap["outcomes"])
        retries += snap["retries"]
        ambiguous += snap["ambiguous"]
        signatures += snap["signatures"]
        ledger_retries += snap["ledger_retries"]
    stats.outcomes = outcomes
    stats.retries, stats.ambiguous, stats.signatures = retries, ambiguous, signatures
    stats.ledger_retries = ledger_retries
    stats.merge_snapshots([snap.get("transport", {}) for snap in snapshots])


def _child_main(link: mp_connection.Connection) -> None:
    """A child sender: read its arguments from the link, send its share, exit with
    its status (74 when the ledger failed, like the parent). A fresh process: it
    shares no state with the parent but what comes down the link."""
    for sig in RELAYED:  # the parent relays them as stop/abort down the link
        signal.signal(sig, signal.SIG_IGN)
    heap.skip_collection_at_exit()  # the parent waits for this process to end
    try:
        db_url, plan, private_pem, subject, parent_pid, run_partition = link.recv()
    except (EOFError, OSError):  # the parent died before it said what to send
        return
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
                link.send(_snapshot(s, signer, store_error))
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
