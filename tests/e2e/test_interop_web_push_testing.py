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
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pushcli.campaign import Renderer, load_campaign

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
SERVER_JS = ROOT / "node_modules" / "web-push-testing" / "src" / "bin" / "server.js"
INSTALL_HINT = f"run `npm ci` in {ROOT} (CI installs web-push-testing from package-lock.json)"
N = 20
EXPIRED = 5

# Bypass any http_proxy from the environment: the emulator is on loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebPushTesting:
    """A running web-push-testing server and its JSON API (every route is POST)."""

    url: str
    log: Path

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST JSON; return the decoded answer (None when it is not JSON, e.g. "OK")."""
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body or {}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with _opener.open(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"web-push-testing {path}: HTTP {exc.code} {exc.read()[:500]!r}") from None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def subscribe(self, application_server_key: str) -> dict[str, Any]:
        """A new subscription: {"endpoint", "keys": {"p256dh", "auth"}, "clientHash"}.

        userVisibleOnly must be the string "true": the server rejects a JSON boolean.
        """
        return self.post("/subscribe", {"applicationServerKey": application_server_key,
                                        "userVisibleOnly": "true"})["data"]

    def messages(self, client_hash: str) -> list[str]:
        """Decrypted payloads, oldest first, as UTF-8 text (``decrypted.toString('utf-8')``)."""
        return self.post("/get-notifications", {"clientHash": client_hash})["data"]["messages"]

    def expire(self, client_hash: str) -> None:
        """From now on the endpoint answers 410 Gone."""
        self.post(f"/expire-subscription/{client_hash}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@pytest.fixture
def web_push_testing(tmp_path: Path) -> Iterator[WebPushTesting]:
    """``node server.js <port>`` in the foreground on a free port; killed at teardown."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; install Node.js >= 20, then {INSTALL_HINT}")
    if not SERVER_JS.is_file():
        pytest.fail(f"web-push-testing is not installed ({SERVER_JS} missing): {INSTALL_HINT}")
    port = _free_port()
    log = tmp_path / "web-push-testing.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([node, str(SERVER_JS), str(port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    # The server builds its endpoints as http://localhost:PORT/notify/<hash>.
    server = WebPushTesting(f"http://localhost:{port}", log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"web-push-testing exited {proc.returncode}: {server.log_tail()}")
            try:
                server.post("/status")
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"web-push-testing did not answer /status within 20 s: "
                                f"{server.log_tail()}")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Cli:
    """pushcli in a subprocess, as users run it, with its store and key in ``dir``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env = dict(os.environ)
        self.env.update({
            "PUSHCLI_DB": str(directory / "pushcli.db"),
            # web-push-testing endpoints are http://localhost:PORT/...
            "PUSHCLI_ALLOW_HOSTS": "localhost",
            "PUSHCLI_VAPID_PRIVATE_KEY": str(directory / "vapid_private.pem"),
            "NO_COLOR": "1",
        })

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pushcli", *args], cwd=self.dir,
                              env=self.env, capture_output=True, text=True, timeout=120)

    def json(self, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode in ok, f"pushcli {args}: exit {proc.returncode}\n{proc.stderr}"
        return json.loads(proc.stdout)

    def campaign(self, name: str) -> Path:
        path = self.dir / f"{name}.yml"
        path.write_text(
            f"name: {name}\n"
            "notification:\n"
            "  title: Big news\n"
            "  body: \"Hello {{ first_name | default('you') }}\"\n"
            "  url: https://shop.example.com/news\n"
            "  icon: https://shop.example.com/icon.png\n"
            "vapid:\n"
            "  subject: mailto:ops@shop.example.com\n"
            "locales:\n"
            "  fr:\n"
            "    title: Grande nouvelle\n",
            encoding="utf-8",
        )
        return path


def _send(cli: Cli, campaign: Path, server: WebPushTesting) -> dict[str, Any]:
    proc = cli.run("send", str(campaign), "--json")
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["rejected"] == 0 and report["auth"] == 0 and report["failed"] == 0, (
        f"web-push-testing refused our requests: {json.dumps(report)[:2000]}\n"
        f"server log: {server.log_tail()}")
    return report


def test_web_push_testing_decrypts_exactly_our_payload_and_expiry_is_pruned(
        tmp_path: Path, web_push_testing: WebPushTesting) -> None:
    cli = Cli(tmp_path)
    keys = cli.json("keys", "generate", "--dir", str(tmp_path))
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
    imported = cli.json("subscribers", "import", str(source))
    assert imported["added"] == N and imported["rejected"] == 0, imported

    first = cli.campaign("interop-one")
    report = _send(cli, first, web_push_testing)
    assert report["total"] == report["sent"] == N, report
    assert report["by_service"]["localhost"]["sent"] == N, report
    renderer = Renderer(load_campaign(first))
    for s in subs:
        rec = s["record"]
        expected = renderer.render(rec.get("locale"), rec.get("attributes", {}))
        got = web_push_testing.messages(s["hash"])
        assert len(got) == 1, f"{s['hash']}: {len(got)} messages"
        assert json.loads(got[0]) == json.loads(expected)
        assert got[0].encode("utf-8") == expected
    fr = json.loads(web_push_testing.messages(subs[0]["hash"])[0])
    assert fr["notification"]["title"] == "Grande nouvelle"
    assert fr["notification"]["body"] == "Hello Chloé0"

    for s in subs[:EXPIRED]:
        web_push_testing.expire(s["hash"])
    second = cli.campaign("interop-two")
    report = _send(cli, second, web_push_testing)
    assert report["expired"] == EXPIRED and report["sent"] == N - EXPIRED, report
    count = cli.json("subscribers", "count", "--status", "expired")
    assert count["count"] == EXPIRED
    renderer = Renderer(load_campaign(second))
    for s in subs[EXPIRED:]:
        rec = s["record"]
        got = web_push_testing.messages(s["hash"])
        assert len(got) == 2
        assert got[1].encode("utf-8") == renderer.render(rec.get("locale"),
                                                          rec.get("attributes", {}))
    for s in subs[:EXPIRED]:
        assert len(web_push_testing.messages(s["hash"])) == 1
