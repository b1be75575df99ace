"""`pushcli doctor`: the checks a cron job would otherwise discover at 3 a.m.

Each check is independent and returns a Check; one failing check never hides
the others, so the operator sees the whole list at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pushcli.ece import MAX_PLAINTEXT
from pushcli.errors import EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, InputError, PushcliError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: failed on bad input (InputError): for the store, --db names no store (exit 2)
    bad_input: bool = False

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def _run(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except PushcliError as exc:
        return Check(name, False, str(exc), bad_input=isinstance(exc, InputError))
    except OSError as exc:
        return Check(name, False, f"{exc.strerror or exc}")


def exit_code(checks: list[Check]) -> int:
    """0 when every check passed; 2 when the store check failed because ``--db`` names no
    store (a missing file, a bad URL), as for every other command that only reads a
    store; else 1. The whole checklist is printed either way."""
    if all(c.ok for c in checks):
        return EXIT_OK
    if any(c.name == "store" and c.bad_input for c in checks):
        return EXIT_INPUT
    return EXIT_PARTIAL


def check_private_mode(path: Path) -> str:
    """A SQLite store holds every subscriber's auth secret: group or others must not
    read it (nor its -wal/-shm files, which hold recent rows). Raises PushcliError."""
    exposed = []
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = os.stat(p).st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o044:
            exposed.append(f"{p} has mode {mode:04o}")
    if exposed:
        raise PushcliError(f"readable by group or others ({'; '.join(exposed)}); it holds "
                           f"subscribers' auth secrets: run chmod 600 {path}*")
    return f"mode {os.stat(path).st_mode & 0o777:04o}"


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
    from pushcli.keys import load_private_key, vapid_key_path, vapid_subject
    from pushcli.store import SCHEMA_VERSION, Store

    checks: list[Check] = []
    campaign: Campaign | None = None
    if campaign_path is not None:
        def check_campaign() -> str:
            nonlocal campaign
            campaign = load_campaign(campaign_path)
            return f"{campaign_path} is valid (campaign {campaign.name})"
        checks.append(_run("campaign", check_campaign))

    # The same choice of key and subject, and the same rules, as send and --dry-run.
    key = vapid_key_path(campaign, key_path)

    def check_key() -> str:
        load_private_key(key)
        return f"{key} loads and has mode {os.stat(key).st_mode & 0o777:04o}"
    checks.append(_run("private key", check_key))

    def check_subject() -> str:
        if campaign is None and campaign_path is not None and not subject:
            raise PushcliError("not checked: the campaign did not load (see above)")
        return f"{vapid_subject(campaign, subject)} would be accepted by Apple"
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
        mode = ""
        if store.is_sqlite and store.display_url != ":memory:":
            mode = ", " + check_private_mode(Path(store.display_url))
        return f"{store.display_url} opens, schema v{version}, integrity ok{mode}"
    checks.append(_run("store", check_store))

    if store is not None:
        opened: Store = store

        def check_services() -> str:
            from pushcli.audience import count_audience

            count = count_audience(opened, None, allowed_hosts)
            problems = []
            if count.refused:
                reason, n = count.refused.most_common(1)[0]
                problems.append(f"{sum(count.refused.values())} subscriptions would be blocked "
                                f"(e.g. {n}: {reason})")
            if count.malformed:
                problems.append(f"{count.malformed} stored subscriptions are malformed and would "
                                f"be rejected (e.g. {count.malformed_example})")
            if count.duplicates:
                sid, kept = min(count.duplicates.items())
                problems.append(f"{len(count.duplicates)} subscriptions repeat another's endpoint "
                                f"in another spelling and would be rejected (e.g. id {sid} "
                                f"repeats id {kept})")
            if problems:
                raise PushcliError("; ".join(problems))
            services = count.services  # no problems: every subscriber counts at its service
            parts = ", ".join(f"{k} {v:,}" for k, v in services.most_common())
            total = sum(services.values())
            return f"all {total:,} active subscriptions allowed ({parts or 'none'})"
        checks.append(_run("push services", check_services))

        if campaign is not None:
            chosen: Campaign = campaign

            def check_payloads() -> str:
                from pushcli.audience import check_variants

                found = check_variants(opened, chosen, Renderer(chosen))
                if found.unrenderable:
                    raise PushcliError(f"{found.unrenderable} subscribers' payloads do not "
                                       f"render and would be rejected (e.g. {found.example})")
                return f"{found.variants} distinct payloads render and fit {MAX_PLAINTEXT} bytes"
            checks.append(_run("payload size", check_payloads))
        opened.close()
    return checks
