"""`pushcli doctor`: all-ok exits 0; every problem is found (exit 1) without hiding others.

Runs the real command in a subprocess, like a cron job or a CI step would.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_subscription

from pushcli.keys import generate_keys
from pushcli.store import Store
from pushcli.subscriptions import parse_stream

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


class Setup:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.key = folder / "vapid_private.pem"
        self.db = folder / "pushcli.db"
        generate_keys(folder)
        self.campaign = self.write_campaign()

    def write_campaign(self, body: str = "Hello {{ first_name | default('you') }}",
                       subject: str = SUBJECT, name: str = "spring.yml") -> Path:
        path = self.dir / name
        path.write_text(CAMPAIGN.format(body=body, subject=subject))
        return path

    def add_subscribers(self, subs: list[dict], allowed: frozenset[str] = frozenset()) -> None:
        data = io.BytesIO(json.dumps(subs).encode())
        with Store.open(self.db) as store:
            recs = [("subs", r) for r in parse_stream(data, "json", source="subs",
                                                      allowed_hosts=allowed)]
            result = store.import_subscriptions(recs)
        assert result.rejected == 0, result.errors

    def doctor(self, *args: str, campaign: Path | None = None, db: Path | None = None,
               json_out: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """``pushcli [--db DB] doctor CAMPAIGN [--json] ARGS``; the store via PUSHCLI_DB."""
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith("PUSHCLI_") and k not in ("FORCE_COLOR", "NO_COLOR")}
        environ.update(PUSHCLI_DB=str(self.db), PUSHCLI_VAPID_PRIVATE_KEY=str(self.key),
                       NO_COLOR="1")
        environ.update(env)
        argv = [sys.executable, "-m", "pushcli"]
        argv += ["--db", str(db)] if db is not None else []
        argv += ["doctor", str(campaign or self.campaign)]
        argv += ["--json"] if json_out else []
        return subprocess.run([*argv, *args], cwd=self.dir, env=environ,
                              capture_output=True, text=True, timeout=120)


def checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {c["check"]: c for c in doc["checks"]}
    assert doc["ok"] == all(c["ok"] for c in by_name.values())
    return by_name


def failing(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {name: c["detail"] for name, c in checks(proc).items() if not c["ok"]}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    s.add_subscribers([real_subscription(attributes={"first_name": f"Ana{i}"}) if i % 2 else
                       real_subscription() for i in range(6)])
    return s


def test_all_ok_exits_0(setup: Setup) -> None:
    proc = setup.doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = checks(proc)
    assert list(found) == ALL_CHECKS
    assert all(c["ok"] for c in found.values()), found
    assert "6" in found["push services"]["detail"] and "fcm" in found["push services"]["detail"]
    assert "0600" in found["private key"]["detail"]

    human = setup.doctor(json_out=False)
    assert human.returncode == 0 and human.stderr == ""
    assert "FAIL" not in human.stdout
    assert len(human.stdout.strip().splitlines()) == len(ALL_CHECKS)


def test_key_readable_by_others(setup: Setup) -> None:
    os.chmod(setup.key, 0o644)
    proc = setup.doctor()
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["private key"]
    assert "chmod 600" in problems["private key"] and "0644" in problems["private key"]
    human = setup.doctor(json_out=False)
    assert human.returncode == 1
    assert any("FAIL" in line and "chmod 600" in line for line in human.stdout.splitlines())


def test_missing_key(setup: Setup) -> None:
    setup.key.unlink()
    proc = setup.doctor()
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["private key"]
    assert "no such file" in problems["private key"]
    assert not setup.key.exists(), "doctor must never create a key"


@pytest.mark.parametrize("subject", ["mailto:ops@localhost", "https://push.localhost/contact"])
def test_subject_at_localhost(setup: Setup, subject: str) -> None:
    proc = setup.doctor(campaign=setup.write_campaign(subject=subject, name="local.yml"))
    assert proc.returncode == 1
    problems = failing(proc)
    # One subject rule: the campaign file itself is invalid, as send and --dry-run say.
    assert "vapid.subject" in problems["campaign"] and "localhost" in problems["campaign"]
    assert set(problems) == {"campaign", "subject"}
    # Given on the command line instead, the subject check names it.
    proc = setup.doctor("--subject", subject)
    problems = failing(proc)
    assert list(problems) == ["subject"]
    assert "localhost" in problems["subject"]


def test_subscriptions_at_a_host_not_allowed(setup: Setup) -> None:
    setup.add_subscribers([real_subscription("https://push.internal.example/s/1"),
                           real_subscription("https://push.internal.example/s/2")],
                          allowed=frozenset({"push.internal.example"}))
    proc = setup.doctor()
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["push services"]
    assert "2 subscriptions would be blocked" in problems["push services"]
    assert "push.internal.example" in problems["push services"]
    # allowed again (option or environment): all ok
    assert setup.doctor("--allow-host", "push.internal.example").returncode == 0
    assert setup.doctor(PUSHCLI_ALLOW_HOSTS="push.internal.example").returncode == 0


def test_campaign_invalid(setup: Setup) -> None:
    bad = setup.dir / "bad.yml"
    bad.write_text(setup.campaign.read_text().replace("notification:", "notificaton:"))
    proc = setup.doctor("--subject", SUBJECT, campaign=bad)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["campaign"]
    assert "notificaton" in problems["campaign"]
    # the other checks still ran (one failure never hides the rest)
    assert set(checks(proc)) == {"campaign", "private key", "subject", "store", "push services"}


def test_payload_too_large_for_one_subscriber_variant(setup: Setup) -> None:
    campaign = setup.write_campaign(body="Hi {{ bio | default('') }}{{ bio | default('') }}"
                                         "{{ bio | default('') }}{{ bio | default('') }}")
    assert setup.doctor(campaign=campaign).returncode == 0  # nobody has a bio yet
    setup.add_subscribers([real_subscription(attributes={"bio": "x" * 1000})])
    proc = setup.doctor(campaign=campaign)
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["payload size"]
    assert "bytes" in problems["payload size"] and "3993" in problems["payload size"]


def test_missing_store_is_reported_and_not_created(setup: Setup) -> None:
    for db in (setup.dir / "missing.db", setup.dir / "nope" / "missing.db"):
        proc = setup.doctor(db=db)
        assert proc.returncode == 1, proc.stderr
        problems = failing(proc)
        assert list(problems) == ["store"]
        assert "no such database" in problems["store"] or "does not exist" in problems["store"]
        assert not db.exists(), "doctor must not create a store"
        assert "push services" not in checks(proc)


def test_bad_database_url_is_a_failed_check(setup: Setup) -> None:
    proc = setup.doctor(PUSHCLI_DB="postgresql+nosuchdriver://u@127.0.0.1:1/db")
    assert proc.returncode == 1, proc.stderr
    assert list(failing(proc)) == ["store"]


def test_missing_default_store_in_the_working_directory(tmp_path: Path) -> None:
    s = Setup(tmp_path)  # no subscribers imported: no pushcli.db
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PUSHCLI_")}
    proc = subprocess.run([sys.executable, "-m", "pushcli", "doctor", "--json",
                           "--subject", SUBJECT], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert list(failing(proc)) == ["store"]
    assert not s.db.exists()


def test_every_problem_at_once(setup: Setup) -> None:
    os.chmod(setup.key, 0o640)
    setup.add_subscribers([real_subscription("https://push.internal.example/s/1")],
                          allowed=frozenset({"push.internal.example"}))
    proc = setup.doctor("--subject", "mailto:ops@localhost")  # overrides the campaign's
    assert proc.returncode == 1
    assert set(failing(proc)) == {"private key", "subject", "push services"}


def test_human_output_prints_paths_literally(setup: Setup) -> None:
    """A detail is text, never rich markup: brackets in a path must not crash doctor."""
    key = setup.dir / "[/keys]" / "vapid[/x].pem"
    proc = setup.doctor("--key", str(key), json_out=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode == 1
    assert f"{key}: no such file" in proc.stdout


def test_store_readable_by_others(setup: Setup) -> None:
    """The store holds every subscriber's auth secret: a 0644 store is a problem."""
    assert "mode 0600" in checks(setup.doctor())["store"]["detail"]
    os.chmod(setup.db, 0o644)
    proc = setup.doctor()
    assert proc.returncode == 1
    problems = failing(proc)
    assert list(problems) == ["store"]
    assert "0644" in problems["store"] and "chmod 600" in problems["store"]
    assert "push services" in checks(proc)  # the other checks still ran
