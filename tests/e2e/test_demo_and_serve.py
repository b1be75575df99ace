"""`pushcli demo` and `pushcli testing serve` as a user would run them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def test_demo_report_is_consistent_with_what_the_emulator_was_told(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pushcli", "demo", "--subscribers", "500", "--expire-share",
         "0.2", "--dir", str(tmp_path / "demo"), "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["first_campaign"]["sent"] == 500
    assert doc["expired_at_push_service"] == 100
    assert doc["second_campaign"]["expired"] == 100
    assert doc["second_campaign"]["sent"] == 400
    assert doc["pruned"] == 100 and doc["remaining"] == 400
    assert doc["files"]["messages_received_by_emulator"] == "900"
    for secret in ("vapid_private.pem", "pushcli.db", "subscriptions.ndjson"):
        assert (tmp_path / "demo" / secret).stat().st_mode & 0o777 == 0o600, secret
    # the demo's store is an ordinary store: its history is readable with the CLI
    listed = subprocess.run([sys.executable, "-m", "pushcli", "--db",
                             doc["files"]["store"], "campaigns", "list", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert [c["campaign"] for c in json.loads(listed.stdout)] == ["demo-welcome", "demo-sale"]


def test_demo_refuses_a_folder_that_already_holds_a_key(tmp_path: Path) -> None:
    (tmp_path / "vapid_private.pem").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "pushcli", "demo", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "already holds a demo" in proc.stderr
    assert (tmp_path / "vapid_private.pem").read_text() == "x"


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_testing_serve_is_usable_from_another_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PUSHCLI_DB=str(tmp_path / "p.db"), PUSHCLI_ALLOW_HOSTS="127.0.0.1",
               NO_COLOR="1")
    server = subprocess.Popen([sys.executable, "-m", "pushcli", "testing", "serve", "--port",
                               str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                assert _post(f"{base}/status", {})["ok"] is True
                break
            except OSError:
                time.sleep(0.1)
        run = lambda *a: subprocess.run([sys.executable, "-m", "pushcli", *a], env=env,  # noqa: E731
                                        cwd=tmp_path, capture_output=True, text=True,
                                        timeout=60)
        key = json.loads(run("keys", "generate", "--json").stdout)["application_server_key"]
        subs = _post(f"{base}/subscribe", {"applicationServerKey": key, "count": 5,
                                            "userVisibleOnly": "true"})["data"]
        (tmp_path / "subs.json").write_text(json.dumps(subs))
        assert run("subscribers", "import", "subs.json").returncode == 0
        (tmp_path / "c.yml").write_text(
            "name: served\nnotification:\n  title: Hi\n  body: There\n"
            "  url: https://example.com/\nvapid:\n  subject: mailto:ops@example.com\n")
        sent = run("send", "c.yml", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["sent"] == 5
        for sub in subs:
            got = _post(f"{base}/get-notifications", {"clientHash": sub["clientHash"]})
            [message] = got["data"]["messages"]
            assert json.loads(message)["notification"]["title"] == "Hi"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    assert server.returncode == 0
