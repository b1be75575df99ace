"""A send against a push service that misbehaves in every documented way at once.

Per-subscriber faults (201/410/404/413/400/403, 429 and WNS 406 with
Retry-After, 503/500 that recover, 500 that never does, slow beyond the
timeout, dropped connections before and after the message was stored) plus
rate-based 503/500 on top. Afterwards the ledger, the JSON report and the
emulator's own tally must tell the same story, and the only duplicates are
the ones the report admits to (``retried_after_ambiguous``).

``run_matrix`` (tests/scenarios.py) is shared with ``stress/fault_matrix.py``
(20,000 subscribers).
"""

from __future__ import annotations

import json

from tests.scenarios import run_matrix


def test_fault_matrix_ledger_report_and_emulator_agree(e2e) -> None:
    result = run_matrix(e2e, 3000)
    figures = result.figures()
    print(json.dumps(figures))
    assert figures["final"]["failed"] == 0


def test_one_push_service_down_does_not_hold_up_the_others(e2e) -> None:
    """localhost:PORT hangs (every request times out); 127.0.0.1:PORT is healthy."""
    n_ok, n_down = 400, 150
    ok = e2e.subscribe(n_ok)
    down = e2e.emu.create_subscriptions(
        n_down, e2e.server_key, base_url=e2e.emu.url.replace("127.0.0.1", "localhost"))
    mixed = [s for pair in zip(ok, down, strict=False) for s in pair] + ok[n_down:]
    e2e.import_subs(mixed, "--allow-host", "localhost")
    for s in down:
        # longer than the test: the hung handlers never store anything
        e2e.emu.add_fault("slow", client_hash=s["endpoint"], delay=120)
    env = {"PUSHCLI_ALLOW_HOSTS": "127.0.0.1,localhost"}
    campaign = e2e.campaign("down")
    # a deadline, not a measurement: the whole send must end within 30 s
    proc = e2e.pushcli("send", str(campaign), "--json", "--timeout", "1", timeout=30, **env)
    code, report = proc.returncode, json.loads(proc.stdout)
    assert code == 1
    assert report["by_service"]["127.0.0.1"]["sent"] == n_ok
    assert report["by_service"]["localhost"]["failed"] == n_down
    for s in ok:
        assert len(e2e.emu.messages(s["endpoint"])) == 1
    stats = e2e.emu.stats(per_subscription=True)["per_subscription"]
    down_requests = sum(stats.get(e2e.emu.id_for(s["endpoint"]), {}).get("requests", 0)
                        for s in down)
    # the circuit opened after 50 timeouts in a row: not 150 x 5 attempts
    assert down_requests < 50 + 64 + 10, down_requests
    # later, the service is back: --retry-failed delivers exactly the failed ones
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign, "--retry-failed", "--timeout", "5", **env)
    assert code == 0, report
    assert report["sent"] == n_ok + n_down and report["failed"] == 0
    assert report["run"]["attempted"] == n_down
    for s in down:
        assert len(e2e.emu.messages(s["endpoint"])) == 1
    for s in ok:
        assert len(e2e.emu.messages(s["endpoint"])) == 1
