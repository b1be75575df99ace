"""`pushcli demo` and `pushcli testing serve` as a user would run them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import emulator_server, pushcli_env, read_line, run_pushcli


def test_demo_report_is_consistent_with_what_the_emulator_was_told(tmp_path: Path) -> None:
    env = pushcli_env(allow_hosts=None)
    proc = run_pushcli("demo", "--subscribers", "500", "--expire-share", "0.2", "--dir",
                       str(tmp_path / "demo"), "--json", cwd=tmp_path, env=env)
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
    listed = run_pushcli("--db", doc["files"]["store"], "campaigns", "list", "--json",
                         cwd=tmp_path, env=env, timeout=60)
    assert [c["campaign"] for c in json.loads(listed.stdout)] == ["demo-welcome", "demo-sale"]


def test_demo_refuses_a_folder_that_already_holds_a_key(tmp_path: Path) -> None:
    (tmp_path / "vapid_private.pem").write_text("x")
    proc = run_pushcli("demo", "--dir", str(tmp_path), cwd=tmp_path,
                       env=pushcli_env(allow_hosts=None), timeout=60)
    assert proc.returncode == 2 and "already holds a demo" in proc.stderr
    assert (tmp_path / "vapid_private.pem").read_text() == "x"


def test_testing_serve_is_usable_from_another_process(tmp_path: Path) -> None:
    env = pushcli_env(db=tmp_path / "p.db")
    with emulator_server(cwd=tmp_path, env=env) as server:  # --port 0: it prints its URL
        assert server.url.startswith("http://127.0.0.1:")
        assert server.post("/status", {})["ok"] is True
        run = lambda *a: run_pushcli(*a, cwd=tmp_path, env=env, timeout=60)  # noqa: E731
        key = json.loads(run("keys", "generate", "--json").stdout)["application_server_key"]
        subs = server.post("/subscribe", {"applicationServerKey": key, "count": 5,
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
            got = server.post("/get-notifications", {"clientHash": sub["clientHash"]})
            [message] = got["data"]["messages"]
            assert json.loads(message)["notification"]["title"] == "Hi"
    assert server.proc.returncode == 0


def test_testing_serve_stops_on_sigterm_and_on_sigint_even_when_started_ignoring_it(
        tmp_path: Path) -> None:
    """A script's background job starts with SIGINT ignored; service managers send SIGTERM."""
    env = pushcli_env(db=tmp_path / "p.db")
    serve = ("import signal, runpy, sys; "
             "signal.signal(signal.SIGINT, signal.SIG_IGN) if sys.argv[1] == 'ignore' else None; "
             "sys.argv = ['pushcli', 'testing', 'serve', '--port', '0']; "
             "runpy.run_module('pushcli', run_name='__main__')")
    for sig, start in ((signal.SIGTERM, "plain"), (signal.SIGINT, "ignore")):
        # as `pushcli testing serve &` from a shell script (SIGINT ignored), or a service
        proc = subprocess.Popen([sys.executable, "-c", serve, start], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert read_line(proc.stdout, 30, "testing serve").startswith("listening on ")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (sig, err)
