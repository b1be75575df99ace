"""Files pushcli writes: secrets are 0600 even over an existing file, temporary files
are exclusive (no predictable name, no planted symlink followed), and the CSV export
neutralizes formula cells yet round-trips through import."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pushcli.cli import app
from pushcli.files import private_file
from pushcli.keys import PRIVATE_KEY_NAME, generate_keys
from pushcli.pushservices import Outcome
from pushcli.store import DeliveryRecord, Store
from pushcli.subscriptions import parse_stream
from tests.support import real_subscription

runner = CliRunner()
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cli(tmp_path: Path, *args: str):
    return runner.invoke(app, ["--db", str(tmp_path / "s.db"), *args])


def _store_with(tmp_path: Path, subs: list[dict]) -> Path:
    db = tmp_path / "s.db"
    with Store.open(db) as store:
        recs = [("t", r) for r in parse_stream(io.BytesIO(json.dumps(subs).encode()), "json",
                                               source="t")]
        assert store.import_subscriptions(recs).rejected == 0
    return db


def _rows(db: Path) -> list:
    with Store.open(db, create=False) as store:
        return sorted((s.subscription for s in store.iter_subscriptions(status="all")),
                      key=lambda s: s.endpoint)


# --- CSV export: formulas neutralized, still round-trips -------------------------------------


def test_csv_export_neutralizes_formulas_and_round_trips_through_import(tmp_path: Path) -> None:
    nasty = ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", "\t=1", "'=1",
             "''+x", "'plain", "a\rb", "a\r=1+1", "fine"]
    subs = [real_subscription(attributes={"note": v}, user_id=v if i < 4 else f"u{i}")
            for i, v in enumerate(nasty)]
    db = _store_with(tmp_path, subs)
    out = tmp_path / "out.csv"
    result = _cli(tmp_path, "subscribers", "export", "--format", "csv", "-o", str(out))
    assert result.exit_code == 0, result.output
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == len(subs) + 1  # a bare CR stayed inside its (quoted) cell
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA), row
    # import into a fresh store gives the very same records, '=... included
    fresh = tmp_path / "fresh.db"
    result = runner.invoke(app, ["--db", str(fresh), "subscribers", "import", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == len(subs)
    assert _rows(fresh) == _rows(db)
    assert {s.attributes["note"] for s in _rows(fresh)} == set(nasty)


# --- 0600, exclusive temporary files -------------------------------------------------------


def test_export_replacing_a_world_readable_file_leaves_it_0600(tmp_path: Path) -> None:
    _store_with(tmp_path, [real_subscription()])
    out = tmp_path / "out.ndjson"
    out.write_text("old\n")
    out.chmod(0o644)
    result = _cli(tmp_path, "subscribers", "export", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert "fcm.googleapis.com" in out.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    _store_with(tmp_path, [real_subscription()])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    out = tmp_path / "out.csv"
    out.symlink_to(victim)
    result = _cli(tmp_path, "subscribers", "export", "--format", "csv", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and out.stat().st_mode & 0o777 == 0o600


def test_report_ignores_a_symlink_planted_at_the_old_temporary_name(tmp_path: Path) -> None:
    """The report used to write ``.NAME.tmp`` with O_TRUNC, following a symlink there."""
    db = _store_with(tmp_path, [real_subscription()])
    with Store.open(db) as store:
        info = store.start_campaign("c", {})
        [sub] = list(store.iter_subscriptions())
        store.record(info.id, [DeliveryRecord(subscription_id=sub.id, outcome=Outcome.SENT,
                                              service="fcm", status_code=201)])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in ("r.csv", "r.json"):
        (tmp_path / f".{name}.tmp").symlink_to(victim)
        (tmp_path / name).write_text("old")
        (tmp_path / name).chmod(0o644)
    result = _cli(tmp_path, "report", "c", "--report", str(tmp_path / "r.csv"),
                  "--report", str(tmp_path / "r.json"), "--json")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    for name in ("r.csv", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert json.loads((tmp_path / "r.json").read_text())["sent"] == 1


def test_forced_key_over_a_world_readable_key_is_0600(tmp_path: Path) -> None:
    private = tmp_path / PRIVATE_KEY_NAME
    generate_keys(tmp_path)
    private.chmod(0o644)
    generate_keys(tmp_path, force=True)
    assert private.stat().st_mode & 0o777 == 0o600


def test_private_file_failure_leaves_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("before")
    with pytest.raises(RuntimeError), private_file(target) as fh:
        fh.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_private_file_without_replace_refuses_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "k"
    target.write_text("key")
    with pytest.raises(FileExistsError), private_file(target, replace=False,
                                                      binary=True) as fh:
        fh.write(b"new")
    assert target.read_text() == "key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_private_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with private_file(tmp_path / "a") as fh:
            fh.write("x")
        with private_file(tmp_path / "b", mode=0o644) as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o644
