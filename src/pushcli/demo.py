"""`pushcli demo`: the whole product in one command, offline.

Generates keys, starts the push-service emulator on loopback, subscribes a few
thousand emulated browsers, imports them, sends a campaign, expires a share of
them at the "push service", sends a second campaign that finds them expired,
prunes them and returns what happened. Every step is the same library call
the real commands make; only the push service is the emulator.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushcli.campaign import load_campaign
from pushcli.defaults import PRIVATE_KEY_NAME
from pushcli.delivery import Stats, options_for, send_campaign
from pushcli.errors import InputError
from pushcli.files import private_file
from pushcli.keys import VapidSigner, generate_keys, load_private_key
from pushcli.prune import prune
from pushcli.report import build_report
from pushcli.store import Store
from pushcli.subscriptions import read_files

DEMO_SUBJECT = "mailto:demo@pushcli.example.com"

_CAMPAIGN = """\
name: {name}
notification:
  title: "{title}"
  body: "{body}"
  url: https://shop.example.com/{slug}
  icon: https://shop.example.com/icon.png
  tag: {slug}
locales:
  fr:
    title: "{title_fr}"
delivery:
  ttl: 3600
  urgency: normal
  topic: {slug}
vapid:
  private_key: vapid_private.pem
  subject: {subject}
"""


@dataclass
class DemoResult:
    directory: Path
    subscribers: int
    expired_at_service: int
    first: dict[str, Any]
    second: dict[str, Any]
    pruned: int
    remaining: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "subscribers": self.subscribers,
                "expired_at_push_service": self.expired_at_service,
                "first_campaign": self.first, "second_campaign": self.second,
                "pruned": self.pruned, "remaining": self.remaining,
                "seconds": round(self.seconds, 2), "files": self.files}


def run_demo(
    directory: str | os.PathLike[str] | None,
    *,
    subscribers: int = 3000,
    expire_share: float = 0.1,
    on_step: Callable[[str], None] = lambda _msg: None,
    on_progress: Callable[[Stats], None] | None = None,
) -> DemoResult:
    """Run the demo in ``directory`` (default: a new temporary folder), which must not
    hold a previous demo's key. Bad arguments raise InputError before anything runs."""
    if not 1 <= subscribers <= 1_000_000:
        raise InputError("--subscribers must be between 1 and 1,000,000")
    if not 0 <= expire_share <= 1:
        raise InputError("--expire-share must be between 0 and 1")
    folder = Path(directory or tempfile.mkdtemp(prefix="pushcli-demo-"))
    if (folder / PRIVATE_KEY_NAME).exists():
        raise InputError(f"{folder}: already holds a demo ({PRIVATE_KEY_NAME}); "
                         "choose another --dir")
    from pushcli.testing import PushServiceEmulator

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    keys = generate_keys(folder, subject=DEMO_SUBJECT)
    on_step(f"Generated VAPID keys in {folder} (applicationServerKey "
            f"{keys.application_server_key[:16]}...)")
    with PushServiceEmulator(port=0, seed=7) as emu:
        allowed = frozenset({"127.0.0.1"})
        on_step(f"Push-service emulator listening on {emu.url}")
        subs = emu.create_subscriptions(subscribers, keys.application_server_key)
        for i, sub in enumerate(subs):
            sub["tags"] = ["news"] + (["vip"] if i % 10 == 0 else [])
            sub["locale"] = "fr-FR" if i % 4 == 0 else "en-US"
        subs_file = folder / "subscriptions.ndjson"
        with private_file(subs_file) as fh:  # 0600: auth secrets
            for sub in subs:
                fh.write(json.dumps(sub) + "\n")
        on_step(f"{subscribers:,} emulated browsers subscribed; written to {subs_file.name}")
        db = folder / "pushcli.db"
        with Store.open(db) as store:
            imported = store.import_subscriptions(read_files([str(subs_file)],
                                                             allowed_hosts=allowed))
            on_step(f"Imported: {imported.added:,} added, {imported.rejected} rejected")
            signer = VapidSigner(load_private_key(keys.private_key), DEMO_SUBJECT)

            def send(name: str, title: str, title_fr: str, body: str, slug: str) -> dict:
                path = folder / f"{name}.yml"
                path.write_text(_CAMPAIGN.format(name=name, title=title, title_fr=title_fr,
                                                 body=body, slug=slug, subject=DEMO_SUBJECT))
                campaign = load_campaign(path)
                result = send_campaign(store, campaign, signer, allowed_hosts=allowed,
                                       options=options_for(campaign, concurrency=64),
                                       on_progress=on_progress)
                return build_report(store, name, run=result.run_summary())

            on_step("Sending campaign demo-welcome ...")
            first = send("demo-welcome", "Welcome aboard", "Bienvenue", "Thanks for subscribing",
                         "welcome")
            expire_n = int(subscribers * expire_share)
            for sub in subs[:expire_n]:
                emu.expire(sub["endpoint"])
            on_step(f"The push service now answers 410 Gone for {expire_n:,} subscriptions "
                    "(users who unsubscribed)")
            on_step("Sending campaign demo-sale ...")
            second = send("demo-sale", "Spring sale starts now", "Les soldes commencent",
                          "Up to 30% off until Sunday", "sale")
            pruned = prune(store).deleted
            on_step(f"Pruned {pruned:,} expired subscriptions")
            remaining = store.count(status="all")
            received = emu.stats()["accepted"]
    return DemoResult(
        directory=folder, subscribers=subscribers, expired_at_service=expire_n,
        first=first, second=second, pruned=pruned, remaining=remaining,
        seconds=time.monotonic() - started,
        files={"store": str(db), "private_key": str(keys.private_key),
               "public_key": str(keys.public_key), "subscriptions": str(subs_file),
               "campaigns": str(folder / "demo-welcome.yml") + ", "
               + str(folder / "demo-sale.yml"),
               "messages_received_by_emulator": str(received)},
    )
