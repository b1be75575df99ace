"""`pushcli send` against web-push-testing, a push-service emulator nobody here wrote.

Our own emulator (pushcli.testing) shares our reading of RFC 8030/8291/8292, so
a misreading would pass on both sides. The npm package ``web-push-testing``
is an independent implementation: it checks the ``vapid t=..,k=..`` header, the
ES256 JWT and its exp, requires ``TTL`` and ``Content-Encoding: aes128gcm``,
only reads the body when ``Content-Type: application/octet-stream`` (express.raw),
decrypts with its own http_ece, and answers 410 for an expired subscription.

The package is a devDependency in /work/main/package.json; CI runs ``npm ci``.
A missing node or package FAILS the test instead of skipping it, so interop can
never silently stop being checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushcli.campaign import Renderer, load_campaign
from pushcli.store import Store
from pushcli.tokens import make_token
from tests import support
from tests.support import WebPushTesting, Workspace

pytestmark = pytest.mark.interop

N = 20
EXPIRED = 5


@pytest.fixture
def web_push_testing(tmp_path: Path) -> Iterator[WebPushTesting]:
    """web-push-testing on a port it chose (see tests/support.py); stopped at teardown.

    A missing node or package FAILS the test (never a skip)."""
    with support.web_push_testing(tmp_path / "web-push-testing.log") as server:
        yield server


def _cli(directory: Path) -> Workspace:
    """pushcli in a subprocess with its store and key in ``directory``; web-push-testing
    endpoints are http://localhost:PORT/..."""
    return Workspace(directory, allow_hosts="localhost")


def _json(cli: Workspace, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
    proc = cli.pushcli(*args, "--json")
    assert proc.returncode in ok, f"pushcli {args}: exit {proc.returncode}\n{proc.stderr}"
    return json.loads(proc.stdout)


def _campaign(cli: Workspace, name: str) -> Path:
    return cli.campaign(name, extra="locales:\n  fr:\n    title: Grande nouvelle\n")


def _send(cli: Workspace, campaign: Path, server: WebPushTesting) -> dict[str, Any]:
    proc = cli.pushcli("send", str(campaign), "--json")
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["rejected"] == 0 and report["auth"] == 0 and report["failed"] == 0, (
        f"web-push-testing refused our requests: {json.dumps(report)[:2000]}\n"
        f"server log: {server.log_tail()}")
    return report


def test_web_push_testing_decrypts_exactly_our_payload_and_expiry_is_pruned(
        tmp_path: Path, web_push_testing: WebPushTesting) -> None:
    cli = _cli(tmp_path)
    keys = _json(cli, "keys", "generate", "--dir", str(tmp_path))
    server_key = keys["application_server_key"]

    subs: list[dict[str, Any]] = []
    for i in range(N):
        data = web_push_testing.subscribe(server_key)
        assert data["endpoint"] == f"{web_push_testing.url}/notify/{data['clientHash']}"
        record: dict[str, Any] = {"endpoint": data["endpoint"], "expirationTime": None,
                                  "keys": data["keys"]}
        if i % 2 == 0:
            record["attributes"] = {"first_name": f"Chloé{i}"}  # non-ASCII survives UTF-8
        if i % 4 == 0:
            record["locale"] = "fr-FR"
        subs.append({"record": record, "hash": data["clientHash"]})
    source = tmp_path / "subs.json"
    source.write_text(json.dumps([s["record"] for s in subs]), encoding="utf-8")
    imported = _json(cli, "subscribers", "import", str(source))
    assert imported["added"] == N and imported["rejected"] == 0, imported

    first = _campaign(cli, "interop-one")
    report = _send(cli, first, web_push_testing)
    assert report["total"] == report["sent"] == N, report
    assert report["by_service"]["localhost"]["sent"] == N, report
    renderer = Renderer(load_campaign(first))
    with Store.open(cli.db) as store:  # every payload carries its subscriber's signed token
        secret = store.token_secrets()[0]
        campaign_id = store.get_campaign("interop-one").id
        ids = {sub.subscription.endpoint: sub.id for sub in store.iter_subscriptions()}
    for s in subs:
        rec = s["record"]
        token = make_token(secret, campaign_id, 0, ids[rec["endpoint"]])
        expected = renderer.render(rec.get("locale"), rec.get("attributes", {}), token=token)
        got = web_push_testing.messages(s["hash"])
        assert len(got) == 1, f"{s['hash']}: {len(got)} messages"
        assert json.loads(got[0]) == json.loads(expected)
        assert got[0].encode("utf-8") == expected
    fr = json.loads(web_push_testing.messages(subs[0]["hash"])[0])
    assert fr["notification"]["title"] == "Grande nouvelle"
    assert fr["notification"]["body"] == "Hello Chloé0"

    for s in subs[:EXPIRED]:
        web_push_testing.expire(s["hash"])
    second = _campaign(cli, "interop-two")
    report = _send(cli, second, web_push_testing)
    assert report["expired"] == EXPIRED and report["sent"] == N - EXPIRED, report
    count = _json(cli, "subscribers", "count", "--status", "expired")
    assert count["count"] == EXPIRED
    renderer = Renderer(load_campaign(second))
    with Store.open(cli.db) as store:
        campaign_id = store.get_campaign("interop-two").id
    for s in subs[EXPIRED:]:
        rec = s["record"]
        got = web_push_testing.messages(s["hash"])
        assert len(got) == 2
        token = make_token(secret, campaign_id, 0, ids[rec["endpoint"]])
        assert got[1].encode("utf-8") == renderer.render(rec.get("locale"),
                                                          rec.get("attributes", {}), token=token)
    for s in subs[:EXPIRED]:
        assert len(web_push_testing.messages(s["hash"])) == 1
