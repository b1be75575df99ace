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
import math
import multiprocessing.connection as mp_connection
import os
import queue
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

#: Subscriber ids ``lo < id <= hi`` (no upper end when ``hi`` is None): one dealt share.
IdRange = tuple[int, int | None]

#: What a child sends up its link to ask for its next id range (``Dealer.take``).
ASK_RANGE = "range?"


class Dealer:
    """Deals a campaign's id space to the sender processes, range by range, as they ask.

    A fixed split (half the ids each) ends with one process idle while the other
    still sends: in a 100k send on this machine the two senders ended 0.3-2.2 s
    apart (of ~26 s), the parent usually last. Ranges shrink as the space runs
    out (guided self-scheduling: what is left over four times the number of
    senders, as a child holds the range it sends and the next one it asked
    for), down to about ``smallest`` pending subscribers; measured, the senders
    now end 0.04-0.05 s apart. Ranges are ``(lo, hi]``; each id is dealt once,
    so no two senders ever share a subscriber. The last range has no upper end
    (``(highest, None)``): subscribers imported while the campaign is sent are
    sent too, as a one-process send's id scan would. Thread-safe: the parent's
    feed thread and its progress loop both take ranges.
    """

    def __init__(self, low: int, high: int, *, senders: int, pending: int,
                 smallest: int = 250) -> None:
        self._next = low - 1
        self._high = high
        self._senders = max(1, senders)
        span = high - low + 1
        # ids that hold about ``smallest`` pending subscribers (the audience may be sparse)
        self._smallest = (max(smallest, math.ceil(smallest * span / pending))
                          if pending > 0 and span > 0 else max(1, span))
        self._lock = threading.Lock()
        self._done = False

    def take(self) -> IdRange | None:
        """The next range ``(lo, hi]`` of ids to send to; None when all are dealt."""
        with self._lock:
            if self._done:
                return None
            left = self._high - self._next
            if left <= 0:
                self._done = True
                return self._high, None
            size = min(left, max(self._smallest, math.ceil(left / (4 * self._senders))))
            lo = self._next
            self._next += size
            return lo, self._next

    def close(self) -> None:
        """Deal nothing more (a stop): every sender ends with the range it holds."""
        with self._lock:
            self._done = True


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
    more. Each sender asks a ``Dealer`` for id range after id range until none is left
    (in shared mode it claims batches from the queue instead).
    Children ignore SIGINT and SIGTERM; this process relays stop/abort down each child's link,
    so one Ctrl-C at a terminal (which signals the whole process group) counts
    once. A child whose parent dies stops by itself: the lock died with the parent.

    Children are plain ``python -c`` processes (``spawn``), not multiprocessing
    ones: spawn starts a resource tracker (one more 12 MB process) and re-imports
    the parent's ``__main__``. One socket per child carries its arguments and then
    progress up and stop/abort down, and its range requests up and their answers
    down (the first range goes with the arguments). ``spares`` holds children started before the
    audience was counted: those needed are used (one that died meanwhile is replaced
    by a fresh child), the others killed.
    """
    options = plan.options
    share = replace(options, concurrency=max(1, options.concurrency // workers),
                    rate_limit=options.rate_limit / workers if options.rate_limit else None,
                    rate_limits={s: r / workers for s, r in service_rate_limits(options).items()})

    shared_plan = replace(plan, options=share)
    dealer = (None if plan.lease is not None else
              Dealer(*store.id_span(), senders=workers, pending=stats.total))

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
            said, closed = _read_waiting(conn)  # all of it: a range request waits for none
            for snapshot in said:
                if snapshot == ASK_RANGE:
                    with contextlib.suppress(OSError):  # gone: its end-of-file is read next
                        conn.send((ASK_RANGE, dealer.take() if dealer is not None else None))
                    continue
                latest[index] = snapshot
                if snapshot.get("store_error"):
                    store_errors.append(snapshot["store_error"])
                    control.stop = True  # the others write to the same ledger: stop them too
            if closed:
                conn.close()
                del conns[index]
        if control.stop:
            if dealer is not None:
                dealer.close()
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
            args = (store.url, shared_plan, signer.private_pem(), signer.subject,
                    os.getpid(), run_partition, dealer.take() if dealer is not None else None)
            children[i] = _hand(ready.pop(0) if ready else None, args)
            conns[i] = children[i].link
        try:
            run_partition(store, shared_plan, renderer, signer, mine, None, control,
                          heartbeat, poll=lambda: gather(0),
                          ranges=dealer.take if dealer is not None else None)
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


def _read_waiting(conn: mp_connection.Connection) -> tuple[list[Any], bool]:
    """Every message waiting on a child's link (at least one: it is readable), and
    whether its end has closed (the child exited or died)."""
    said: list[Any] = []
    try:
        while True:
            said.append(conn.recv())
            if not conn.poll():
                return said, False
    except (EOFError, OSError):
        return said, True


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


class RangesFromParent:
    """A child's ``ranges``: the range it holds, while the next is already asked for.

    ``first`` came with the child's share (None: the parent had nothing left to deal).

    The answer comes back through the child's progress loop (``talk`` reads the
    link every 0.1 s) and the parent's (likewise): asking one range ahead hides
    that wait. None once the parent has nothing left, or on a stop.
    """

    def __init__(self, first: IdRange | None, ask: Callable[[], None],
                 answers: queue.SimpleQueue[IdRange | None], control: Control) -> None:
        self._next: IdRange | None = first
        self._asked = False
        self._ask, self._answers, self._control = ask, answers, control

    def __call__(self) -> IdRange | None:
        if self._asked:
            self._next = self._answer()
            self._asked = False
        current, self._next = self._next, None
        if current is None or self._control.stop:
            return None
        try:
            self._ask()
        except OSError:  # the parent is gone: this range is the last
            return current
        self._asked = True
        return current

    def _answer(self) -> IdRange | None:
        while True:
            try:
                return self._answers.get(timeout=0.2)
            except queue.Empty:
                if self._control.stop:
                    return None


def _child_main(link: mp_connection.Connection) -> None:
    """A child sender: read its arguments from the link, send its share, exit with
    its status (74 when the ledger failed, like the parent). A fresh process: it
    shares no state with the parent but what comes down the link."""
    for sig in RELAYED:  # the parent relays them as stop/abort down the link
        signal.signal(sig, signal.SIG_IGN)
    heap.skip_collection_at_exit()  # the parent waits for this process to end
    try:
        db_url, plan, private_pem, subject, parent_pid, run_partition, first = link.recv()
    except (EOFError, OSError):  # the parent died before it said what to send
        return
    from py_vapid import Vapid02

    signer = VapidSigner(Vapid02.from_pem(private_pem), subject)
    control = Control()
    stats = Stats()
    last_sent = 0.0

    link_lock = threading.Lock()  # a Connection is not thread-safe; Queue.put was
    answers: queue.SimpleQueue[IdRange | None] = queue.SimpleQueue()

    def ask() -> None:
        with link_lock:
            link.send(ASK_RANGE)

    def report(s: Stats, force: bool = False, store_error: str | None = None) -> None:
        with link_lock:
            talk(s, force, store_error)

    def talk(s: Stats, force: bool, store_error: str | None) -> None:
        nonlocal last_sent
        orphaned = os.getppid() != parent_pid
        try:
            while not orphaned and link.poll():
                command = link.recv()
                if isinstance(command, tuple):  # (ASK_RANGE, the next range or None)
                    answers.put(command[1])
                    continue
                control.stop = True
                control.abort = control.abort or command == "abort"
        except (EOFError, OSError):  # the parent's end closed: it died, and its lock with it
            orphaned = True
        if orphaned:
            control.stop = control.abort = True
            answers.put(None)  # a range request waits no more
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
                           control, None, poll=lambda: report(stats),
                           # shared mode claims from the queue; else the parent deals ids
                           ranges=None if plan.lease is not None else
                           RangesFromParent(first, ask, answers, control))
    except StoreError as exc:  # the parent says it in one line and exits 74
        report(stats, force=True, store_error=str(exc))
        raise SystemExit(exc.exit_code) from None
    report(stats, force=True)


__all__ = ["Control", "PartitionRunner", "run_workers", "stop_on_signals"]
