"""Subscriber import: JSON, NDJSON, CSV; validation; upsert; --strict; export round-trip."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pushcli.cli import app
from pushcli.encoding import b64_decode, b64url_encode
from pushcli.store import Rejection, Store
from pushcli.subscriptions import Rejected, Subscription, make_subscription, parse_stream
from tests.support import real_subscription

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, ["--db", "test.db", *args], input=input)


def parse(data: bytes, fmt: str, **kw):
    return list(parse_stream(io.BytesIO(data), fmt, source="f", **kw))


def write_json(path: Path, subs: list[dict]) -> Path:
    path.write_text(json.dumps(subs))
    return path


def write_csv(path: Path, subs: list[dict], extra: dict[str, list[str]] | None = None) -> Path:
    extra = extra or {}
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["endpoint", "p256dh", "auth", *extra])
        for i, s in enumerate(subs):
            w.writerow([s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"],
                        *(v[i] for v in extra.values())])
    return path


# --- validation --------------------------------------------------------------------------


def test_valid_record_is_normalized_to_unpadded_base64url() -> None:
    sub = real_subscription(tags=["news"], locale="fr-FR", attributes={"first_name": "Zoé"},
                            user_id=42)
    # padded standard base64 is tolerated on input
    raw = b64_decode(sub["keys"]["p256dh"])
    import base64
    sub["keys"]["p256dh"] = base64.b64encode(raw).decode()
    [rec] = parse(json.dumps([sub]).encode(), "json")
    assert isinstance(rec, Subscription)
    assert rec.p256dh == b64url_encode(raw)
    assert rec.tags == ("news",) and rec.locale == "fr-FR" and rec.user_id == "42"
    assert rec.attributes == {"first_name": "Zoé"}


@pytest.mark.parametrize("mutate,reason", [
    (lambda s: s["keys"].update(p256dh=b64url_encode(b"\x04" + b"\x01" * 64)),
     "not on the P-256 curve"),
    (lambda s: s["keys"].update(p256dh=b64url_encode(b"\x04" * 33)), "65 bytes, got 33"),
    (lambda s: s["keys"].update(auth=b64url_encode(b"x" * 12)), "16 bytes, got 12"),
    (lambda s: s["keys"].update(auth="not*base64!"), "keys.auth: is not valid base64url"),
    (lambda s: s.update(endpoint="http://fcm.googleapis.com/fcm/send/x"), "https"),
    (lambda s: s.update(endpoint="https://evil.example.com/push"), "not a known push service"),
    (lambda s: s.update(endpoint="https://user:pw@fcm.googleapis.com/x"), "user information"),
    (lambda s: s.update(endpoint="https://fcm.googleapis.com:8443/x"), "port 8443"),
    (lambda s: s.update(endpoint="https://10.0.0.1/x"), "not a known push service"),
    (lambda s: s.pop("keys"), "keys: missing"),
    (lambda s: s["keys"].pop("auth"), "keys.auth: missing"),
    (lambda s: s.update(tags=["ok", "bad tag"]), "invalid tag"),
])
def test_invalid_records_are_rejected_with_reason(mutate, reason: str) -> None:
    sub = real_subscription()
    mutate(sub)
    [rec] = parse(json.dumps([sub]).encode(), "json")
    assert isinstance(rec, Rejected)
    assert rec.location == "[0]"
    assert reason in rec.reason


def test_allowed_host_accepts_loopback_http_only() -> None:
    allowed = frozenset({"127.0.0.1", "push.internal.example"})
    ok = real_subscription("http://127.0.0.1:8090/push/abc")
    bad = real_subscription("http://push.internal.example/push/abc")
    good_https = real_subscription("https://push.internal.example:8443/push/abc")
    recs = parse(json.dumps([ok, bad, good_https]).encode(), "json", allowed_hosts=allowed)
    assert isinstance(recs[0], Subscription)
    assert isinstance(recs[1], Rejected) and "loopback" in recs[1].reason
    assert isinstance(recs[2], Subscription)


def test_ndjson_reports_line_numbers_and_bad_json_and_bad_encoding() -> None:
    good = json.dumps(real_subscription())
    data = (good + "\n\n" + "{not json\n").encode() + b"\xff\xfe\n" + good.encode() + b"\n"
    recs = parse(data, "ndjson")
    assert isinstance(recs[0], Subscription)
    assert isinstance(recs[1], Rejected) and recs[1].location == "line 3"
    assert "invalid JSON" in recs[1].reason
    assert isinstance(recs[2], Rejected) and recs[2].location == "line 4"
    assert recs[2].reason == "not valid UTF-8"
    assert isinstance(recs[3], Subscription)


def test_csv_tags_locale_and_attribute_columns(tmp_path: Path) -> None:
    subs = [real_subscription() for _ in range(2)]
    path = write_csv(tmp_path / "s.csv", subs, {"tags": ["news;vip", ""],
                                                "locale": ["de-AT", ""],
                                                "first_name": ["Anna", ""]})
    recs = parse(path.read_bytes(), "csv")
    assert recs[0].tags == ("news", "vip") and recs[0].locale == "de-AT"
    assert recs[0].attributes == {"first_name": "Anna"}
    assert recs[1].tags == () and recs[1].attributes == {}


def test_csv_missing_column_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("endpoint,p256dh\nhttps://fcm.googleapis.com/x,abc\n")
    result = run("subscribers", "import", str(path))
    assert result.exit_code == 2
    assert "s.csv:1: missing column auth" in result.output


def test_csv_wrong_column_count_is_rejected_with_line(tmp_path: Path) -> None:
    sub = real_subscription()
    path = tmp_path / "s.csv"
    path.write_text("endpoint,p256dh,auth\n"
                    f"{sub['endpoint']},{sub['keys']['p256dh']},{sub['keys']['auth']}\n"
                    f"{sub['endpoint']}x,{sub['keys']['p256dh']}\n")
    recs = parse(path.read_bytes(), "csv")
    assert isinstance(recs[0], Subscription)
    assert isinstance(recs[1], Rejected) and recs[1].location == "line 3"
    assert "expected 3 columns, got 2" in recs[1].reason


@pytest.mark.parametrize("name,content,message", [
    ("empty.csv", b"", "empty file"),
    ("empty.json", b"", "empty file"),
    ("bad.json", b'[{"endpoint": ', "invalid JSON"),
    ("latin1.json", '[{"endpoint": "é"}]'.encode("latin-1"), "not valid UTF-8"),
    ("obj.json", b'{"foo": 1}', "expected a JSON array"),
    ("utf16.csv", "endpoint,p256dh,auth\n".encode("utf-16"), "UTF-16"),
])
def test_file_level_errors_exit_2_with_one_line(tmp_path: Path, name: str, content: bytes,
                                               message: str) -> None:
    (tmp_path / name).write_bytes(content)
    result = run("subscribers", "import", name)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_file_and_unknown_format_exit_2(tmp_path: Path) -> None:
    r = run("subscribers", "import", "nope.json")
    assert r.exit_code == 2 and "nope.json: no such file" in r.output
    (tmp_path / "subs.txt").write_text("x")
    r = run("subscribers", "import", "subs.txt")
    assert r.exit_code == 2 and "--format" in r.output
    r = run("subscribers", "import", "subs.txt", "--format", "xml")
    assert r.exit_code == 2 and "unknown format" in r.output


# --- store upsert ----------------------------------------------------------------------------


def test_import_json_then_reimport_is_idempotent(tmp_path: Path) -> None:
    subs = [real_subscription() for _ in range(5)]
    write_json(tmp_path / "s.json", subs)
    r = run("subscribers", "import", "s.json", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"errors": []} == {
        "read": 5, "added": 5, "updated": 0, "unchanged": 0, "rejected": 0,
        "committed": True, "errors": []}
    r = run("subscribers", "import", "s.json", "--json")
    assert json.loads(r.stdout)["unchanged"] == 5
    assert json.loads(r.stdout)["added"] == 0
    r = run("subscribers", "count", "--json")
    assert json.loads(r.stdout)["count"] == 5


def test_wrapped_json_and_duplicates_within_file(tmp_path: Path) -> None:
    sub = real_subscription()
    (tmp_path / "w.json").write_text(json.dumps({"subscriptions": [sub, sub]}))
    r = run("subscribers", "import", "w.json", "--json")
    doc = json.loads(r.stdout)
    assert doc["read"] == 2 and doc["added"] == 1 and doc["unchanged"] == 1


def test_changed_keys_or_tags_update_and_expired_is_reactivated(tmp_path: Path,
                                                                db_path: Path) -> None:
    sub = real_subscription()
    write_json(tmp_path / "s.json", [sub])
    run("subscribers", "import", "s.json")
    newer = real_subscription(sub["endpoint"])
    write_json(tmp_path / "s2.json", [newer])
    doc = json.loads(run("subscribers", "import", "s2.json", "--json").stdout)
    assert doc["updated"] == 1
    doc = json.loads(run("subscribers", "import", "s2.json", "--tag", "vip", "--json").stdout)
    assert doc["updated"] == 1
    assert json.loads(run("subscribers", "count", "--tag", "vip", "--json").stdout)["count"] == 1
    # mark expired as a send would, then re-import: active again
    with Store.open(db_path) as store:
        stored = store.find_by_endpoint(sub["endpoint"])
        from pushcli.messages import DeliveryRecord
        from pushcli.pushservices import Outcome
        info = store.start_campaign("c", {})
        store.record(info.id, [DeliveryRecord(stored.id, Outcome.EXPIRED, "fcm", 410)])
        assert store.count(status="expired") == 1
    doc = json.loads(run("subscribers", "import", "s2.json", "--tag", "vip", "--json").stdout)
    assert doc["updated"] == 1
    assert json.loads(run("subscribers", "count", "--json").stdout)["count"] == 1


def test_bad_records_do_not_abort_good_ones_and_exit_1(tmp_path: Path) -> None:
    good = [real_subscription() for _ in range(3)]
    bad = real_subscription()
    bad["keys"]["auth"] = "AAAA"
    write_json(tmp_path / "mixed.json", [good[0], bad, good[1], good[2]])
    r = run("subscribers", "import", "mixed.json", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["added"] == 3 and doc["rejected"] == 1
    assert doc["errors"] == ["mixed.json[1]: keys.auth: must decode to 16 bytes, got 3"]


def test_lone_surrogate_rejects_only_its_record_with_its_line(tmp_path: Path) -> None:
    # json.dumps spells "\udc80" as an escape; Python decodes it into a str that no
    # database driver can encode, which used to crash the batch and lose the good records
    good = [real_subscription() for _ in range(2)]
    bad = [
        real_subscription("https://fcm.googleapis.com/fcm/send/a\udc80"),
        real_subscription(user_id="u\udc80"),
        real_subscription(attributes={"first_name": "Zo\udc80"}),
        real_subscription(tags=["news\udc80"]),
    ]
    lines = [json.dumps(s) for s in [good[0], *bad, good[1]]]
    (tmp_path / "s.ndjson").write_text("\n".join(lines) + "\n")
    r = run("subscribers", "import", "s.ndjson", "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["added"] == 2 and doc["rejected"] == 4
    assert doc["errors"][0] == ("s.ndjson:2: endpoint: contains an invalid character "
                                "(a lone surrogate such as \\udc80)")
    assert doc["errors"][1].startswith("s.ndjson:3: user_id: contains an invalid character")
    assert doc["errors"][2].startswith("s.ndjson:4: attributes.first_name: contains an invalid")
    assert doc["errors"][3].startswith("s.ndjson:5: tags: invalid tag")


def test_a_record_the_database_cannot_store_loses_only_itself(store: Store) -> None:
    # the store's own safety net, for what validation might miss
    good = [make_subscription(real_subscription()) for _ in range(3)]
    bad = Subscription(good[0].endpoint + "x", good[0].p256dh, good[0].auth,
                       user_id="u\udc80")
    result = store.import_subscriptions([("f.json", good[0]), ("f.json", bad),
                                         ("f.json", good[1]), ("f.json", good[2])])
    assert result.added == 3 and result.rejected == 1
    assert result.rejections == [Rejection("f.json", "record 2", "cannot be stored: a value "
                                           "is not valid Unicode text")]
    assert result.rejections[0].field is None
    assert store.count() == 3


def test_strict_imports_nothing_when_any_record_is_invalid(tmp_path: Path,
                                                           db_path: Path) -> None:
    before = [real_subscription() for _ in range(2)]
    write_json(tmp_path / "first.json", before)
    run("subscribers", "import", "first.json")
    good = [real_subscription() for _ in range(2500)]  # spans several batches
    changed = real_subscription(before[0]["endpoint"])
    bad = real_subscription("https://example.com/not-a-push-service")
    write_json(tmp_path / "s.json", [changed, *good, bad])
    r = run("subscribers", "import", "s.json", "--strict", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["committed"] is False
    with Store.open(db_path) as store:
        assert store.count(status="all") == 2
        assert store.find_by_endpoint(before[0]["endpoint"]).subscription.p256dh == \
            before[0]["keys"]["p256dh"]


def test_stdin_needs_format_and_reads_ndjson() -> None:
    data = "\n".join(json.dumps(real_subscription()) for _ in range(3)) + "\n"
    r = run("subscribers", "import", "-", input=data)
    assert r.exit_code == 2 and "--format" in r.output
    r = run("subscribers", "import", "-", "--format", "ndjson", "--json", input=data)
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 3


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
def test_export_import_round_trip(tmp_path: Path, fmt: str) -> None:
    subs = [real_subscription(tags=["a", "b"], locale="en-GB",
                              attributes={"first_name": f"n{i}"}, user_id=f"u{i}",
                              **({"timezone": "Asia/Kolkata"} if i % 2 else {}))
            for i in range(20)]
    write_json(tmp_path / "s.json", subs)
    run("subscribers", "import", "s.json")
    r = run("subscribers", "export", "--format", fmt, "-o", f"out.{fmt}")
    assert r.exit_code == 0, r.output
    assert (tmp_path / f"out.{fmt}").stat().st_mode & 0o777 == 0o600
    # into a fresh store: same rows
    r2 = runner.invoke(app, ["--db", "other.db", "subscribers", "import", f"out.{fmt}", "--json"])
    assert json.loads(r2.stdout)["added"] == 20
    # back into the original store: nothing changes
    r3 = run("subscribers", "import", f"out.{fmt}", "--json")
    assert json.loads(r3.stdout)["unchanged"] == 20, r3.stdout
    with Store.open(tmp_path / "other.db") as a, Store.open(tmp_path / "test.db") as b:
        rows_a = sorted((s.subscription for s in a.iter_subscriptions()), key=lambda s: s.endpoint)
        rows_b = sorted((s.subscription for s in b.iter_subscriptions()), key=lambda s: s.endpoint)
        assert rows_a == rows_b
        assert sum(s.timezone == "Asia/Kolkata" for s in rows_a) == 10


def test_timezone_from_json_ndjson_and_csv_and_unknown_zone_rejected_with_line(
        tmp_path: Path) -> None:
    subs = [real_subscription() for _ in range(3)]
    nd = "\n".join(json.dumps({**s, "timezone": z}) for s, z in
                   zip(subs, ["Europe/Paris", "Mars/Olympus", None], strict=True))
    recs = parse(nd.encode(), "ndjson")
    assert recs[0].timezone == "Europe/Paris" and recs[2].timezone is None
    assert isinstance(recs[1], Rejected) and recs[1].location == "line 2"
    assert recs[1].reason.startswith("timezone: unknown time zone 'Mars/Olympus'")
    path = write_csv(tmp_path / "s.csv", subs, {"timezone": ["Pacific/Kiritimati", "", "Paris"],
                                                "plan": ["a", "b", "c"]})
    recs = parse(path.read_bytes(), "csv")
    assert recs[0].timezone == "Pacific/Kiritimati" and recs[0].attributes == {"plan": "a"}
    assert recs[1].timezone is None  # an empty cell: the campaign's default zone
    assert isinstance(recs[2], Rejected) and recs[2].location == "line 4"
    assert recs[2].reason.startswith("timezone: unknown time zone 'Paris'")


def test_store_file_is_created_0600(tmp_path: Path) -> None:
    write_json(tmp_path / "s.json", [real_subscription()])
    run("subscribers", "import", "s.json")
    assert (tmp_path / "test.db").stat().st_mode & 0o777 == 0o600
    from pushcli.store import Store

    with Store.open(tmp_path / "test.db") as store:  # an open store has its WAL files
        assert store.count() == 1
        for side in ("test.db-wal", "test.db-shm"):
            assert (tmp_path / side).stat().st_mode & 0o777 == 0o600, side


def test_reading_commands_never_create_a_store(tmp_path: Path) -> None:
    for args in (["subscribers", "count"], ["subscribers", "export"], ["report", "x"],
                 ["campaigns", "list"], ["prune"]):
        r = run(*args)
        assert r.exit_code == 2 and "no such database" in r.output, args
    assert not (tmp_path / "test.db").exists()


def test_import_checks_every_file_before_importing_any(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", [real_subscription()])
    r = run("subscribers", "import", "a.json", "missing.json")
    assert r.exit_code == 2 and "missing.json: no such file" in r.output
    assert not (tmp_path / "test.db").exists()  # nothing was imported, not even a.json


def test_every_canonical_key_takes_the_quick_check_the_send_path_reads_rows_with() -> None:
    """The quick check's pattern for a 65-byte key allowed only 4 of the 16 possible last
    characters, so 3 keys in 4 fell back to the field-by-field decoding on every send."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from pushcli.subscriptions import stored_keys_valid, validate_auth, validate_p256dh

    last = set()
    for i in range(200):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        p256dh, auth = b64url_encode(point), b64url_encode(bytes([i]) * 16)
        assert validate_p256dh(p256dh) == p256dh and validate_auth(auth) == auth
        assert stored_keys_valid(p256dh, auth), p256dh
        last.add(p256dh[-1])
    assert len(last) > 4  # the old pattern's whole alphabet
    assert not stored_keys_valid(p256dh[:-1] + "B", auth)  # low bits set: not canonical
