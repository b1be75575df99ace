"""`pushcli doctor`: the checks a cron job would otherwise discover at 3 a.m.

Each check is independent and returns a Check; one failing check never hides
the others, so the operator sees the whole list at once.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pushcli.errors import PushcliError
from pushcli.pushservices import EndpointRefused, check_endpoint


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except PushcliError as exc:
        return Check(name, False, str(exc))
    except OSError as exc:
        return Check(name, False, f"{exc.strerror or exc}")


def run_doctor(
    db: str | None,
    *,
    key_path: Path | None,
    subject: str | None,
    campaign_path: Path | None,
    allowed_hosts: frozenset[str],
) -> list[Check]:
    """Run every check; never raises for a failed check."""
    from pushcli.campaign import Campaign, Renderer, load_campaign
    from pushcli.keys import load_private_key, validate_subject
    from pushcli.store import SCHEMA_VERSION, Store

    checks: list[Check] = []
    campaign: Campaign | None = None
    if campaign_path is not None:
        def check_campaign() -> str:
            nonlocal campaign
            campaign = load_campaign(campaign_path)
            return f"{campaign_path} is valid (campaign {campaign.name})"
        checks.append(_run("campaign", check_campaign))

    key = key_path or (Path(campaign.vapid.private_key) if campaign and
                       campaign.vapid.private_key else Path("vapid_private.pem"))
    subj = subject or (campaign.vapid.subject if campaign else None)

    def check_key() -> str:
        load_private_key(key)
        return f"{key} loads and has mode {os.stat(key).st_mode & 0o777:04o}"
    checks.append(_run("private key", check_key))

    def check_subject() -> str:
        if not subj:
            raise PushcliError("no VAPID subject (vapid.subject, --subject or "
                               "PUSHCLI_VAPID_SUBJECT)")
        validate_subject(subj)
        return f"{subj} would be accepted by Apple"
    checks.append(_run("subject", check_subject))

    store: Store | None = None

    def check_store() -> str:
        nonlocal store
        store = Store.open(db, create=False)
        version = store.schema_version()
        if version != SCHEMA_VERSION:
            raise PushcliError(f"schema version {version}, expected {SCHEMA_VERSION}")
        if not store.integrity_ok():
            raise PushcliError("integrity check failed")
        return f"{store.display_url} opens, schema v{version}, integrity ok"
    checks.append(_run("store", check_store))

    if store is not None:
        opened: Store = store

        def check_services() -> str:
            refused: Counter[str] = Counter()
            services: Counter[str] = Counter()
            for s in opened.iter_subscriptions(status="active"):
                try:
                    services[check_endpoint(s.subscription.endpoint, allowed_hosts).service] += 1
                except EndpointRefused as exc:
                    refused[str(exc)] += 1
            if refused:
                reason, n = refused.most_common(1)[0]
                raise PushcliError(f"{sum(refused.values())} subscriptions would be blocked "
                                   f"(e.g. {n}: {reason})")
            parts = ", ".join(f"{k} {v:,}" for k, v in services.most_common())
            total = sum(services.values())
            return f"all {total:,} active subscriptions allowed ({parts or 'none'})"
        checks.append(_run("push services", check_services))

        if campaign is not None:
            chosen: Campaign = campaign

            def check_payloads() -> str:
                from pushcli.delivery import validate_variants

                n = validate_variants(opened, chosen, Renderer(chosen))
                return f"{n} distinct payloads render and fit 3993 bytes"
            checks.append(_run("payload size", check_payloads))
        opened.close()
    return checks
