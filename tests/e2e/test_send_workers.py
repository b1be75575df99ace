"""Several sender processes on one SQLite store: the id ranges the parent deals
(``workers.Dealer``) reach every pending subscriber of the audience exactly once,
however sparse the audience and however much of it an earlier run already sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pushcli.campaign import load_campaign
from pushcli.delivery import send_campaign
from pushcli.keys import VapidSigner, load_private_key
from pushcli.messages import DeliveryOptions
from pushcli.store import Store

ALLOWED = frozenset({"127.0.0.1"})


def _send(e2e: Any, campaign: Path, **kw: Any) -> Any:
    signer = VapidSigner(load_private_key(e2e.dir / "vapid_private.pem"),
                         "mailto:ops@shop.example.com")
    with Store.open(e2e.db) as store:
        return send_campaign(store, load_campaign(campaign), signer, allowed_hosts=ALLOWED,
                             options=DeliveryOptions(concurrency=8), **kw)


def test_three_senders_reach_a_sparse_half_sent_audience_once_each(e2e) -> None:
    subs = [dict(s, tags=["news"] if i % 3 == 0 else ["other"])
            for i, s in enumerate(e2e.subscribe(900))]
    e2e.add_subscribers(subs)
    campaign = e2e.campaign(extra="audience:\n  tags: [news]\n")
    first = _send(e2e, campaign, limit=120)  # an earlier run sent the first 120 of 300
    assert first.stats.outcomes["sent"] == 120
    rest = _send(e2e, campaign, workers=3)
    assert rest.stats.outcomes["sent"] == 180 and not rest.interrupted
    got = [len(e2e.emu.messages(s["endpoint"])) for s in subs]
    assert [n for i, n in enumerate(got) if i % 3 == 0] == [1] * 300
    assert not any(n for i, n in enumerate(got) if i % 3 != 0)


def test_subscribers_imported_during_a_multi_process_send_are_sent_too(
        e2e, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last dealt range has no upper end: what a one-process scan would still see.
    The dealer is given the id span as it was before 5 more subscribers came in."""
    subs = e2e.subscribe(60)
    e2e.add_subscribers(subs)
    with Store.open(e2e.db) as store:
        span = store.id_span()
    later = e2e.subscribe(5)
    e2e.add_subscribers(later)
    monkeypatch.setattr(Store, "id_span", lambda self: span)  # read before they came
    result = _send(e2e, e2e.campaign(), workers=2)
    assert result.stats.outcomes["sent"] == 65
    assert [len(e2e.emu.messages(s["endpoint"])) for s in subs + later] == [1] * 65
