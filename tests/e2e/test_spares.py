"""Child senders started before the audience is counted (``spawn.Spares``): whatever
happens to them meanwhile, every share is sent once and no process is left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pushcli import workers
from pushcli.campaign import load_campaign
from pushcli.delivery import send_campaign
from pushcli.errors import PushcliError
from pushcli.keys import VapidSigner, load_private_key
from pushcli.messages import DeliveryOptions
from pushcli.spawn import Spares
from pushcli.store import Store
from tests.support import process_exists

ALLOWED = frozenset({"127.0.0.1"})


def _send(e2e: Any, store: Store, campaign: Path, spares: Spares, count: int) -> Any:
    signer = VapidSigner(load_private_key(e2e.dir / "vapid_private.pem"),
                         "mailto:ops@shop.example.com")
    return send_campaign(store, load_campaign(campaign), signer, allowed_hosts=ALLOWED,
                         options=DeliveryOptions(concurrency=8), workers=count, spares=spares)


def test_a_spare_that_died_before_its_share_is_replaced_and_nothing_is_lost(e2e) -> None:
    """Killed while the parent counted (out of memory, kill by hand): before, the hand-over's
    BrokenPipeError ended the send with exit 0 and nothing sent."""
    subs = e2e.subscribe(120)
    e2e.import_subs(subs)
    campaign = e2e.campaign()
    with Spares(2) as spares, Store.open(e2e.db) as store:
        for spare in spares._waiting:
            spare.process.kill()
            spare.process.wait()
        result = _send(e2e, store, campaign, spares, 3)
    assert result.stats.outcomes["sent"] == 120 and not result.interrupted
    assert [len(e2e.emu.messages(s["endpoint"])) for s in subs] == [1] * 120


def test_spares_left_when_a_hand_over_fails_are_killed(
        e2e, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first spare is dead and no fresh child can start: the send stops with one line
    (exit 1) and the second spare, never handed its share, is killed and reaped too."""
    subs = e2e.subscribe(20)
    e2e.import_subs(subs)
    campaign = e2e.campaign()

    def no_fork(*_: Any, **__: Any) -> Any:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(workers, "start_child", no_fork)
    with Spares(2) as spares, Store.open(e2e.db) as store:
        first, second = spares._waiting
        first.process.kill()
        first.process.wait()
        with pytest.raises(PushcliError, match="a sender process could not be started"):
            _send(e2e, store, campaign, spares, 3)
        assert second.process.returncode is not None and not process_exists(second.process.pid)
    assert e2e.emu.stats()["accepted"] == 0
