"""`pushcli send` end to end against the loopback push-service emulator.

The emulator verifies every VAPID JWT and decrypts every body, so a message
counted here would reach a browser.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from sqlalchemy import select

from pushcli.campaign import Renderer, load_campaign
from pushcli.store import Store, deliveries
from pushcli.tokens import make_token
from tests.support import wait_for


def ledger(db) -> dict[int, str]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome))}


def test_every_subscriber_receives_exactly_the_rendered_payload(e2e) -> None:
    subs = e2e.subscribe(150)
    for i, s in enumerate(subs):
        if i % 3 == 0:
            s["attributes"] = {"first_name": f"Ana{i}"}
        if i % 5 == 0:
            s["locale"] = "fr-FR"
    e2e.import_subs(subs)
    campaign = e2e.campaign(extra="locales:\n  fr:\n    title: Grande nouvelle\n")
    code, report = e2e.send(campaign)
    assert code == 0
    assert report["total"] == report["sent"] == 150
    assert report["by_service"]["127.0.0.1"]["sent"] == 150
    assert report["run"]["vapid_signatures"] == 1
    # per push service: latency percentiles and the in-flight concurrency reached, kept
    # with the campaign so a later ``report`` shows them too
    figures = report["run"]["by_service"]["127.0.0.1"]
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"]
    assert 1 <= figures["concurrency_reached"] <= 150
    # measured on pushcli's own loop: how often the sender, not the service, set the pace
    assert figures["sender_bound_pct"] is not None and 0 <= figures["sender_bound_pct"] <= 100
    later = json.loads(e2e.pushcli("report", "e2e", "--json", check=True).stdout)
    assert later["last_run"]["by_service"] == report["run"]["by_service"]
    renderer = Renderer(load_campaign(campaign))
    with Store.open(e2e.db) as store:
        ids = {s.subscription.endpoint: s.id for s in store.iter_subscriptions()}
        secret, campaign_id = store.token_secrets()[0], store.get_campaign("e2e").id  # type: ignore[union-attr]
    for s in subs:
        [msg] = e2e.emu.messages(s["endpoint"])  # the payload, this subscriber's token in it
        token = make_token(secret, campaign_id, 0, ids[s["endpoint"]])
        assert msg == renderer.render(s.get("locale"), s.get("attributes", {}), token=token)
    sample = json.loads(e2e.emu.messages(subs[3]["endpoint"])[0])
    assert sample["web_push"] == 8030
    assert sample["notification"]["body"] == "Hello Ana3"
    assert sample["notification"]["navigate"] == ("https://shop.example.com/news?utm_source="
                                                  "pushcli&utm_medium=web_push&utm_campaign=e2e")
    fr = json.loads(e2e.emu.messages(subs[5]["endpoint"])[0])
    assert fr["notification"]["title"] == "Grande nouvelle"


def test_rerun_sends_to_nobody_already_reached(e2e) -> None:
    subs = e2e.subscribe(40)
    e2e.import_subs(subs)
    campaign = e2e.campaign()
    assert e2e.send(campaign)[1]["sent"] == 40
    code, report = e2e.send(campaign)
    assert code == 0 and report["run"]["attempted"] == 0 and report["sent"] == 40
    assert all(len(e2e.emu.messages(s["endpoint"])) == 1 for s in subs)
    assert e2e.emu.stats()["total_requests"] == 40


def test_expired_endpoints_are_reported_marked_and_pruned(e2e) -> None:
    subs = e2e.subscribe(30)
    e2e.import_subs(subs)
    for s in subs[:5]:
        e2e.emu.expire(s["endpoint"])
    for s in subs[5:8]:
        e2e.emu.add_fault(404, client_hash=s["endpoint"])
    code, report = e2e.send(e2e.campaign())
    assert code == 0
    assert report["expired"] == 8 and report["sent"] == 22
    count = json.loads(e2e.pushcli("subscribers", "count", "--status", "expired",
                                   "--json").stdout)
    assert count["count"] == 8
    dry = json.loads(e2e.pushcli("prune", "--dry-run", "--json").stdout)
    assert dry["count"] == 8 and dry["deleted"] == 0
    assert json.loads(e2e.pushcli("subscribers", "count", "--status", "all",
                                  "--json").stdout)["count"] == 30
    done = json.loads(e2e.pushcli("prune", "--json").stdout)
    assert done["deleted"] == 8
    assert json.loads(e2e.pushcli("subscribers", "count", "--status", "all",
                                  "--json").stdout)["count"] == 22
    # the report of the campaign still prints after the prune
    again = json.loads(e2e.pushcli("report", "e2e", "--json").stdout)
    assert again["expired"] == 8 and again["sent"] == 22


def test_throttling_and_server_errors_are_retried_honouring_retry_after(e2e) -> None:
    subs = e2e.subscribe(12)
    e2e.import_subs(subs)
    e2e.emu.add_fault(429, client_hash=subs[0]["endpoint"], retry_after=1, times=1)
    e2e.emu.add_fault(503, client_hash=subs[1]["endpoint"], times=2)
    e2e.emu.add_fault(500, client_hash=subs[2]["endpoint"], times=1)
    e2e.emu.add_fault(406, client_hash=subs[3]["endpoint"], retry_after=1, times=1)
    e2e.emu.add_fault("drop", client_hash=subs[4]["endpoint"], times=1)
    e2e.emu.add_fault(500, client_hash=subs[5]["endpoint"])  # never recovers
    code, report = e2e.send(e2e.campaign())
    assert code == 1
    assert report["sent"] == 11 and report["failed"] == 1
    assert report["run"]["retries"] == 1 + 2 + 1 + 1 + 1 + 4  # last: 5 attempts
    times = e2e.emu.request_times(subs[0]["endpoint"])
    assert len(times) == 2 and times[1] - times[0] >= 0.95
    for s in subs[:5]:
        assert len(e2e.emu.messages(s["endpoint"])) == 1
    e2e.emu.clear_faults()
    code, report = e2e.send(e2e.campaign(), "--retry-failed")
    assert code == 0 and report["sent"] == 12 and report["failed"] == 0


def test_blocked_hosts_are_never_contacted(e2e) -> None:
    subs = e2e.subscribe(5)
    local = e2e.emu.create_subscriptions(3, e2e.server_key,
                                         base_url=e2e.emu.url.replace("127.0.0.1", "localhost"))
    # imported while localhost was allowed; sent while it is not
    e2e.import_subs(subs + local, "--allow-host", "localhost")
    code, report = e2e.send(e2e.campaign())
    assert code == 1
    assert report["blocked"] == 3 and report["sent"] == 5
    for s in local:
        assert e2e.emu.request_times(s["endpoint"]) == []


def test_retry_failed_sends_blocked_once_the_allow_list_includes_their_host(e2e) -> None:
    local = e2e.emu.create_subscriptions(3, e2e.server_key,
                                         base_url=e2e.emu.url.replace("127.0.0.1", "localhost"))
    e2e.import_subs(local, "--allow-host", "localhost")
    code, report = e2e.send(e2e.campaign())
    assert code == 1 and report["blocked"] == 3
    code, report = e2e.send(e2e.campaign(), "--retry-failed", "--allow-host", "localhost")
    assert code == 0 and report["sent"] == 3 and report["blocked"] == 0
    for s in local:
        assert len(e2e.emu.messages(s["endpoint"])) == 1


def test_fcm_wrong_path_404_is_resent_to_wp_form_and_remembered(e2e) -> None:
    """Issue 10 #11: FCM's "use /wp/<token>" 404 is not an expiry."""
    subs = e2e.subscribe(4)
    for s in subs:
        s["endpoint"] = s["endpoint"].replace("/push/", "/fcm/send/")
    e2e.import_subs(subs)
    gone = subs[3]["endpoint"].rsplit("/", 1)[1]
    e2e.emu.add_fault("wrong_path")  # every /fcm/send/ push: 404 "use /wp/<token>"
    e2e.emu.add_fault(404, client_hash=gone)  # ... and this one is gone at /wp/ too
    code, report = e2e.send(e2e.campaign("w1"))
    assert code == 0 and (report["sent"], report["expired"]) == (3, 1)
    with Store.open(e2e.db, create=False) as store:
        stored = {s.subscription.endpoint for s in store.iter_subscriptions(status="all")}
    assert {s["endpoint"].replace("/fcm/send/", "/wp/") for s in subs[:3]} <= stored
    log = e2e.emu.stats()["by_status"]
    assert (log["404"], log["201"]) == (5, 3)  # 4 wrong-path + 1 gone; 3 at /wp/
    code, report = e2e.send(e2e.campaign("w2"))  # the next campaign goes straight to /wp/
    assert code == 0 and report["sent"] == 3
    assert e2e.emu.stats()["by_status"]["201"] == 6 and e2e.emu.stats()["by_status"]["404"] == 5
    for s in subs[:3]:
        assert len(e2e.emu.messages(s["endpoint"].rsplit("/", 1)[1])) == 2


def test_auth_failures_are_not_expired_and_stop_after_twenty(e2e) -> None:
    from pushcli.keys import generate_keys

    other = generate_keys(e2e.dir / "other").application_server_key
    wrong = e2e.subscribe(30, key=other)
    e2e.import_subs(wrong)
    code, report = e2e.send(e2e.campaign(), "--concurrency", "1")
    assert code == 1
    assert report["auth"] == 20 and report["failed"] == 10 and report["expired"] == 0
    assert e2e.emu.stats()["total_requests"] == 20
    assert json.loads(e2e.pushcli("prune", "--dry-run", "--json").stdout)["count"] == 0


def test_dry_run_sends_nothing(e2e) -> None:
    e2e.import_subs(e2e.subscribe(10))
    proc = e2e.pushcli("send", str(e2e.campaign()), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["audience"] == 10 and doc["by_service"] == {"127.0.0.1": 10}
    assert e2e.emu.stats()["total_requests"] == 0


def test_limit_and_to_send_to_a_few(e2e) -> None:
    subs = e2e.subscribe(10)
    e2e.import_subs(subs)
    _, report = e2e.send(e2e.campaign("one"), "--to", subs[4]["endpoint"])
    assert report["sent"] == 1 and len(e2e.emu.messages(subs[4]["endpoint"])) == 1
    _, report = e2e.send(e2e.campaign("few"), "--limit", "3")
    assert report["sent"] == 3


def test_kill_9_mid_send_then_rerun_reaches_everyone_without_resending(e2e) -> None:
    n = 400
    subs = e2e.subscribe(n)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.05)
    campaign = e2e.campaign()
    proc = e2e.start("send", str(campaign), "-q", "--concurrency", "8")
    e2e.wait_until("accepted", n // 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    recorded = {sid for sid, o in ledger(e2e.db).items() if o == "sent"}
    assert 0 < len(recorded) < n
    with Store.open(e2e.db) as store:
        assert store.integrity_ok()
        by_id = {s.id: s.subscription.endpoint for s in store.iter_subscriptions()}
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign)
    assert code == 0 and report["sent"] == n
    counts = {s["endpoint"]: len(e2e.emu.messages(s["endpoint"])) for s in subs}
    assert all(c >= 1 for c in counts.values())
    for sid in recorded:
        assert counts[by_id[sid]] == 1, "re-sent to a subscriber recorded as sent"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= 8 + 500  # bounded by in-flight + one unflushed ledger batch


def test_ctrl_c_stops_cleanly_and_exits_130(e2e) -> None:
    subs = e2e.subscribe(300)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.05)
    campaign = e2e.campaign()
    proc = e2e.start("send", str(campaign), "--json", "--concurrency", "4")
    e2e.wait_until("accepted", 20)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["run"]["interrupted"] is True
    assert 0 < report["sent"] < 300
    # every message the emulator accepted is in the ledger: in-flight ones finished
    assert report["sent"] == e2e.emu.stats()["accepted"]
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign)
    assert code == 0 and report["sent"] == 300
    assert all(len(e2e.emu.messages(s["endpoint"])) == 1 for s in subs)


def test_second_send_of_same_campaign_is_refused_while_first_runs(e2e) -> None:
    e2e.import_subs(e2e.subscribe(100))
    e2e.emu.add_fault("slow", rate=1.0, delay=0.1)
    campaign = e2e.campaign()
    first = e2e.start("send", str(campaign), "-q", "--concurrency", "2")
    e2e.wait_until("total_requests", 2)
    second = e2e.pushcli("send", str(campaign), "-q")
    assert second.returncode == 75
    assert "campaign:e2e is locked by pid" in second.stderr
    first.kill()
    first.communicate()
    # the dead owner's lock does not block the next run
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign)
    assert code == 0 and report["sent"] == 100


@pytest.mark.parametrize("sig, whole_group", [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_ctrl_c_with_worker_processes_counts_once_and_loses_nothing(
        e2e, sig: signal.Signals, whole_group: bool) -> None:
    """One SIGINT to the parent, or a service manager's SIGTERM to the whole process group,
    stops both senders gracefully (exit 130): the child ignores both and stops when the
    parent relays it, so every request it had in flight is answered and recorded."""
    subs = e2e.subscribe(1500)
    e2e.import_subs(subs)
    e2e.emu.add_fault("slow", rate=1.0, delay=0.02)
    campaign = e2e.campaign()
    proc = e2e.start("send", str(campaign), "--json", "--workers", "2", "--concurrency", "8")
    e2e.wait_until("accepted", 100)
    # both shares are sending (ids split by parity; they were imported in this order),
    # so the child has requests in flight when the signal comes
    wait_for(lambda: all(any(e2e.emu.messages(s["endpoint"]) for s in subs[k:60:2])
                         for k in (0, 1)), 60, "both senders to send")
    if whole_group:  # start() makes the background pushcli lead its own process group
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    report = json.loads(stdout)
    assert report["run"]["interrupted"] is True and 0 < report["sent"] < 1500
    assert report["sent"] == e2e.emu.stats()["accepted"]
    e2e.emu.clear_faults()
    code, report = e2e.send(campaign)
    assert code == 0 and report["sent"] == 1500
    assert all(len(e2e.emu.messages(s["endpoint"])) == 1 for s in subs)


# --- what the operator reads: --dry-run fails exactly where send would ------------------

def _fault_no_subject(e2e):
    path = e2e.campaign()
    path.write_text(path.read_text().replace("vapid:\n  subject: mailto:ops@shop.example.com\n",
                                             ""))
    return path, {}, 2, "vapid.subject: no VAPID subject"


def _fault_localhost_subject(e2e):
    path = e2e.campaign()
    path.write_text(path.read_text().replace("ops@shop.example.com", "ops@localhost"))
    return path, {}, 2, "vapid.subject: Apple's push service refuses a localhost subject"


def _fault_missing_key(e2e):
    return (e2e.campaign(), {"PUSHCLI_VAPID_PRIVATE_KEY": str(e2e.dir / "missing.pem")}, 2,
            "missing.pem: no such file")


def _fault_world_readable_key(e2e):
    (e2e.dir / "vapid_private.pem").chmod(0o644)
    return e2e.campaign(), {}, 2, "private key is readable by others"


def _fault_public_key(e2e):
    return (e2e.campaign(), {"PUSHCLI_VAPID_PRIVATE_KEY": str(e2e.dir / "vapid_public.pem")},
            2, "vapid_public.pem: is the public key")


def _fault_everyone_blocked(e2e):
    return e2e.campaign(), {"PUSHCLI_ALLOW_HOSTS": ""}, 1, None


@pytest.mark.parametrize("fault", [
    _fault_no_subject, _fault_localhost_subject, _fault_missing_key, _fault_world_readable_key,
    _fault_public_key, _fault_everyone_blocked,
], ids=lambda f: f.__name__.removeprefix("_fault_"))
def test_dry_run_fails_exactly_where_send_would(e2e, fault) -> None:
    e2e.import_subs(e2e.subscribe(3))
    campaign, env, code, message = fault(e2e)
    dry = e2e.pushcli("send", str(campaign), "--dry-run", "-q", **env)
    assert dry.returncode == code, dry.stderr
    assert "Traceback" not in dry.stderr
    real = e2e.pushcli("send", str(campaign), "-q", **env)
    assert real.returncode == code, real.stderr
    if message is not None:
        assert message in dry.stderr and dry.stderr == real.stderr
        assert "chmod" not in dry.stderr or "readable by others" in message
    else:
        assert "3 of 3 subscribers would be blocked" in dry.stderr
    assert e2e.emu.stats()["total_requests"] == 0


def test_apple_topic_of_length_1_mod_4_is_refused_naming_the_field(e2e) -> None:
    from tests.support import real_subscription

    e2e.import_subs([real_subscription("https://web.push.apple.com/QGx1bmNoZXMtMQ",
                                       tags=["safari"]), *e2e.subscribe(2)])
    fine = e2e.campaign("fine", extra="delivery:\n  topic: spring\n")  # 6 characters
    assert e2e.pushcli("send", str(fine), "--dry-run", "-q").returncode == 0
    bad = e2e.campaign("apple", extra="delivery:\n  topic: sprin\n")  # 5 = 1 mod 4
    for argv in (["--dry-run"], []):
        proc = e2e.pushcli("send", str(bad), "-q", *argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: {bad}:10: delivery.topic: Apple"), proc.stderr
        assert "BadWebPushTopic" in proc.stderr and "1 subscribers at apple" in proc.stderr
    assert e2e.emu.stats()["total_requests"] == 0
    # With no Apple subscriber in the audience the topic is fine for everyone else.
    others = e2e.campaign("others", extra="delivery:\n  topic: sprin\n"
                                          "audience:\n  exclude_tags: [safari]\n")
    assert e2e.pushcli("send", str(others), "--dry-run", "-q").returncode == 0
    code, report = e2e.send(others)
    assert code == 0 and report["sent"] == 2


def test_to_an_endpoint_not_in_the_store_exits_2_without_printing_it(e2e) -> None:
    e2e.import_subs(e2e.subscribe(2))
    stranger = e2e.subscribe(1)[0]["endpoint"]
    for argv in (["--dry-run"], []):
        proc = e2e.pushcli("send", str(e2e.campaign()), "--to", stranger, *argv)
        assert proc.returncode == 2, proc.stderr
        assert "--to: no subscriber with this endpoint" in proc.stderr
        assert stranger not in proc.stderr + proc.stdout
    assert e2e.emu.stats()["total_requests"] == 0


def test_an_empty_audience_says_so_on_stderr_and_exits_0(e2e) -> None:
    e2e.import_subs(e2e.subscribe(2))
    campaign = e2e.campaign(extra="audience:\n  tags: [nobody-has-this]\n")
    for argv in (["--dry-run"], []):
        proc = e2e.pushcli("send", str(campaign), "--json", *argv)
        assert proc.returncode == 0, proc.stderr
        assert ("audience is empty: no active subscriber matches this campaign "
                "(nothing sent; exit 0)") in proc.stderr.splitlines(), proc.stderr
        json.loads(proc.stdout)
