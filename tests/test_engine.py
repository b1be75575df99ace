"""The engine's per-origin safety rules, in process, against the loopback emulator.

Auth stop (N 401/403 in a row hold the rest of that service back), the circuit
breaker (N transport failures in a row) and Retry-After (the whole origin pauses)
used to be checked only through ``pushcli send`` subprocesses. Here the engine
runs in this process with a seeded ``random.Random`` (jitter) and a seeded
emulator (fault rates), with tiny backoffs so retries cost milliseconds.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pushcli.encoding import b64_decode
from pushcli.engine import Engine
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.messages import DeliveryOptions, Job
from pushcli.pushservices import Fault, Outcome, check_endpoint
from pushcli.testing import PushServiceEmulator
from pushcli.testing.emulator import FaultAction
from tests import support

ALLOWED = frozenset({"127.0.0.1", "localhost"})
#: One request at a time, fixed (not adaptive), and retries after milliseconds.
QUICK = dict(concurrency=1, adaptive_concurrency=False, backoff_base=0.001, backoff_max=0.05,
             flush_size=10, timeout=5.0)


def _signer(folder: Path) -> tuple[VapidSigner, str]:
    info = generate_keys(folder)
    return (VapidSigner(load_private_key(folder / "vapid_private.pem"),
                        "mailto:ops@shop.example.com"), info.application_server_key)


def _jobs(subs: list[dict], first_id: int = 1) -> list[Job]:
    jobs = []
    for i, s in enumerate(subs, start=first_id):
        ep = check_endpoint(s["endpoint"], ALLOWED)
        jobs.append(Job(i, ep.url, ep.origin, ep.service, b64_decode(s["keys"]["p256dh"]),
                        b64_decode(s["keys"]["auth"]), b'{"title":"hi"}'))
    return jobs


def _send(signer: VapidSigner, jobs: list[Job], **options: object) -> dict[int, Any]:
    """Run the engine over ``jobs`` (one batch); return the final record per subscriber."""
    records: dict[int, Any] = {}  # DeliveryRecord

    def sink(recs: list[Any]) -> None:
        for r in recs:
            assert r.subscription_id not in records, "recorded twice"
            records[r.subscription_id] = r

    engine = Engine(signer, DeliveryOptions(**{**QUICK, **options}), sink,  # type: ignore[arg-type]
                    rng=random.Random(7), allowed_hosts=ALLOWED)
    asyncio.run(engine.run(iter([jobs])))
    assert sorted(records) == sorted(j.subscription_id for j in jobs)
    return records


def _localhost(emu: PushServiceEmulator) -> str:
    """The emulator under another origin (same server): a second push service."""
    return emu.url.replace("127.0.0.1", "localhost")


def _failing_beside_healthy(emu: PushServiceEmulator, key: str, n: int, fault: FaultAction
                            ) -> tuple[list[dict], list[dict], list[Job]]:
    """n subscriptions whose every request gets ``fault``, 4 healthy ones on a second origin.

    Returns both lists and their jobs (failing first, healthy from id 100): the per-origin
    limits must stop the failing origin without holding the healthy one back.
    """
    failing = emu.create_subscriptions(n, key)
    healthy = emu.create_subscriptions(4, key, base_url=_localhost(emu))
    for s in failing:
        emu.add_fault(fault, client_hash=s["endpoint"])
    return failing, healthy, _jobs(failing) + _jobs(healthy, first_id=100)


def test_auth_stop_after_n_refusals_holds_the_rest_of_that_service_back(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    with support.emulator(seed=1) as emu:
        refused, healthy, jobs = _failing_beside_healthy(emu, key, 12, 403)
        records = _send(signer, jobs, auth_failure_limit=5)
        stopped = [records[j.subscription_id] for j in jobs[:12]]
        # exactly N were asked and answered 403; the rest were never asked
        assert [r.outcome for r in stopped[:5]] == [Outcome.AUTH] * 5
        assert all(r.status_code == 403 for r in stopped[:5])
        held = stopped[5:]
        assert [r.outcome for r in held] == [Outcome.FAILED] * 7
        assert all(r.fault is Fault.HELD for r in held)  # prune never counts these
        assert all("401/403 to 5 requests in a row" in r.reason for r in held)
        assert sum(len(emu.request_times(s["endpoint"])) for s in refused) == 5
        # another push service is not held back by this one's refusals
        assert all(records[j.subscription_id].outcome is Outcome.SENT for j in jobs[12:])
        assert all(len(emu.messages(s["endpoint"])) == 1 for s in healthy)


def test_a_success_between_refusals_resets_the_auth_count(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    with support.emulator(seed=1) as emu:
        subs = emu.create_subscriptions(9, key)
        for i, s in enumerate(subs):
            if i != 4:  # 4 refusals, one success, 4 refusals: never 5 in a row
                emu.add_fault(403, client_hash=s["endpoint"])
        records = _send(signer, _jobs(subs), auth_failure_limit=5)
        outcomes = Counter(r.outcome for r in records.values())
        assert outcomes == {Outcome.AUTH: 8, Outcome.SENT: 1}
        assert not any(r.fault is Fault.HELD for r in records.values())


def test_circuit_opens_after_n_transport_failures_in_a_row(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    with support.emulator(seed=1) as emu:
        # "drop": the connection is closed, no answer
        down, healthy, jobs = _failing_beside_healthy(emu, key, 10, "drop")
        records = _send(signer, jobs, circuit_failure_limit=4, max_attempts=10)
        failed = [records[j.subscription_id] for j in jobs[:10]]
        assert [r.outcome for r in failed] == [Outcome.FAILED] * 10
        # after 4 failures in a row nothing more went to that origin: the jobs still
        # waiting (retries included) were held back, not tried 10 times each
        assert sum(len(emu.request_times(s["endpoint"])) for s in down) == 4
        assert all(r.fault is Fault.HELD for r in failed)
        assert all("unreachable (4 failures in a row" in r.reason for r in failed)
        assert all(records[j.subscription_id].outcome is Outcome.SENT for j in jobs[10:])


def test_transport_failures_below_the_limit_are_retried_and_delivered(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    with support.emulator(seed=1) as emu:
        subs = emu.create_subscriptions(6, key)
        for s in subs[:3]:
            emu.add_fault("drop", client_hash=s["endpoint"], times=1)
        records = _send(signer, _jobs(subs), circuit_failure_limit=4)
        assert all(r.outcome is Outcome.SENT for r in records.values())
        assert [records[i].attempts for i in range(1, 7)] == [2, 2, 2, 1, 1, 1]
        assert all(records[i].ambiguous for i in range(1, 4))  # a drop may have been stored
        assert all(len(emu.messages(s["endpoint"])) == 1 for s in subs)


def test_retry_after_pauses_the_whole_origin_and_not_the_others(tmp_path: Path) -> None:
    signer, key = _signer(tmp_path)
    pause = 2.0
    with support.emulator(seed=1) as emu:
        throttled = emu.create_subscriptions(4, key)
        other = emu.create_subscriptions(3, key, base_url=_localhost(emu))
        emu.add_fault(429, client_hash=throttled[0]["endpoint"], retry_after=pause, times=1)
        jobs = _jobs(throttled) + _jobs(other, first_id=100)
        # Retry-After is honoured up to 10 x backoff_max: 10 s here
        records = _send(signer, jobs, backoff_max=1.0)
        assert all(r.outcome is Outcome.SENT for r in records.values())
        assert records[1].attempts == 2
        ids = {emu.id_for(s["endpoint"]): "throttled" for s in throttled}
        ids.update({emu.id_for(s["endpoint"]): "other" for s in other})
        log = [(t, ids[sub], status) for t, sub, status in emu.request_log()]
        t429 = next(t for t, _, status in log if status == "429")
        after = [(t, origin) for t, origin, status in log if t > t429]
        # nothing went to the throttled origin before Retry-After was over ...
        assert all(t - t429 >= pause for t, origin in after if origin == "throttled"), after
        # ... while the other origin was served during the pause, before any of them
        first_back = min(t for t, origin in after if origin == "throttled")
        assert all(t < first_back for t, origin in after if origin == "other"), after
        assert len([o for _, o in after if o == "throttled"]) == 4  # the 429'd one resent
