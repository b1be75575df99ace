"""One bad record never aborts a command; one endpoint is one row and one message.

Rows written straight into the ``subscriptions`` table (as the README allows
other backends to do) may be malformed or hold another spelling of an
endpoint already stored; a subscriber's attributes may stop rendering. Each
such subscriber gets its own outcome and every command goes on for the rest.
"""

from __future__ import annotations

import json
import sqlite3
import time

from sqlalchemy import select

from pushcli.store import Store, deliveries

BAD_ROWS = {
    "bad base64 key": {"p256dh": "not base64!"},
    "point off the curve": {"p256dh": "BA" + "A" * 85},
    "bad tags JSON": {"tags": "[news"},
    "bad attributes JSON": {"attributes": "{'first_name': 1}"},
}


def _insert_rows(db, rows: list[dict]) -> list[int]:
    """Insert rows the way another backend would: plain SQL, no pushcli validation."""
    now = time.time()
    ids = []
    with sqlite3.connect(db) as conn:
        for row in rows:
            values = {"tags": "[]", "attributes": "{}", "status": "active",
                      "created_at": now, "updated_at": now, **row}
            cols = ", ".join(values)
            cur = conn.execute(f"INSERT INTO subscriptions ({cols}) VALUES "
                               f"({', '.join('?' * len(values))})", list(values.values()))
            ids.append(cur.lastrowid)
    return ids


def _row(sub: dict, **override: str) -> dict:
    return {"endpoint": sub["endpoint"], "p256dh": sub["keys"]["p256dh"],
            "auth": sub["keys"]["auth"], **override}


def _ledger(db) -> dict[int, tuple[str, str | None]]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            select(deliveries.c.subscription_id, deliveries.c.outcome, deliveries.c.reason))}


def test_malformed_stored_rows_are_rejected_one_by_one_by_every_command(e2e) -> None:
    good = e2e.subscribe(4)
    e2e.import_subs(good)
    victims = e2e.subscribe(len(BAD_ROWS))
    bad_ids = _insert_rows(e2e.db, [_row(s, **o) for s, o in zip(victims, BAD_ROWS.values(),
                                                                   strict=True)])
    campaign = e2e.campaign()

    dry = e2e.pushcli("send", str(campaign), "--dry-run", "--json")
    assert dry.returncode == 1 and "would be rejected" in dry.stderr, dry.stderr
    assert json.loads(dry.stdout)["by_service"] == {"127.0.0.1": 4, "rejected": 4}

    doctor = e2e.pushcli("doctor", "--json")
    checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert not checks["push services"]["ok"]
    assert "4 stored subscriptions are malformed" in checks["push services"]["detail"]

    export = e2e.pushcli("subscribers", "export", "--format", "ndjson")
    assert export.returncode == 1
    assert len(export.stdout.splitlines()) == 4
    skipped = export.stderr.strip().splitlines()
    assert len(skipped) == 4 and all("skipped subscriber" in line for line in skipped)
    assert "Traceback" not in export.stderr
    assert all(s["keys"]["p256dh"] not in export.stderr for s in victims)  # no secrets

    code, report = e2e.send(campaign)
    assert code == 1
    assert report["sent"] == 4 and report["rejected"] == 4
    ledger = _ledger(e2e.db)
    for sid, what in zip(bad_ids, BAD_ROWS, strict=True):
        outcome, reason = ledger[sid]
        assert outcome == "rejected", what
        assert reason.startswith("stored subscription is invalid: "), reason
    assert all(e2e.emu.messages(s["endpoint"]) == [] for s in victims)  # never contacted
    assert all(len(e2e.emu.messages(s["endpoint"])) == 1 for s in good)
    code, again = e2e.send(campaign)  # a re-run has nothing left to do
    assert again["run"]["attempted"] == 0


def test_subscriber_whose_attributes_do_not_render_is_rejected_and_reruns_work(e2e) -> None:
    subs = e2e.subscribe(5)
    for i, s in enumerate(subs):
        s["attributes"] = {"first_name": f"Ana{i}"}
    del subs[2]["attributes"]  # the template has no default for it
    e2e.import_subs(subs)
    campaign = e2e.campaign(body="Hello {{ first_name }}")

    dry = e2e.pushcli("send", str(campaign), "--dry-run", "--json")
    assert dry.returncode == 1 and "would be rejected" in dry.stderr, dry.stderr
    assert json.loads(dry.stdout)["by_service"] == {"127.0.0.1": 4, "rejected": 1}

    code, report = e2e.send(campaign)
    assert code == 1 and report["sent"] == 4 and report["rejected"] == 1
    assert e2e.emu.messages(subs[2]["endpoint"]) == []
    [reason] = [r for o, r in _ledger(e2e.db).values() if o == "rejected"]
    assert "first_name" in reason
    code, again = e2e.send(campaign)  # the campaign is not refused on re-run
    assert code == 1 and again["run"]["attempted"] == 0 and again["sent"] == 4


def test_template_that_renders_for_nobody_is_still_refused_before_sending(e2e) -> None:
    e2e.import_subs(e2e.subscribe(3))
    campaign = e2e.campaign(body="Hello {{ first_name }}")
    proc = e2e.pushcli("send", str(campaign))
    assert proc.returncode == 2
    assert "first_name" in proc.stderr and "Traceback" not in proc.stderr
    assert e2e.emu.stats()["total_requests"] == 0


def _spellings(endpoint: str) -> list[str]:
    """Six spellings of one endpoint (``http://127.0.0.1:PORT/...`` from the emulator)."""
    scheme, rest = endpoint.split("://", 1)
    host, path = rest.split("/", 1)
    head, token = path.rsplit("/", 1)
    return [
        endpoint,
        f"HTTP://{host}/{path}",
        f"{endpoint}?",
        f"{scheme}://{host}/{head}/./x/../{token}",
        f"{scheme}://{host}/{head}/%{ord(token[0]):02x}{token[1:]}",
        f"{scheme}://{host}/./{path}",
    ]


def test_six_spellings_of_one_subscription_import_as_one_row_and_get_one_message(e2e) -> None:
    [sub] = e2e.subscribe(1)
    spellings = _spellings(sub["endpoint"])
    assert len(set(spellings)) == 6
    result = e2e.import_subs([{**sub, "endpoint": e} for e in spellings])
    assert result["added"] == 1 and result["rejected"] == 0
    code, report = e2e.send(e2e.campaign())
    assert code == 0 and report["sent"] == 1 == report["total"]
    assert len(e2e.emu.messages(sub["endpoint"])) == 1


def test_duplicate_spellings_already_in_the_store_get_one_message(e2e) -> None:
    [sub, other] = e2e.subscribe(2)
    e2e.import_subs([other])
    ids = _insert_rows(e2e.db, [_row(sub, endpoint=e) for e in _spellings(sub["endpoint"])[1:]])
    campaign = e2e.campaign()

    dry = e2e.pushcli("send", str(campaign), "--dry-run", "--json")
    assert json.loads(dry.stdout)["by_service"] == {"127.0.0.1": 2, "rejected": 4}

    code, report = e2e.send(campaign)
    assert report["sent"] == 2 and report["rejected"] == 4
    assert len(e2e.emu.messages(sub["endpoint"])) == 1
    ledger = _ledger(e2e.db)
    kept = min(ids)
    assert ledger[kept][0] == "sent"
    for sid in ids[1:]:
        assert ledger[sid] == ("rejected", f"duplicate of subscriber {kept} (the same "
                               "endpoint spelled differently)")
    code, again = e2e.send(campaign)
    assert again["run"]["attempted"] == 0
    assert len(e2e.emu.messages(sub["endpoint"])) == 1


def test_to_finds_a_subscriber_by_any_spelling_of_its_endpoint(e2e) -> None:
    [sub, other] = e2e.subscribe(2)
    e2e.import_subs([sub, other])
    code, report = e2e.send(e2e.campaign(), "--to", _spellings(sub["endpoint"])[3])
    assert code == 0 and report["sent"] == 1
    assert len(e2e.emu.messages(sub["endpoint"])) == 1
    assert e2e.emu.messages(other["endpoint"]) == []
