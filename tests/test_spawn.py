"""How many sender processes a send runs, and the spares started before it knows."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pushcli.spawn import (
    AUTO_WORKERS_FROM,
    LARGE_STORE_BYTES,
    Spares,
    senders_for,
    spares_for,
    start_child,
)
from tests.support import process_exists, pushcli_env, start_pushcli, wait_for_group_exit


def _store_of(tmp_path: Path, size: int) -> Path:
    db = tmp_path / "pushcli.db"
    with db.open("wb") as fh:
        fh.truncate(size)
    return db


@pytest.mark.parametrize("pending, workers, cores, expected", [
    (AUTO_WORKERS_FROM - 1, None, 8, 1),  # small: one process beats starting another
    (AUTO_WORKERS_FROM, None, 2, 2),
    (AUTO_WORKERS_FROM, None, 16, 4),  # at most four without --workers
    (AUTO_WORKERS_FROM, None, 1, 1),
    (10, 3, 2, 3),  # --workers is what the operator asked for
])
def test_senders_for_follows_workers_else_the_audience_and_the_cores(
        pending: int, workers: int | None, cores: int, expected: int) -> None:
    assert senders_for(pending, workers, cores=cores) == expected


def test_spares_for_an_explicit_workers_count_whatever_the_store(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.db")
    assert spares_for(3, missing, cores=2) == 2
    assert spares_for(1, missing, cores=2) == 0
    assert spares_for(0, missing, cores=2) == 0  # refused by the send: nothing started
    assert spares_for(65, missing, cores=2) == 0


def test_spares_for_auto_only_a_large_sqlite_store(tmp_path: Path) -> None:
    small = _store_of(tmp_path, LARGE_STORE_BYTES - 1)
    assert spares_for(None, str(small), cores=2) == 0
    large = _store_of(tmp_path, LARGE_STORE_BYTES)
    assert spares_for(None, str(large), cores=2) == 1
    assert spares_for(None, f"sqlite:///{large}", cores=8) == 3
    assert spares_for(None, str(large), cores=1) == 0  # one core: never more than one sender
    assert spares_for(None, str(tmp_path / "absent.db"), cores=2) == 0
    assert spares_for(None, "postgresql://u@localhost/db", cores=2) == 0


def test_a_test_send_runs_in_one_process_and_starts_no_spare(tmp_path: Path) -> None:
    """``--limit``/``--to``: one sender even when ``--workers`` or the audience asks for more."""
    large = str(_store_of(tmp_path, LARGE_STORE_BYTES))
    assert senders_for(AUTO_WORKERS_FROM * 10, 3, limit=5, cores=2) == 1
    assert senders_for(AUTO_WORKERS_FROM * 10, None, to="https://x.example/1", cores=2) == 1
    assert spares_for(3, large, limit=5, cores=2) == 0
    assert spares_for(None, large, to="https://x.example/1", cores=2) == 0


def test_spares_for_reads_pushcli_db_when_no_db_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    large = _store_of(tmp_path, LARGE_STORE_BYTES)
    monkeypatch.setenv("PUSHCLI_DB", str(large))
    assert spares_for(None, None, cores=2) == 1


def test_spares_not_taken_are_killed_at_once_and_the_rest_at_the_end() -> None:
    with Spares(3) as spares:
        pids = [c.process.pid for c in spares._waiting]
        taken = spares.take(1)
        # the two not taken are gone before the send goes on, not at its end
        assert not process_exists(pids[1]) and not process_exists(pids[2])
        assert taken[0].process.pid == pids[0] and taken[0].process.poll() is None
    taken[0].discard()
    assert taken[0].process.returncode == -signal.SIGKILL


def test_spares_are_killed_when_the_send_fails_before_it_takes_them() -> None:
    with pytest.raises(RuntimeError), Spares(2) as spares:
        pids = [c.process.pid for c in spares._waiting]
        raise RuntimeError("the campaign file is invalid")
    # killed and reaped on the way out, still importing (not left to notice on their own)
    assert not any(process_exists(pid) for pid in pids)


def test_a_child_whose_parent_closes_its_link_exits_quietly() -> None:
    child = start_child()
    child.link.close()
    assert child.process.wait(timeout=60) == 0


def test_a_refused_send_leaves_no_spare_sender_behind(tmp_path: Path) -> None:
    """--workers 3 starts two spares before the campaign is read; a campaign file that does
    not exist ends the send (exit 2), and it has killed and reaped both before it exits
    (left to themselves they would run their imports, ~0.6 s, before noticing)."""
    env = pushcli_env(db=tmp_path / "pushcli.db")
    proc = start_pushcli("send", str(tmp_path / "missing.yml"), "--workers", "3",
                         cwd=tmp_path, env=env)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "missing.yml" in stderr and "Traceback" not in stderr
    wait_for_group_exit(proc.pid, timeout=0.2)
