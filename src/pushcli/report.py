"""Campaign reports from the ledger: the JSON document and the per-subscriber CSV
(``console.summary_tables`` draws them). Reads only the ledger, so a report prints the same
after a prune as before it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pushcli import htmlreport
from pushcli.abtest import wilson_interval
from pushcli.due import service_of
from pushcli.errors import InputError
from pushcli.files import neutralize_cell, private_file
from pushcli.messages import VariantResult
from pushcli.pushservices import Outcome, allowed_hosts_from_env
from pushcli.schedule import WAITING_REASONS
from pushcli.store import Store, StoredSubscription

OUTCOME_KEYS = tuple(o.value for o in Outcome)


def build_report(store: Store, name: str, *, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report of a campaign: totals, per-outcome and per-service counts.

    ``run`` adds figures of the run that just ended (duration, rate, retries).
    """
    info = store.get_campaign(name)
    if info is None:
        raise InputError(f"no campaign named {name!r} in this store "
                         "(see: pushcli campaigns list)")
    counts = store.outcome_counts(info.id)
    ambiguous = counts.pop("_ambiguous", {})
    by_service: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(OUTCOME_KEYS, 0)
    for service, outcomes in sorted(counts.items()):
        row = dict.fromkeys(OUTCOME_KEYS, 0)
        for outcome, n in outcomes.items():
            row[outcome] = row.get(outcome, 0) + n
            totals[outcome] = totals.get(outcome, 0) + n
        row["total"] = sum(row.values())
        by_service[service] = row
    totals.setdefault("holdout", 0)  # the A/B control group: recorded, never sent
    status = info.status
    if status == "running" and not store.running_senders(info.name):
        status = "interrupted"  # its sender died (kill -9, power loss): re-run to finish
    report: dict[str, Any] = {
        "campaign": info.name,
        "status": status,
        "runs": info.runs,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "total": sum(totals.values()),
        **totals,
        # What a re-run would still send; 0 unless the campaign stopped before the end.
        "pending": (pending_count(store, info.id, info.spec)
                    if status in ("interrupted", "running", "waiting") else 0),
        # send windows (schedule): who waits for a later run, as the last run left them
        **waiting_fields(info.last_run if status == "waiting" else None),
        # Messages sent again although an earlier request may have arrived: a timeout
        # after the body went out, or in flight when an earlier run stopped (intent log).
        # Every duplicate the push services saw is among them.
        "possible_duplicates": sum(ambiguous.values()),
        "retried_after_ambiguous": sum(ambiguous.values()),  # the older name, kept
        "by_service": by_service,
        **engagement_fields(store, info.id, info.spec),
        # one entry per run, oldest first (the newest MAX_RUN_HISTORY): the send-window
        # chart's due, sent, waiting, capped and missed over time
        "run_history": store.run_history(info.id),
    }
    if run:
        report["run"] = run
    elif info.last_run:
        # the figures of the campaign's last run: per-service latency and concurrency reached
        report["last_run"] = info.last_run
    return report


def engagement_fields(store: Store, campaign_id: int,
                      spec: dict[str, Any] | None) -> dict[str, Any]:
    """What came back from the browsers: ``engagement`` (the whole campaign, every
    variant together), ``variants`` (per variant, in the campaign file's order; ``{}``
    for a campaign without ``variants:``) and ``winner`` once ``winner:`` decided.

    Every figure counts subscribers; ``click_rate`` = clicked / sent with its 95 % Wilson
    interval (``abtest.wilson_interval``). A variant nobody was sent yet shows zeros and
    the interval [0, 1] (nothing known).
    """
    results = store.variant_results(campaign_id, include_unassigned=True)
    named = [str(v.get("name")) for v in (spec or {}).get("variants") or ()
             if isinstance(v, dict) and v.get("name")]
    named += [n for n in results if n and n not in named]
    fields: dict[str, Any] = {
        "engagement": _result_fields(_combined(results.values()), outcomes=False),
        "variants": {n: _result_fields(results.get(n) or VariantResult(n)) for n in named},
    }
    winner = store.get_winner(campaign_id)
    if winner is not None:
        fields["winner"] = winner
    return fields


def _combined(results: Iterable[VariantResult]) -> VariantResult:
    """Several variants' counts added up (the campaign as a whole)."""
    sums = dict.fromkeys(("sent", "expired", "rejected", "failed", "shown", "clicked",
                          "closed"), 0)
    for r in results:
        for k in sums:
            sums[k] += getattr(r, k)
    return VariantResult("", **sums)


def _result_fields(r: VariantResult, *, outcomes: bool = True) -> dict[str, Any]:
    lo, hi = wilson_interval(r.clicked, r.sent)
    keys = ("sent", "expired", "rejected", "failed") if outcomes else ("sent",)
    return {**{k: getattr(r, k) for k in (*keys, "shown", "clicked", "closed")},
            "click_rate": round(r.click_rate, 6),
            "click_rate_ci95": [round(lo, 6), round(hi, 6)]}


def waiting_fields(last_run: dict[str, Any] | None) -> dict[str, Any]:
    """``waiting``, ``waiting_by_reason`` and ``next_due_at`` (Unix time) of a scheduled
    campaign's last run (``due.waiting_summary``); zeros when nobody waits."""
    sched = (last_run or {}).get("schedule") or {}
    return {"waiting": sched.get("waiting", 0),
            "waiting_by_reason": sched.get("waiting_by_reason") or dict.fromkeys(
                WAITING_REASONS, 0),
            "next_due_at": sched.get("next_due_at")}


#: The fields of each campaign in ``campaigns list``.
CAMPAIGN_ROW_KEYS = ("campaign", "status", "runs", "started_at", "finished_at", "total", "sent",
                     "expired", "rejected", "auth", "blocked", "failed", "capped", "missed",
                     "pending", "waiting", "next_due_at")


def campaign_rows(store: Store) -> list[dict[str, Any]]:
    """One row per campaign in the store (``campaigns list``), from its report, with
    ``clicked`` and ``click_rate`` of its ``engagement`` (the report already counts them;
    ``click_rate`` is null while no event came back: untracked is not "nobody clicked")."""
    return [{**{k: doc[k] for k in CAMPAIGN_ROW_KEYS}, "clicked": eng["clicked"],
             "click_rate": eng["click_rate"] if any(
                 eng[k] for k in ("shown", "clicked", "closed")) else None}
            for doc in (build_report(store, c.name) for c in store.list_campaigns())
            for eng in (doc["engagement"],)]


def _stored_audience(spec: dict[str, Any] | None
                     ) -> Callable[[StoredSubscription], bool] | None:
    """Who is in the audience of the spec stored at the campaign's last run (None:
    everyone, so callers can count in SQL)."""
    from pushcli.campaign import Audience

    audience: Audience | None = None
    if spec and spec.get("audience"):
        try:
            audience = Audience.model_validate_json(json.dumps(spec["audience"]))
        except ValueError:  # a spec from an older pushcli: the whole store
            audience = None
    if audience is None or not (audience.tags or audience.exclude_tags or audience.where):
        return None
    aud = audience
    return lambda s: aud.matches(s.subscription.tags, s.subscription.attributes)


def pending_count(store: Store, campaign_id: int, spec: dict[str, Any] | None) -> int:
    """Active subscribers in the campaign's audience with no outcome yet in its ledger.

    The audience comes from the spec stored at the campaign's last run, so the
    count is the one a re-run (without --retry-failed) would start from.
    """
    match = _stored_audience(spec)
    if match is None:
        return store.count_pending(campaign_id)
    return sum(len(batch) for batch in store.pending(campaign_id, batch_size=5000,
                                                     match=match))


def exit_code_for(report: dict[str, Any]) -> int:
    """0 when everyone ended sent or expired; 1 if anyone failed, was rejected, blocked or auth."""
    bad = sum(report.get(k, 0) for k in ("failed", "rejected", "blocked", "auth"))
    return 1 if bad else 0


def build_and_write(store: Store, name: str, paths: Iterable[str | os.PathLike[str]], *,
                    html: str | os.PathLike[str] | None = None,
                    run: dict[str, Any] | None = None) -> dict[str, Any]:
    """``name``'s report, with its ``--report`` files and ``--html`` page written from that
    one document: ``send`` (``run``: this run's summary) and ``report`` show the same."""
    doc = build_report(store, name, run=run)
    write_report_files(store, doc, paths)
    if html is not None:  # any name: --html says what it is, unlike --report's suffix
        htmlreport.write_html(html, htmlreport.render_campaign(store, doc))
    return doc


def write_report_files(store: Store, report: dict[str, Any],
                       paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Write ``--report`` files: ``.json`` gets the report, ``.csv`` one row per subscriber,
    ``.html`` the results page rendered from the same report (``htmlreport``)."""
    written: list[Path] = []
    for raw in paths:
        path = Path(raw)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv", ".html"):
            raise InputError("report file must end in .json, .csv or .html", file=str(path))
        if suffix == ".html":
            written.append(htmlreport.write_html(path, htmlreport.render_campaign(store, report)))
            continue
        try:
            with private_file(path) as fh:  # 0600: it holds endpoints
                if suffix == ".json":
                    json.dump(report, fh, indent=2, sort_keys=False)
                    fh.write("\n")
                else:
                    info = store.get_campaign(report["campaign"])
                    assert info is not None
                    write_csv_rows(store, info.id, fh, waiting_in=(
                        info.spec or {} if report["status"] == "waiting" else None))
        except OSError as exc:
            raise InputError(f"cannot write report: {exc.strerror}", file=str(path)) from None
        written.append(path)
    return written


def write_csv_rows(store: Store, campaign_id: int, out: IO[str], *,
                   waiting_in: dict[str, Any] | None = None) -> int:
    """One row per subscriber with an outcome; with ``waiting_in`` (the stored spec of a
    campaign whose status is ``waiting``) also one ``waiting`` row per audience member
    still without one. Both are streamed in keyset-paged batches (never the whole
    audience in memory); returns how many rows were written."""
    # \r\n makes the csv module quote any cell holding a bare \r, which a spreadsheet
    # would otherwise read as a new row starting with the rest (a formula).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["subscription_id", "endpoint", "service", "outcome", "http_status",
                     "reason", "attempts", "possible_duplicates"])
    n = 0
    for row in store.delivery_rows(campaign_id):
        writer.writerow([neutralize_cell(v) for v in (
            row["subscription_id"], row["endpoint"] or "", row["service"], row["outcome"],
            row["status_code"] if row["status_code"] is not None else "",
            row["reason"] or "", row["attempts"], row["ambiguous"],
        )])
        n += 1
    if waiting_in is not None:
        schedule = waiting_in.get("schedule") or {}
        default_zone = schedule.get("timezone") or "UTC"
        allowed = allowed_hosts_from_env()
        for batch in store.pending(campaign_id, batch_size=2000,
                                   match=_stored_audience(waiting_in)):
            for s in batch:
                sub = s.subscription
                # a schedule waits per time zone; without one, only for an A/B winner
                why = (f"time zone {sub.timezone or default_zone}" if schedule
                       else "the A/B test's winner")
                writer.writerow([neutralize_cell(v) for v in (
                    s.id, sub.endpoint, service_of(sub.endpoint, allowed),
                    "waiting", "", f"waiting for {why}", 0, 0)])
                n += 1
    return n
