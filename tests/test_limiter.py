"""Adaptive concurrency and pacing per push-service origin (``pushcli.limiter``), and the
engine shrinking its in-flight limit when the push service throttles, losing nothing.

The limiter tests drive a fake clock: no sleeping, no timing assertions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pushcli.encoding import b64_decode
from pushcli.engine import Engine
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.limiter import INITIAL_LIMIT, SATURATED_CAP, ConcurrencyLimit, Pacer, Signal
from pushcli.messages import DeliveryOptions, DeliveryRecord, Job, LatencyHistogram, Stats
from pushcli.pushservices import Outcome, check_endpoint
from pushcli.testing import PushServiceEmulator


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class LoopWaits:
    """The event loop's waiting time: advances with the clock while the loop is idle."""

    def __init__(self) -> None:
        self.waited = 0.0

    def __call__(self) -> float:
        return self.waited


def run_window(limit: ConcurrencyLimit, clock: Clock, latency: float,
               signal: Signal = Signal.OK, fill: bool = True,
               waits: LoopWaits | None = None, idle_share: float = 0.0) -> None:
    """One round trip: fill the limit (or send 4), advance ``latency``, finish them all;
    with ``waits``, the event loop waited ``idle_share`` of that time."""
    n = limit.limit if fill else 4
    starts = [limit.start() for _ in range(n)]
    clock.now += latency
    if waits is not None:
        waits.waited += idle_share * latency
    for started in starts:
        limit.finish(started, signal)


def throttle(pacer: Pacer, n: int) -> None:
    """``n`` throttling answers at once (one burst)."""
    for _ in range(n):
        pacer.throttled()


def test_starts_modest_and_doubles_while_latency_holds() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    assert limit.limit == INITIAL_LIMIT == 32
    seen = []
    for _ in range(6):
        run_window(limit, clock, 0.06)
        seen.append(limit.limit)
    assert seen == [64, 128, 256, 512, 1000, 1000]  # never past the ceiling
    assert limit.peak_limit == 1000 and limit.cuts == 0


def test_does_not_grow_when_the_limit_is_not_used() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    for _ in range(5):
        run_window(limit, clock, 0.06, fill=False)  # only 4 in flight of 32 allowed
    assert limit.limit == 32


def test_latency_growth_stops_growth_and_backs_off_gently_not_below_the_start() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    run_window(limit, clock, 0.01)
    run_window(limit, clock, 0.01)
    assert limit.limit == 128
    run_window(limit, clock, 0.05)  # 5x the baseline: queueing, not capacity
    assert limit.limit == 115  # x0.9
    for _ in range(30):
        run_window(limit, clock, 0.05)
    assert limit.limit == INITIAL_LIMIT  # latency alone never goes below the start


def test_slow_start_ends_when_latency_starts_rising_then_grows_gently() -> None:
    """Doubling past the knee cost a whole window of queueing: on loopback with the
    sender CPU-bound, p50 latency 75-83 ms instead of 39-51 ms."""
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    run_window(limit, clock, 0.020)
    assert limit.limit == 64
    run_window(limit, clock, 0.032)  # past 1.25x the baseline + 5 ms, within 1.5x + 5 ms
    assert limit.limit == 64 + 8  # sqrt(64) more, not another doubling
    run_window(limit, clock, 0.032)
    assert limit.limit == 72 + 8  # and gently from then on
    run_window(limit, clock, 0.040)  # 2x: queueing
    assert limit.limit == 72  # x0.9


def test_a_cpu_bound_sender_grows_to_the_saturated_cap_and_holds_whatever_its_latency() -> None:
    """On loopback the latency is the sender's own queue: 10-120 ms while the old rule
    sent the limit 32 -> 256 -> 32; a loop that never waited must not read it as the
    service's."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    seen = []
    for latency in (0.02, 0.03, 0.08, 0.2, 0.5, 0.02, 0.3):
        run_window(limit, clock, latency, waits=waits)
        seen.append(limit.limit)
    assert seen == [64, 128, SATURATED_CAP] + [SATURATED_CAP] * 4
    assert limit.saturated_windows == 7 and limit.cuts == 0
    assert limit.baseline == pytest.approx(0.02)  # the lowest window, saturated or not


def test_a_saturated_loop_brings_a_limit_grown_past_the_cap_back_to_it() -> None:
    """Windows in which the loop waited (start-up, or a service far away) grew the limit;
    once the loop saturates, more in flight only queues in the sender: back to the cap,
    gently, and not below."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(4):
        run_window(limit, clock, 0.06, waits=waits, idle_share=0.5)  # waiting: slow start
    assert limit.limit == 512
    seen = []
    for latency in (0.2, 0.4) + (0.2,) * 10:  # now CPU-bound
        run_window(limit, clock, latency, waits=waits)
        seen.append(limit.limit)
    assert seen[:3] == [460, 414, 373]  # x0.9 a window
    assert seen[-1] == SATURATED_CAP and min(seen) == SATURATED_CAP
    assert limit.saturated_windows == 12 and limit.cuts == 0


def test_a_limit_hovers_where_the_loop_just_saturates() -> None:
    """150 ms away the loop still waits at some limit: the latency rule grows it in those
    windows, and the saturated ones bring it back towards the cap."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(2):
        run_window(limit, clock, 0.15, waits=waits, idle_share=0.3)
    run_window(limit, clock, 0.15, waits=waits)  # saturated at 128: up to the cap
    run_window(limit, clock, 0.15, waits=waits)  # at the cap: stays
    assert limit.limit == SATURATED_CAP
    run_window(limit, clock, 0.15, waits=waits, idle_share=0.3)  # waiting again: grows
    # still in slow start: latency held, and at the cap 150 ms away needs more in flight
    # (192 at 1,280/s x 150 ms x 2 = 384), so the CPU-bound windows did not end it
    assert limit.limit == 2 * SATURATED_CAP
    run_window(limit, clock, 0.3, waits=waits)  # saturated: past the knee
    after_knee = 2 * SATURATED_CAP * 0.9
    assert limit.limit == int(after_knee)
    run_window(limit, clock, 0.15, waits=waits, idle_share=0.3)
    assert limit.limit == int(after_knee + after_knee ** 0.5)  # sqrt(limit) a window


def test_reaching_the_cap_cpu_bound_ends_slow_start_only_when_near_enough() -> None:
    """On loopback the windows at the cap are CPU-bound with latency well above the
    lowest (the sender's queue): the rate needs fewer than the cap in flight, so
    doubling is over, and a later window in which the loop waited grows it by
    sqrt(limit), not to twice the cap."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(3):
        run_window(limit, clock, 0.02, waits=waits)  # CPU-bound: up to the cap
    assert limit.limit == SATURATED_CAP
    run_window(limit, clock, 0.06, waits=waits)  # at the cap: 3,200/s x 20 ms x 2 = 128
    run_window(limit, clock, 0.02, waits=waits, idle_share=0.3)  # waiting, latency held
    assert limit.limit == int(SATURATED_CAP + SATURATED_CAP ** 0.5)


def test_a_loop_waiting_for_its_own_threads_does_not_grow_the_limit_past_the_cap() -> None:
    """At 100,000 on loopback a window in which the loop waited 15 % of the time (for its
    batch loader) with latency within 1.25x of the lowest doubled the limit from the cap,
    192 -> 384 a process: the 1,000,000 send's 537 in flight and 251 MB. Twice what the
    service's latency needs at the window's rate (2,133/s x 25 ms x 2 = 107 in flight)
    is below the cap, so more in flight could only queue."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(3):
        run_window(limit, clock, 0.025, waits=waits)  # CPU-bound: up to the cap
    assert limit.limit == SATURATED_CAP and limit.baseline == pytest.approx(0.025)
    for _ in range(10):
        clock.now += 0.06  # the loop waits for its loader with nothing in flight...
        waits.waited += 0.06
        run_window(limit, clock, 0.03, waits=waits)  # ...then fills the limit: 30 ms
    assert limit.limit == SATURATED_CAP and limit.peak_limit == SATURATED_CAP


def test_waits_for_its_own_threads_do_not_ratchet_the_limit_up() -> None:
    """At 1,000,000 on loopback the loop now and then waited for its batch loader or
    ledger writer: those windows look unsaturated, and with a baseline taken only from
    them (already the sender's own queue) they grew the limit to the ceiling, 317 MB.
    Against the lowest mean of any window they read as queueing instead."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(3):
        run_window(limit, clock, 0.02, waits=waits)
    assert limit.limit == SATURATED_CAP
    seen = []
    for k in range(20):
        run_window(limit, clock, 0.12, waits=waits, idle_share=0.5 if k % 3 == 0 else 0.0)
        seen.append(limit.limit)
    assert max(seen) <= SATURATED_CAP
    assert seen[0] == int(SATURATED_CAP * 0.9)  # the waiting window cut it
    assert min(seen) >= 0.7 * SATURATED_CAP


def test_near_the_knee_the_limit_grows_to_the_cap_and_no_further() -> None:
    """A loop that waited only 2-10 % of a window gains at most that share from more in
    flight: growth stops at the cap (and a limit already above it holds)."""
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    seen = []
    for _ in range(4):
        run_window(limit, clock, 0.06, waits=waits, idle_share=0.05)
        seen.append(limit.limit)
    assert seen == [64, 128, SATURATED_CAP, SATURATED_CAP]
    run_window(limit, clock, 0.06, waits=waits, idle_share=0.5)  # waiting: grows on
    assert limit.limit == 2 * SATURATED_CAP
    run_window(limit, clock, 0.06, waits=waits, idle_share=0.05)  # near: holds there
    assert limit.limit == 2 * SATURATED_CAP and limit.saturated_windows == 0


def test_a_loop_that_waits_again_reads_latency_as_the_services() -> None:
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    run_window(limit, clock, 0.02, waits=waits, idle_share=0.5)
    run_window(limit, clock, 0.02, waits=waits, idle_share=0.5)
    assert limit.limit == 128 and limit.baseline == pytest.approx(0.02)
    run_window(limit, clock, 0.3, waits=waits)  # saturated: no cut (grows to the cap)
    assert limit.limit == SATURATED_CAP
    run_window(limit, clock, 0.3, waits=waits, idle_share=0.1)  # waited: queueing there
    assert limit.limit == int(SATURATED_CAP * 0.9)


@pytest.mark.parametrize("signal", [Signal.THROTTLED, Signal.TIMEOUT])
def test_a_saturated_loop_still_halves_on_throttling(signal: Signal) -> None:
    clock, waits = Clock(), LoopWaits()
    limit = ConcurrencyLimit(1000, clock=clock, waited=waits)
    for _ in range(3):
        run_window(limit, clock, 0.02, waits=waits)
    assert limit.limit == SATURATED_CAP
    run_window(limit, clock, 0.02, signal)
    assert limit.limit == SATURATED_CAP // 2 and limit.cuts == 1


@pytest.mark.parametrize("signal", [Signal.THROTTLED, Signal.TIMEOUT])
def test_throttling_or_timeouts_halve_once_per_round_trip(signal: Signal) -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    for _ in range(3):
        run_window(limit, clock, 0.06)
    assert limit.limit == 256
    run_window(limit, clock, 0.06, signal)  # 256 throttled answers of one burst
    assert limit.limit == 128 and limit.cuts == 1
    run_window(limit, clock, 0.06, signal)  # started after the cut: cuts again
    assert limit.limit == 64 and limit.cuts == 2
    assert limit.lowest_after_cut == 64
    # after a cut, additive growth: + sqrt(limit) per round trip
    run_window(limit, clock, 0.06)
    assert limit.limit == 72


def test_a_steady_few_percent_of_throttling_does_not_cut_the_limit() -> None:
    """3 % of every window's answers are 503s or timeouts, whatever is in flight: no
    load signal, so the limit grows as without them; 10 % of one window cuts it."""
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    for _ in range(4):
        starts = [limit.start() for _ in range(limit.limit)]
        clock.now += 0.06
        for i, started in enumerate(starts):
            limit.finish(started, Signal.THROTTLED if i % 33 == 32 else Signal.OK)
    assert limit.cuts == 0 and limit.limit == 512
    starts = [limit.start() for _ in range(limit.limit)]
    clock.now += 0.06
    for i, started in enumerate(starts):
        limit.finish(started, Signal.TIMEOUT if i % 10 == 9 else Signal.OK)
    assert limit.cuts == 1 and limit.limit == 256


def test_repeated_throttling_goes_down_to_one_request_but_not_zero() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    for _ in range(10):
        run_window(limit, clock, 0.06, Signal.THROTTLED)
    assert limit.limit == 1 and limit.can_start()


def test_signals_without_an_answer_change_nothing() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(1000, clock=clock)
    run_window(limit, clock, 0.06, Signal.NONE)
    assert limit.limit == 32 and limit.in_flight == 0


def test_pinned_limit_never_moves() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(8, adaptive=False, clock=clock)
    assert limit.limit == 8
    for signal in (Signal.OK, Signal.THROTTLED, Signal.TIMEOUT, Signal.OK):
        run_window(limit, clock, 0.06, signal)
        assert limit.limit == 8
    assert limit.peak_in_flight == 8 and limit.cuts == 0


def test_a_small_ceiling_is_the_start() -> None:
    assert ConcurrencyLimit(10, clock=Clock()).limit == 10


def test_in_flight_is_bounded_by_the_limit() -> None:
    limit = ConcurrencyLimit(1000, clock=Clock())
    started = 0
    while limit.can_start():
        limit.start()
        started += 1
    assert started == 32 == limit.in_flight


def test_pacer_spaces_starts_at_its_ceiling() -> None:
    clock = Clock()
    pacer = Pacer(10_000, clock=clock)  # FCM's default quota, per second
    delays = [pacer.reserve() for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.0001, 0.0002, 0.0003, 0.0004])
    assert Pacer(None, clock=clock).reserve() == 0.0


def test_pacer_learns_the_rate_the_origin_takes_and_probes_up_slowly() -> None:
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    assert pacer.rate is None
    for _ in range(1000):  # the origin takes 1,000 in the last second, then throttles
        clock.now += 0.001
        pacer.accepted()
    throttle(pacer, 2)  # strays: not yet
    assert pacer.rate is None and pacer.cuts == 0
    throttle(pacer, 58)  # a burst: most of the latest answers
    assert pacer.rate == pytest.approx(900, rel=0.01)
    throttle(pacer, 100)  # the rest of the same burst: once per second
    assert pacer.cuts == 1
    for _ in range(1000):  # 10 s of more demand than the learnt rate allows
        clock.now += 0.01
        for _ in range(20):
            pacer.reserve()
    assert 980 < pacer.rate < 1010  # ~1 %/s upwards
    capped = Pacer(500, adaptive=True, clock=clock)
    for _ in range(1000):
        clock.now += 0.001
        capped.accepted()
    throttle(capped, 60)
    assert capped.rate == 500  # the ceiling still holds


def test_pacer_without_a_measure_cuts_what_it_had_learnt() -> None:
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    pacer.throttled()  # throttled before anything was accepted: nothing to learn from
    assert pacer.rate is None
    for _ in range(100):
        clock.now += 0.01
        pacer.accepted()
    throttle(pacer, 6)  # 6 of 106 answers
    assert pacer.rate == pytest.approx(90, rel=0.02)
    clock.now += 5  # nothing accepted in the last second
    pacer.throttled()  # one alone is a stray
    assert pacer.rate == pytest.approx(90, rel=0.02)
    throttle(pacer, 2)
    assert pacer.rate == pytest.approx(63, rel=0.02)  # -30 % at most
    for _ in range(20):
        clock.now += 5
        throttle(pacer, 3)
    # never below a quarter of the best second measured (100/s), however long it goes on
    assert pacer.rate == pytest.approx(Pacer.PEAK_FLOOR * 100, rel=0.02)
    slow = Pacer(None, adaptive=True, clock=clock)
    for _ in range(20):  # 20/s accepted: a quarter of it is below the absolute floor
        clock.now += 0.05
        slow.accepted()
    throttle(slow, 3)  # 3 of 23
    assert slow.rate is not None and slow.rate < 20
    for _ in range(30):
        clock.now += 5
        throttle(slow, 3)
    assert slow.rate == Pacer.MIN_RATE


def test_pacer_ignores_a_steady_few_percent_of_throttling() -> None:
    """A service that answers 3 % 503 whatever the rate is no quota: before, each such
    answer (one a second at most) cut the rate 10 %, down to the floor within a minute."""
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    for i in range(60_000):  # a minute at 1,000/s, every 33rd answer a 503
        clock.now += 0.001
        if i % 33 == 32:
            pacer.throttled()
        else:
            pacer.accepted()
    assert pacer.rate is None and pacer.cuts == 0
    for _ in range(100):  # then a quota: 10 % of a second's answers are 429s
        clock.now += 0.001
        pacer.throttled()
    # 90 % of the ~950 it accepted in that second
    assert pacer.cuts == 1 and 800 < pacer.rate < 900


def test_a_burst_that_paused_the_origin_is_learnt_from_the_second_before_the_pause() -> None:
    """The engine pauses the origin at the first 429 with Retry-After, and the rest of
    the burst arrives during the pause. Before, the pause had cleared the count and
    nothing was learnt: 10-11 % of the politeness run's requests were answered 429."""
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    for _ in range(1000):
        clock.now += 0.001
        pacer.accepted()
    pacer.throttled()  # the first of the burst: a stray so far
    pacer.pause(clock.now + 1.0)
    assert pacer.rate is None
    clock.now += 0.01
    throttle(pacer, 50)  # the rest of what was in flight
    assert pacer.cuts == 1 and pacer.rate == pytest.approx(900, rel=0.02)


def test_pacer_undoes_a_cut_that_left_the_share_of_throttling_as_it_was() -> None:
    """A third of the answers are 503s whatever the rate (a sick service, not a quota):
    the first cut is undone by the next second's check, and that share cuts no more."""
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    for sent in range(1, 10_001):  # 10 s; the pace that the pacer allows, or 1,000/s
        rate = pacer.rate or 1000.0
        clock.now += 1 / rate
        if sent % 3 == 0:
            pacer.throttled()
        else:
            pacer.accepted()
    assert pacer.cuts == 1 and pacer.reverted == 1
    assert pacer.rate is None  # unpaced again, as before the cut
    quota = Pacer(None, adaptive=True, clock=clock)
    for _ in range(1000):  # a quota: 1,000/s taken, then 10 % more answered 429
        clock.now += 0.001
        quota.accepted()
    throttle(quota, 100)
    assert quota.cuts == 1
    learnt = quota.rate
    for _ in range(4000):  # paced at the learnt rate the 429s stop for a few seconds
        clock.now += 0.001
        quota.accepted()
    throttle(quota, 100)  # the probe reached the quota again: a new cut, not an undo
    assert quota.cuts == 2 and quota.reverted == 0 and quota.rate <= learnt


def test_latency_histogram_quantiles_within_five_percent_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for i in range(1, 101):
        (a if i % 2 else b).add(i / 1000)  # 1..100 ms
    a.merge(b)
    assert a.quantile(0.5) == pytest.approx(0.050, rel=0.05)
    assert a.quantile(0.95) == pytest.approx(0.095, rel=0.05)
    assert LatencyHistogram().quantile(0.5) is None
    assert len(a.counts) < 60  # bounded: buckets, not samples


def test_stats_live_rate_and_eta_from_an_injected_clock() -> None:
    stats = Stats(total=1000, started=0.0)
    stats.live_rate(now=0.0)
    stats.outcomes["sent"] = 200
    assert stats.live_rate(now=2.0) == 100.0
    assert stats.eta(now=2.0) == 8.0


# --- the engine against the emulator ----------------------------------------------------

ALLOWED = frozenset({"127.0.0.1"})


def test_engine_shrinks_on_429_and_loses_nothing(tmp_path: Path) -> None:
    """429s without Retry-After (so no pause): the origin's limit is cut, every
    subscriber still ends sent, each message arrives once."""
    n = 600
    with PushServiceEmulator(port=0, seed=3) as emu:
        signer, subs, jobs = _emulator_jobs(tmp_path, emu, n)
        emu.add_fault(429, rate=0.25, retry_after=-1, times=40)
        outcomes: dict[int, Outcome] = {}

        def sink(recs: list[DeliveryRecord]) -> None:
            for r in recs:
                assert r.subscription_id not in outcomes
                outcomes[r.subscription_id] = r.outcome

        options = DeliveryOptions(concurrency=256, max_attempts=50, backoff_base=0.005,
                                  backoff_max=0.05)
        engine = Engine(signer, options, sink, allowed_hosts=ALLOWED)
        stats = asyncio.run(engine.run(iter([jobs[i:i + 100] for i in range(0, n, 100)])))
        (host,) = engine._hosts.values()
        assert emu.stats()["by_status"].get("429", 0) > 0
        assert host.limit.cuts >= 1
        assert host.limit.lowest_after_cut is not None
        assert host.limit.lowest_after_cut < host.limit.peak_limit
        assert host.pacer.cuts >= 1  # and it learnt a rate
        assert set(outcomes.values()) == {Outcome.SENT} and len(outcomes) == n
        assert all(len(emu.messages(s["endpoint"])) == 1 for s in subs)
        assert stats.retries > 0 and sum(stats.in_flight.values()) == 0
        svc = stats.per_service()[jobs[0].service]
        assert svc["concurrency_reached"] >= 1 and svc["latency_p50_ms"] is not None


def test_stats_say_how_often_the_sender_was_the_bottleneck_summed_over_workers() -> None:
    a, b = Stats(), Stats()
    a.windows["fcm"], a.saturated_windows["fcm"] = 10, 9
    b.windows["fcm"], b.saturated_windows["fcm"] = 10, 1
    b.windows["apple"] = 4  # measured, never saturated
    merged = Stats()
    merged.merge_snapshots([a.snapshot(), b.snapshot()])
    figures = merged.per_service()
    assert figures["fcm"]["sender_bound_pct"] == 50.0
    assert figures["apple"]["sender_bound_pct"] == 0.0
    merged.concurrency["mozilla"] = 8  # pinned or unmeasured: no windows, no figure
    assert merged.per_service()["mozilla"]["sender_bound_pct"] is None


def _emulator_jobs(tmp_path: Path, emu: PushServiceEmulator,
                   n: int) -> tuple[VapidSigner, list[dict[str, Any]], list[Job]]:
    """A signer, ``n`` subscriptions at the emulator, and a job for each."""
    key = generate_keys(tmp_path).application_server_key
    signer = VapidSigner(load_private_key(tmp_path / "vapid_private.pem"),
                         "mailto:ops@shop.example.com")
    subs = emu.create_subscriptions(n, key)
    jobs = []
    for i, s in enumerate(subs, start=1):
        ep = check_endpoint(s["endpoint"], ALLOWED)
        jobs.append(Job(i, ep.url, ep.origin, ep.service, b64_decode(s["keys"]["p256dh"]),
                        b64_decode(s["keys"]["auth"]), b'{"title":"hi"}'))
    return signer, subs, jobs


@pytest.mark.parametrize("loop", ["pushcli", "asyncio.run"])
def test_the_engine_reports_the_windows_its_loop_measured(tmp_path: Path, loop: str) -> None:
    """On pushcli's loop (``eventloop.run``) every adaptive window is measured and the
    report says how many were sender-bound; on a loop that does not time its waits the
    figure is absent rather than a guess."""
    from pushcli import eventloop

    with PushServiceEmulator(port=0, seed=5) as emu:
        signer, _, jobs = _emulator_jobs(tmp_path, emu, 300)
        engine = Engine(signer, DeliveryOptions(), lambda recs: None, allowed_hosts=ALLOWED)
        batches = iter([jobs[i:i + 100] for i in range(0, len(jobs), 100)])
        run = eventloop.run if loop == "pushcli" else asyncio.run
        stats = run(engine.run(batches))
    (host,) = engine._hosts.values()
    service = jobs[0].service
    assert stats.outcomes["sent"] == 300
    figure = stats.per_service()[service]["sender_bound_pct"]
    if loop == "pushcli":
        assert host.limit.windows >= 2 and stats.windows[service] == host.limit.windows
        assert stats.saturated_windows[service] == host.limit.saturated_windows
        assert figure is not None and 0.0 <= figure <= 100.0
    else:
        assert host.limit.windows == host.limit.saturated_windows == 0 and figure is None


# --- where the limits come from -----------------------------------------------------------

CAMPAIGN = """\
name: paced
notification:
  title: Hi
  body: There
  url: https://shop.example.com/
delivery:
  rate_limits: {fcm: 2000, apple: 500}
"""


def test_campaign_ceiling_adapts_and_the_command_line_pins() -> None:
    from pushcli.campaign import parse_campaign
    from pushcli.delivery import options_for
    from pushcli.messages import service_rate_limits

    campaign = parse_campaign(CAMPAIGN)
    adaptive = options_for(campaign)
    assert adaptive.concurrency == 1000 and adaptive.adaptive_concurrency
    # the campaign's ceilings replace the defaults they name; FCM's quota is the default
    assert service_rate_limits(adaptive) == {"fcm": 2000, "apple": 500}
    assert service_rate_limits(options_for(parse_campaign(
        CAMPAIGN.replace("{fcm: 2000, apple: 500}", "{}")))) == {"fcm": 10_000}
    pinned = options_for(campaign, concurrency=64)
    assert pinned.concurrency == 64 and not pinned.adaptive_concurrency


@pytest.mark.parametrize(("value", "words"), [
    ("{gcm: 100}", "unknown push service 'gcm'"),
    ("{fcm: 0}", "greater than 0"),
])
def test_rate_limits_must_name_a_known_service_and_a_positive_rate(value: str,
                                                                   words: str) -> None:
    from pushcli.campaign import parse_campaign
    from pushcli.errors import InputError

    with pytest.raises(InputError) as info:
        parse_campaign(CAMPAIGN.replace("{fcm: 2000, apple: 500}", value), source="c.yml")
    assert words in str(info.value) and "c.yml:7" in str(info.value)


def test_a_retry_after_pause_is_not_measured_as_a_low_rate() -> None:
    """Before: the second throttle after a 1 s pause measured the pause (nothing accepted)
    and the learnt rate collapsed by 30 % per throttle."""
    clock = Clock()
    pacer = Pacer(None, adaptive=True, clock=clock)
    for _ in range(1000):
        clock.now += 0.001
        pacer.accepted()
    throttle(pacer, 60)
    assert pacer.rate == pytest.approx(900, rel=0.01)
    pacer.pause(clock.now + 1.0)  # Retry-After: 1
    clock.now += 1.05  # resumed 50 ms ago; 429s again: too soon to measure
    pacer.throttled()  # one alone is a stray
    assert pacer.rate == pytest.approx(900, rel=0.01)
    throttle(pacer, 2)
    assert pacer.rate == pytest.approx(810, rel=0.01)  # -10 % of the pace that went over
    pacer.pause(clock.now + 1.0)
    clock.now += 1.0
    for _ in range(800):  # 800 accepted in the second after the pause
        clock.now += 0.00125
        pacer.accepted()
    throttle(pacer, 45)
    assert pacer.rate == pytest.approx(720, rel=0.02)  # 90 % of 800/s, the pause not counted
