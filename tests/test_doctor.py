"""`pushcli doctor`: all-ok exits 0; every problem is found (exit 1) without hiding others.

Runs the real command in a subprocess, like a cron job or a CI step would.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import Workspace, pushcli_env, real_subscription, run_pushcli

SUBJECT = "mailto:ops@shop.example.com"
CAMPAIGN = """\
name: spring
notification:
  title: Spring sale
  body: "{body}"
  url: https://shop.example.com/spring
vapid:
  subject: {subject}
"""
ALL_CHECKS = ["campaign", "private key", "subject", "store", "push services", "payload size"]


def make_setup(folder: Path) -> Workspace:
    """A key and ``spring.yml`` in ``folder``; no allow-list in the children's environment."""
    ws = Workspace.create(folder, allow_hosts=None)
    write_campaign(ws)
    return ws


def write_campaign(ws: Workspace, body: str = "Hello {{ first_name | default('you') }}",
                   subject: str = SUBJECT, name: str = "spring.yml") -> Path:
    path = ws.dir / name
    path.write_text(CAMPAIGN.format(body=body, subject=subject))
    return path


def doctor(ws: Workspace, *args: str, campaign: Path | None = None, db: Path | None = None,
           json_out: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """``pushcli [--db DB] doctor CAMPAIGN [--json] ARGS``; the store via PUSHCLI_DB."""
    argv = ["--db", str(db)] if db is not None else []
    argv += ["doctor", str(campaign or ws.dir / "spring.yml")]
    argv += ["--json"] if json_out else []
    return ws.pushcli(*argv, *args, **env)


def checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {c["check"]: c for c in doc["checks"]}
    assert doc["ok"] == all(c["ok"] for c in by_name.values())
    return by_name


def failing(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {name: c["detail"] for name, c in checks(proc).items() if not c["ok"]}


@pytest.fixture
def setup(tmp_path: Path) -> Workspace:
    s = make_setup(tmp_path)
    s.add_subscribers([real_subscription(attributes={"first_name": f"Ana{i}"}) if i % 2 else
                       real_subscription() for i in range(6)])
    return s


def test_all_ok_exits_0(setup: Workspace) -> None:
    proc = doctor(setup)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = checks(proc)
    assert list(found) == ALL_CHECKS
    assert all(c["ok"] for c in found.values()), found
    assert "6" in found["push services"]["detail"] and "fcm" in found["push services"]["detail"]
    assert "0600" in found["private key"]["detail"]

    human = doctor(setup, json_out=False)
    assert human.returncode == 0 and human.stderr == ""
    assert "FAIL" not in human.stdout
    assert len(human.stdout.strip().splitlines()) == len(ALL_CHECKS)


def test_key_readable_by_others(setup: Workspace) -> None:
    os.chmod(setup.key, 0o644)
    proc = doctor(setup)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["private key"]
    assert "chmod 600" in problems["private key"] and "0644" in problems["private key"]
    human = doctor(setup, json_out=False)
    assert human.returncode == 1
    assert any("FAIL" in line and "chmod 600" in line for line in human.stdout.splitlines())


def test_missing_key(setup: Workspace) -> None:
    setup.key.unlink()
    proc = doctor(setup)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["private key"]
    assert "no such file" in problems["private key"]
    assert not setup.key.exists(), "doctor must never create a key"


@pytest.mark.parametrize("subject", ["mailto:ops@localhost", "https://push.localhost/contact"])
def test_subject_at_localhost(setup: Workspace, subject: str) -> None:
    proc = doctor(setup, campaign=write_campaign(setup, subject=subject, name="local.yml"))
    assert proc.returncode == 1
    problems = failing(proc)
    # One subject rule: the campaign file itself is invalid, as send and --dry-run say.
    assert "vapid.subject" in problems["campaign"] and "localhost" in problems["campaign"]
    assert set(problems) == {"campaign", "subject"}
    # Given on the command line instead, the subject check names it.
    proc = doctor(setup, "--subject", subject)
    problems = failing(proc)
    assert list(problems) == ["subject"]
    assert "localhost" in problems["subject"]


def test_subscriptions_at_a_host_not_allowed(setup: Workspace) -> None:
    setup.add_subscribers([real_subscription("https://push.internal.example/s/1"),
                           real_subscription("https://push.internal.example/s/2")],
                          allowed=frozenset({"push.internal.example"}))
    proc = doctor(setup)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["push services"]
    assert "2 subscriptions would be blocked" in problems["push services"]
    assert "push.internal.example" in problems["push services"]
    # allowed again (option or environment): all ok
    assert doctor(setup, "--allow-host", "push.internal.example").returncode == 0
    assert doctor(setup, PUSHCLI_ALLOW_HOSTS="push.internal.example").returncode == 0


def test_campaign_invalid(setup: Workspace) -> None:
    bad = setup.dir / "bad.yml"
    bad.write_text((setup.dir / "spring.yml").read_text().replace("notification:", "notificaton:"))
    proc = doctor(setup, "--subject", SUBJECT, campaign=bad)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["campaign"]
    assert "notificaton" in problems["campaign"]
    # the other checks still ran (one failure never hides the rest)
    assert set(checks(proc)) == {"campaign", "private key", "subject", "store", "push services"}


def test_payload_too_large_for_one_subscriber_variant(setup: Workspace) -> None:
    campaign = write_campaign(setup, body="Hi {{ bio | default('') }}{{ bio | default('') }}"
                                         "{{ bio | default('') }}{{ bio | default('') }}")
    assert doctor(setup, campaign=campaign).returncode == 0  # nobody has a bio yet
    setup.add_subscribers([real_subscription(attributes={"bio": "x" * 1000})])
    proc = doctor(setup, campaign=campaign)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["payload size"]
    assert "bytes" in problems["payload size"] and "3993" in problems["payload size"]


def test_missing_store_is_reported_and_not_created(setup: Workspace) -> None:
    for db in (setup.dir / "missing.db", setup.dir / "nope" / "missing.db"):
        proc = doctor(setup, db=db)
        assert proc.returncode == 2, proc.stderr  # pointed at no store: bad input
        problems = failing(proc)
        assert list(problems) == ["store"]
        assert "no such database" in problems["store"] or "does not exist" in problems["store"]
        assert not db.exists(), "doctor must not create a store"
        assert "push services" not in checks(proc)


def test_bad_database_url_is_a_failed_check(setup: Workspace) -> None:
    proc = doctor(setup, PUSHCLI_DB="postgresql+nosuchdriver://u@127.0.0.1:1/db")
    assert proc.returncode == 2, proc.stderr  # a wrong --db, as for every other command
    assert list(failing(proc)) == ["store"]


def test_missing_default_store_in_the_working_directory(tmp_path: Path) -> None:
    s = make_setup(tmp_path)  # no subscribers imported: no pushcli.db
    proc = run_pushcli("doctor", "--json", "--subject", SUBJECT, cwd=tmp_path,
                       env=pushcli_env(allow_hosts=None))
    assert proc.returncode == 2
    assert list(failing(proc)) == ["store"]
    assert not s.db.exists()


def test_every_problem_at_once(setup: Workspace) -> None:
    os.chmod(setup.key, 0o640)
    setup.add_subscribers([real_subscription("https://push.internal.example/s/1")],
                          allowed=frozenset({"push.internal.example"}))
    proc = doctor(setup, "--subject", "mailto:ops@localhost")  # overrides the campaign's
    assert proc.returncode == 1
    assert set(failing(proc)) == {"private key", "subject", "push services"}


def test_human_output_prints_paths_literally(setup: Workspace) -> None:
    """A detail is text, never rich markup: brackets in a path must not crash doctor."""
    key = setup.dir / "[/keys]" / "vapid[/x].pem"
    proc = doctor(setup, "--key", str(key), json_out=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode == 1
    assert f"{key}: no such file" in proc.stdout


def test_store_readable_by_others(setup: Workspace) -> None:
    """The store holds every subscriber's auth secret: a 0644 store is a problem."""
    assert "mode 0600" in checks(doctor(setup))["store"]["detail"]
    os.chmod(setup.db, 0o644)
    proc = doctor(setup)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["store"]
    assert "0644" in problems["store"] and "chmod 600" in problems["store"]
    assert "push services" in checks(proc)  # the other checks still ran
