"""How many requests one push-service origin may have in flight, learnt while sending.

A push service is tens of milliseconds away, so a fixed number of requests in
flight caps a send at ``limit / round-trip``. ``ConcurrencyLimit`` is an AIMD
limiter (additive increase, multiplicative decrease), the way TCP finds a
link's capacity:

- It starts modest (``initial``, 32) and, while the limit is actually used and
  latency holds, doubles once per window (a window is ``limit`` completed
  requests, about one round trip); after the first cut it grows by
  ``sqrt(limit)`` per window instead. It never passes ``ceiling``.
- "Latency holds" means the window's mean latency stays within
  ``latency_tolerance`` (1.5) times the lowest window mean seen (plus a few ms
  of slack). At a constant throughput latency grows in proportion to what is in
  flight (Little's law), so this is what stops growth once throughput stops
  rising: past that point more requests in flight only queue, here or there.
  Latency alone shrinks the limit gently (x0.9) and never below ``initial``.
  Doubling stops as soon as a window's latency passes half that margin (1.25x),
  like TCP's HyStart, so the first overshoot is not a whole doubling past the
  knee. (2.0 and no early exit, measured on loopback with the sender CPU-bound:
  p50 latency 75-83 ms and 2,252-2,311/s; 1.5: 39-51 ms and 2,407-2,850/s.)
- A window in which the event loop never waited for the network (it waited less
  than ``SATURATED`` of the window, 2 %) says nothing about the push service: the
  sender was CPU-bound, and the latency it measured is its own queue (on
  loopback the window means ran 10-120 ms while the limit wandered 32-256 and
  back to 32; a fixed limit of 80-160 a process sent 5-10 % more at 5-10 % less
  CPU a message). Such a window never cuts on latency; it moves the limit
  towards ``SATURATED_CAP`` (192): up while below it, because a fuller loop turn
  handles more answers per system call (one process, pinned at 32 against 128:
  3-4 % more CPU a message in three of three pairs; at 60 ms over HTTP/1.1 a cap
  of 128 sent 6-8 % less than the old rule in two pairs), and down (x0.9) while
  above it, because the sender is past its knee. Reaching the cap CPU-bound ends
  slow start when the service is near enough to need no more in flight (the
  ``BDP_GAIN`` test below): a doubling from there (one window in which the loop
  waited for its own threads) put 384 a process in flight; far away, a passing
  CPU-bound window must not slow the climb to what the distance needs.
  Over HTTP/1.1 every request in flight is a connection (~113 KB here,
  ``bench/conn_memory.py``): a cap of 256 put the 1,000,000 send's sender tree
  at 250 MB.
- A service far enough away that the cap leaves the loop waiting (192 / 150 ms is
  ~1,300/s) gives unsaturated windows, and there the latency rule grows it
  further, but only while the loop waited at least ``NEAR_SATURATED`` (10 %) of
  the window (closer to the knee, growing buys at most that idle share, at a
  cost in memory and queueing), latency holds against the lowest mean of any
  window, saturated ones included (a sender's own queue only adds latency, so
  none is below the service's), and the limit is below ``BDP_GAIN`` (2) times
  what the service's latency needs at the window's rate (rate x that lowest
  mean, by Little's law; BBR keeps twice this bandwidth-delay product in
  flight). Without these, windows in which the loop waited for its own threads
  (loading the next batch, writing the ledger) ratcheted the limit up: at
  1,000,000 on loopback to the ceiling, 500 a process, and 317 MB for the sender
  tree; and with the first two alone, one such window at 100,000 (15 % waited,
  2,121/s, lowest mean 27 ms: 114 needed at twice) doubled 192 to 384. 60 ms
  away the same test lets a process grow to 205-241 (~2,500/s at 70 ms: 350
  needed at twice). When the loop says nothing (uvloop, tests) every window
  counts.
- Throttling answers (429, WNS 406, 503) and timeouts halve it, at most once per
  round trip, once they pass ``THROTTLE_SHARE`` (5 %) of a window: more than
  that many of one window's worth of answers (``limit``), counting only requests
  started after the previous cut, so one burst of 429s counts once. A push
  service that answers a steady few percent 503 whatever the load is not asking
  for less (BBRv2 ignores packet loss below 2 % a round trip for the same
  reason): halving on every one, a fault mix with 5 % such answers held 3,000
  messages to 1-12 ms of latency at 64 in flight and 37 s against 22 s pinned,
  and 20,000 to more than 600 s against 61 s (``stress/fault_matrix.py``).
- Pinned (``adaptive=False``, from ``--concurrency N``) it stays at ``ceiling``.

``Pacer`` spaces request starts: a fixed ceiling (``rate_limit``, a push
service's quota such as FCM's 600,000/min) and, when adaptive, a rate learnt
from throttling. A quota answers 429 (WNS 406, autopush 503) to everything in
flight at once, so a burst of them (at least three, more than ``BURST_SHARE``,
20 %, of the answers of the last 0.1-0.2 s) drops the pace to 90 % of what the
origin accepted in the last second (in the second before the Retry-After pause
when the burst paused it; at most 30 % less a second, never below a quarter of
the best second's rate or 10/s); the pace then creeps up 1 % per second while
it is what holds the send back (each 429 costs a whole Retry-After pause, so
probing slowly keeps more of the quota). A steady few percent of 503s, or 429s
scripted per subscriber, are no burst; and a cut after which the share of
throttling answers did not halve by the next burst (within ``VERIFY`` seconds)
is undone, and only a share half as high again cuts after that. Cutting at
every throttling answer (once a second) ratcheted the pace down ~10 % a second
to the floor: the 20,000-subscriber fault matrix at the defaults took more
than 600 s against 61 s pinned at 64 in flight. A concurrency limit alone
cannot be polite to a rate quota: a service 60 ms away that allows 1,000/s is
over it with 61 requests in flight.

Pure bookkeeping with an injected clock: the engine decides when to call it.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable

#: Requests in flight an adaptive limit starts from, per origin.
INITIAL_LIMIT = 32
#: A window in which the loop waited for the network less than this share of its time
#: was CPU-bound: its latency is the sender's own queue.
SATURATED = 0.02
#: Below this share of waiting the loop is near its knee: the limit grows no further
#: than the cap (see the module docstring).
NEAR_SATURATED = 0.10
#: A CPU-bound sender's limit moves towards this (see the module docstring).
SATURATED_CAP = 192
#: Past the cap the limit grows only while below this many times the requests in flight
#: the service's latency needs at the window's rate (rate x lowest mean latency, Little's
#: law; BBR keeps twice that bandwidth-delay product in flight).
BDP_GAIN = 2.0
#: Throttling answers and timeouts cut the in-flight limit only above this share of a
#: window's answers: below it they are a steady fraction, not a load signal.
THROTTLE_SHARE = 0.05


class Signal(enum.Enum):
    """What one finished request says about the push service's load."""

    OK = "ok"  # an answer that was not a throttling one (201, 410, 400, ...)
    THROTTLED = "throttled"  # 429, WNS 406, 503: slow down
    TIMEOUT = "timeout"  # no answer in time: as much a congestion sign as a 429
    NONE = "none"  # says nothing about load (never posted, refused by our own guard)


class ConcurrencyLimit:
    """The in-flight limit of one origin (see the module docstring for the rules)."""

    def __init__(self, ceiling: int, *, adaptive: bool = True, initial: int = INITIAL_LIMIT,
                 latency_tolerance: float = 1.5, latency_slack: float = 0.005,
                 clock: Callable[[], float] = time.monotonic,
                 waited: Callable[[], float] | None = None) -> None:
        """``waited``: seconds the event loop has waited for the network so far, on
        ``clock``'s scale (``eventloop.waited_clock``); None counts every window."""
        if ceiling < 1:
            raise ValueError("ceiling must be at least 1")
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.initial = min(initial, ceiling) if adaptive else ceiling
        self._limit = float(self.initial)
        self._tolerance = latency_tolerance
        self._rising = 1 + (latency_tolerance - 1) / 2  # where slow start ends
        self._slack = latency_slack
        self._clock = clock
        self._waited = waited
        self.windows = 0  # windows measured with the loop's waits (adaptive)
        self.saturated_windows = 0  # of those, windows in which the loop never waited
        self.in_flight = 0
        self.peak_in_flight = 0  # the concurrency this origin actually reached
        self.peak_limit = self.initial
        self.cuts = 0  # multiplicative decreases on throttling answers or timeouts
        self.lowest_after_cut: int | None = None
        self.baseline: float | None = None  # lowest window mean latency, seconds
        self._slow_start = True
        self._last_cut = -math.inf
        self._reset_window()

    @property
    def limit(self) -> int:
        """Requests this origin may have in flight now."""
        return max(1, int(self._limit))

    def can_start(self) -> bool:
        """Whether one more request may go out to this origin now."""
        return self.in_flight < self.limit

    def start(self) -> float:
        """Count a request as in flight; returns its start time for ``finish``."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._window_busiest = max(self._window_busiest, self.in_flight)
        return self._clock()

    def finish(self, started: float, signal: Signal) -> None:
        """A request begun at ``started`` ended with ``signal``: adjust the limit."""
        self.in_flight -= 1
        if not self.adaptive or signal is Signal.NONE:
            return
        now = self._clock()
        size = max(self.limit, 4)  # answers in a window, about one round trip
        if signal is not Signal.OK:
            if started < self._last_cut:  # sent before the last cut: counted there
                return
            self._window_throttled += 1
            # at least two: one in a small window is no share at all
            if self._window_throttled > max(1.0, THROTTLE_SHARE * size):
                self._cut(now, 0.5, floor=1)
            elif self._window_count + self._window_throttled >= size:
                self._reset_window()  # a window of answers, too few of them to cut
            return
        self._window_count += 1
        self._window_latency += now - started
        answered = self._window_count + self._window_throttled
        if answered < size:
            return
        mean = self._window_latency / self._window_count
        if self._waited is not None:
            self.windows += 1
        busy = self._window_busiest >= self.limit - max(1, self.limit // 10)
        waited = self._waited_share(now)
        # the lowest mean of any window, saturated or not: a sender's own queue only ever
        # adds latency, so no window's mean is below the service's
        if self.baseline is None or mean < self.baseline:
            self.baseline = mean
        # in flight the service's latency needs at this window's rate, with BBR's margin
        span = now - self._window_began
        needed = BDP_GAIN * answered / span * self.baseline if span > 0 else math.inf
        if waited is not None and waited < SATURATED:
            # CPU-bound: the latency is our own queue, the service's is unknown
            self.saturated_windows += 1
            cap = float(min(self.ceiling, SATURATED_CAP))
            if self._limit > cap:  # past the knee: more in flight only queues here
                self._slow_start = False
                self._limit = max(cap, self._limit * 0.9)
            elif self._limit == cap:
                if self._limit >= needed:  # the knee, and near enough to need no more:
                    self._slow_start = False  # doubling is over (far away, a passing
                    # CPU-bound window must not slow the climb to what the distance needs)
            elif busy:
                self._grow(cap)
            self._reset_window()
            return
        if mean > self.baseline * self._tolerance + self._slack:
            # queueing: more in flight no longer buys throughput
            self._slow_start = False
            gentler = self._limit * 0.9
            self._limit = gentler if gentler >= self.initial else min(self._limit,
                                                                       float(self.initial))
            self._reset_window()
            return
        if self._slow_start and mean > self.baseline * self._rising + self._slack:
            # latency has started to rise: doubling again would overshoot the knee by
            # a whole window (memory and queueing), so grow gently from here
            self._slow_start = False
        top = float(self.ceiling)
        if (waited is not None and waited < NEAR_SATURATED) or self._limit >= needed:
            # near the knee, or already more in flight than the service's latency needs
            # at this rate: growing buys at most the loop's idle share, at the cost of
            # memory and queueing; up to the cap, and no further
            top = min(top, max(float(SATURATED_CAP), self._limit))
        if busy:
            self._grow(top)
        self._reset_window()

    def _grow(self, top: float) -> None:
        """One window's growth, not past ``top``: doubling in slow start, + sqrt(limit)
        after it."""
        if self._limit < top:
            step = self._limit if self._slow_start else max(1.0, math.sqrt(self._limit))
            self._limit = min(top, self._limit + step)
            self.peak_limit = max(self.peak_limit, self.limit)

    def _cut(self, now: float, factor: float, *, floor: int) -> None:
        self._limit = max(float(floor), self._limit * factor)
        self._last_cut = now
        self._slow_start = False
        self.cuts += 1
        low = self.lowest_after_cut
        self.lowest_after_cut = self.limit if low is None else min(low, self.limit)
        self._reset_window()

    def _waited_share(self, now: float) -> float | None:
        """The share of this window the loop spent waiting for the network (None: the
        loop does not say, or no time passed)."""
        span = now - self._window_began
        if self._waited is None or span <= 0:
            return None
        return (self._waited() - self._window_waited) / span

    def _reset_window(self) -> None:
        self._window_count = 0  # answers that were not throttling ones
        self._window_throttled = 0  # throttling answers and timeouts
        self._window_latency = 0.0
        self._window_busiest = self.in_flight
        self._window_began = self._clock()
        self._window_waited = self._waited() if self._waited is not None else 0.0


class Pacer:
    """Spaces request starts to at most ``rate`` per second (None: unpaced).

    ``reserve`` books the next start slot and says how long to wait for it, so
    concurrent callers queue in order without a lock. With ``adaptive`` it also
    learns a lower rate from throttling answers (see the module docstring).
    """

    #: A throttling answer is followed within a second by others from the same burst.
    CUT_EVERY = 1.0
    #: Learnt rates stay above this, and above ``PEAK_FLOOR`` of the best second's rate:
    #: throttling that does not follow the rate must not bring a send to a crawl.
    MIN_RATE = 10.0
    PEAK_FLOOR = 0.25
    #: A quota answers many requests at once; fewer throttling answers in the last
    #: 0.1-0.2 s than this are strays.
    MIN_THROTTLES = 3
    #: Throttling answers must be more than this share of the answers in the last
    #: 0.1-0.2 s to cut: a quota's burst is most of them, a steady fault rate a few percent.
    BURST_SHARE = 0.2
    #: A cut is checked by the next one within this many seconds: if the share of
    #: throttling answers did not at least halve, the cut is undone.
    VERIFY = 3.0
    #: Seconds of answers that measure a rate (the best one, a cut's share); shorter
    #: spans, such as just after a Retry-After pause, are too small a sample.
    MEASURED = 0.5
    #: A span of answers shorter than this measures no rate at all.
    SHORT_SPAN = 0.2
    #: How fast a learnt rate probes upwards while it holds the send back, per second.
    PROBE = 0.01
    _BUCKETS = 10  # accepted answers in 0.1 s buckets over the last second

    def __init__(self, rate: float | None = None, *, adaptive: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive")
        self.ceiling = rate
        self.adaptive = adaptive
        self.learnt: float | None = None
        self.cuts = 0
        self._clock = clock
        self._next_at = clock()
        self._last_cut = -math.inf
        self._grown_at = self._next_at
        self._first_accepted = math.inf
        self._resumed_at = -math.inf  # end of the last Retry-After pause
        self._counts = [0] * self._BUCKETS
        # every answer and the throttling ones, in the same buckets; unlike the accepted
        # count, a Retry-After pause does not clear them: a share is no rate
        self._answers = [0] * self._BUCKETS
        self._throttles = [0] * self._BUCKETS
        self._bucket = int(self._next_at * self._BUCKETS)
        self._peak = 0.0  # the highest accepted rate measured at a throttle or a pause
        self._tolerated = self.BURST_SHARE  # a throttling share that does not cut (raised
        # by a cut that did not lower it)
        self._verify: tuple[float, float, float | None] | None = None  # the last cut:
        # (when, the share it answered, the learnt rate before it)
        self.reverted = 0  # cuts undone because the share did not follow the rate
        self._paused_rate: float | None = None  # accepted/s in the second before a pause

    @property
    def rate(self) -> float | None:
        """Starts per second allowed now: the lower of the ceiling and the learnt rate."""
        if self.learnt is None:
            return self.ceiling
        return self.learnt if self.ceiling is None else min(self.ceiling, self.learnt)

    def reserve(self) -> float:
        """Book the next start; seconds the caller must wait before starting."""
        rate = self.rate
        if rate is None:
            return 0.0
        now = self._clock()
        slot = max(now, self._next_at)
        self._next_at = slot + 1.0 / rate
        if self.learnt is not None:
            if slot > now:  # the learnt rate is what holds the send back: probe upwards
                self.learnt *= 1.0 + self.PROBE * min(now - self._grown_at, 1.0)
                if self.ceiling is not None and self.learnt > self.ceiling:
                    self.learnt = self.ceiling
            self._grown_at = now
        return slot - now

    def accepted(self) -> None:
        """Count an answer that was not a throttling one (the rate the origin takes)."""
        if self.adaptive:
            if self._first_accepted == math.inf:
                self._first_accepted = self._clock()
            self._advance()
            self._counts[self._bucket % self._BUCKETS] += 1
            self._answers[self._bucket % self._BUCKETS] += 1

    def pause(self, until: float) -> None:
        """The origin said Retry-After: nothing goes out until ``until`` (engine clock).

        What it accepted before the pause says little about the rate after it, and
        the pause itself is no measure of the rate: the count starts again."""
        now = self._clock()
        self._advance()
        if now >= self._resumed_at:  # not already paused: the rate it took up to the pause
            span, taken = self._span(now), sum(self._counts)
            self._paused_rate = taken / span if span >= self.SHORT_SPAN else None
            self._note_peak(taken, span)
        self._resumed_at = max(self._resumed_at, until)
        self._counts = [0] * self._BUCKETS

    def throttled(self) -> None:
        """A throttling answer: once they are a burst (``MIN_THROTTLES``, more than
        ``BURST_SHARE`` of the latest answers), learn 90 % of what the origin accepted
        in the last second."""
        if not self.adaptive:
            return
        now = self._clock()
        self._advance()
        self._throttles[self._bucket % self._BUCKETS] += 1
        self._answers[self._bucket % self._BUCKETS] += 1
        taken = float(sum(self._counts))
        span = self._span(now)
        self._note_peak(taken, span)
        if now - self._last_cut < self.CUT_EVERY:
            return
        # a quota answers everything in flight at once: judge the last 0.1-0.2 s, where a
        # steady few percent stays a few percent and a burst stands out
        here, prev = self._bucket % self._BUCKETS, (self._bucket - 1) % self._BUCKETS
        throttles = self._throttles[here] + self._throttles[prev]
        share = throttles / (self._answers[here] + self._answers[prev])
        if throttles < self.MIN_THROTTLES or share <= self._tolerated:
            return  # strays, or a steady share: not a quota
        self._last_cut = now
        last = self._verify
        self._verify = None
        if (last is not None and now - last[0] <= self.VERIFY and span >= self.MEASURED
                and share >= 0.5 * last[1]):
            # the last cut left the share as it was: this throttling does not follow the
            # rate (a fixed fraction of 503s, per-subscriber 429s), so undo that cut and
            # let only a clearly higher share cut again (just after a Retry-After pause
            # the sample is too small to tell)
            self.learnt = last[2]
            self._tolerated = min(0.9, max(self._tolerated, 1.5 * share))
            self.reverted += 1
            return
        self._verify = (now, share, self.learnt)
        before = self.rate
        if now < self._resumed_at and self._paused_rate is not None:
            # the rest of the burst that paused the origin: what it took before the pause
            self.learnt = 0.9 * self._paused_rate
            if before is not None:
                self.learnt = max(self.learnt, 0.7 * before)
        elif span < self.SHORT_SPAN and before is not None:
            # just resumed: too short to measure, so the pace that was kept is what
            # went over
            self.learnt = 0.9 * before
        elif taken >= 1 and span > 0:
            self.learnt = 0.9 * taken / span
            if before is not None:  # at most -30 % a second: a few stray 429s are no quota
                self.learnt = max(self.learnt, 0.7 * before)
        elif self.learnt is not None:
            self.learnt = 0.7 * self.learnt
        if self.learnt is not None:
            self.learnt = max(self.MIN_RATE, self.PEAK_FLOOR * self._peak, self.learnt)
        self._grown_at = now
        self.cuts += 1

    def _note_peak(self, taken: float, span: float) -> None:
        """``taken`` accepted over ``span`` seconds: the best rate yet, if it measures one
        (the floor of any learnt rate is a share of it)."""
        if span >= self.MEASURED:
            self._peak = max(self._peak, taken / span)

    def _span(self, now: float) -> float:
        """Seconds the accepted count covers: the buckets span 0.9 s plus the part of the
        current one gone by (less when the origin answered for less than a second)."""
        return min(0.9 + (now * self._BUCKETS - self._bucket) / self._BUCKETS,
                   now - max(self._first_accepted, self._resumed_at))

    def _advance(self) -> None:
        bucket = int(self._clock() * self._BUCKETS)
        for b in range(max(self._bucket + 1, bucket - self._BUCKETS + 1), bucket + 1):
            self._counts[b % self._BUCKETS] = 0
            self._throttles[b % self._BUCKETS] = 0
            self._answers[b % self._BUCKETS] = 0
        self._bucket = max(self._bucket, bucket)
