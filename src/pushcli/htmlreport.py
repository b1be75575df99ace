"""A campaign's results page: one self-contained HTML file (``report NAME --html FILE``,
``send --report FILE.html``) for people who decide the next campaign rather than read JSON.

The page is rendered from the document ``report --json`` prints (``report.build_report``),
so its outcome numbers are that document's; the timeline and the failure reasons come from
two bounded GROUP BY queries (``store.charts``), never a row per subscriber, so a
1,000,000-subscriber campaign's page stays a few hundred kilobytes.

Self-contained means it works as an e-mail attachment or CI artifact: inline CSS and
hand-drawn inline SVG only, no script, no font, image or stylesheet fetched from anywhere.
Light and dark mode follow ``prefers-color-scheme``; ``@media print`` prints it plainly.
Every chart carries alt text (``<title>`` + ``aria-labelledby``) and its numbers in a table.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pushcli.errors import InputError
from pushcli.files import private_file
from pushcli.pushservices import Outcome
from pushcli.schedule import WAITING_REASONS
from pushcli.store import Store, Timeline

#: Outcomes shown on every page, then any other outcome the document holds (nonzero).
CORE_OUTCOMES = ("sent", "expired", "rejected", "auth", "blocked", "failed")
ALL_OUTCOMES = tuple(o.value for o in Outcome)
TOP_REASONS = 10

_CSS = """
:root{--bg:#fff;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--panel:#f6f8fa;
--sent:#1a7f37;--expired:#9a6700;--rejected:#cf222e;--auth:#8250df;--blocked:#bc4c00;
--failed:#a40e26;--uncertain:#6e7781;--capped:#0969da;--missed:#4d2d00;--other:#57606a;
--holdout:#8c959f;--click:#0550ae;--due:#1b7c83;--waiting:#bf8700}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#8d96a0;
--line:#30363d;--panel:#161b22;--sent:#3fb950;--expired:#d29922;--rejected:#f85149;
--auth:#a371f7;--blocked:#db6d28;--failed:#ff7b72;--uncertain:#8b949e;--capped:#58a6ff;
--missed:#e3b341;--other:#8b949e;--holdout:#6e7681;--click:#79c0ff;--due:#39c5cf;
--waiting:#f0b72f}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:60rem;padding:1.5rem;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;
border-bottom:1px solid var(--line);padding-bottom:.25rem}
.muted{color:var(--muted)}
dl.head{display:grid;grid-template-columns:repeat(auto-fill,minmax(11rem,1fr));gap:.5rem;
margin:1rem 0}
dl.head div{background:var(--panel);border:1px solid var(--line);border-radius:6px;
padding:.5rem .75rem}
dt{color:var(--muted);font-size:.8rem}dd{margin:0;font-weight:600;font-variant-numeric:
tabular-nums}
table{border-collapse:collapse;margin:.5rem 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:.2rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}.reason{text-align:left;max-width:28rem;
overflow-wrap:anywhere}
.scroll{max-height:18rem;overflow:auto;border:1px solid var(--line);border-radius:6px}
svg{display:block;width:100%;height:auto;margin:.5rem 0}
svg text{fill:var(--fg);font-size:12px}svg .axis{stroke:var(--line)}
.o-sent{fill:var(--sent)}.o-expired{fill:var(--expired)}.o-rejected{fill:var(--rejected)}
.o-auth{fill:var(--auth)}.o-blocked{fill:var(--blocked)}.o-failed{fill:var(--failed)}
.o-uncertain{fill:var(--uncertain)}.o-capped{fill:var(--capped)}.o-missed{fill:var(--missed)}
.o-other{fill:var(--other)}.o-holdout{fill:var(--holdout)}.o-click{fill:var(--click)}
svg .ci{stroke:var(--fg);stroke-width:1.5}
svg polyline[class]{fill:none;stroke-width:2}
.s-due{stroke:var(--due);fill:var(--due)}.s-sent{stroke:var(--sent);fill:var(--sent)}
.s-waiting{stroke:var(--waiting);fill:var(--waiting)}
.s-capped{stroke:var(--capped);fill:var(--capped)}.s-missed{stroke:var(--missed);fill:var(--missed)}
.k-due{background:var(--due)}.k-waiting{background:var(--waiting)}
.key{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border-radius:2px}
.k-sent{background:var(--sent)}.k-expired{background:var(--expired)}
.k-rejected{background:var(--rejected)}.k-auth{background:var(--auth)}
.k-blocked{background:var(--blocked)}.k-failed{background:var(--failed)}
.k-uncertain{background:var(--uncertain)}.k-capped{background:var(--capped)}
.k-missed{background:var(--missed)}.k-other{background:var(--other)}
.k-holdout{background:var(--holdout)}
@media print{body{max-width:none;padding:0;font-size:11pt}.scroll{max-height:none;
overflow:visible;border:0}h2{break-after:avoid}svg,table{break-inside:avoid}}
"""


def e(value: Any) -> str:
    """HTML-escape anything the document holds (campaign names and reasons are input)."""
    return html.escape(str(value), quote=True)


def num(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def when(ts: float | None) -> str:
    """A Unix time as UTC text: the page must read the same wherever it is opened."""
    if ts is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def shown_outcomes(doc: dict[str, Any]) -> list[str]:
    """The core outcomes, then any other outcome the document counts (capped, missed...)."""
    extra = [o for o in ALL_OUTCOMES if o not in CORE_OUTCOMES and doc.get(o)]
    return [*CORE_OUTCOMES, *extra]


def css_class(outcome: str) -> str:
    return outcome if outcome in ALL_OUTCOMES else "other"


# --- charts ------------------------------------------------------------------------------


def _svg(ident: str, title: str, width: int, height: int, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="{ident}">'
            f'<title id="{ident}">{e(title)}</title>{"".join(body)}</svg>')


def hbars(ident: str, title: str, items: Sequence[tuple[str, int, str]]) -> str:
    """Horizontal bars, one per (label, value, outcome class)."""
    width, label_w, row = 720, 190, 24
    top = max((v for _, v, _ in items), default=0) or 1
    body: list[str] = []
    for i, (label, value, cls) in enumerate(items):
        y = i * row
        w = round((width - label_w - 90) * value / top, 1)
        body.append(f'<text x="0" y="{y + 16}">{e(label[:30])}</text>'
                    f'<rect class="o-{css_class(cls)}" x="{label_w}" y="{y + 4}" '
                    f'width="{w}" height="{row - 8}"/>'
                    f'<text x="{label_w + w + 6}" y="{y + 16}">{num(value)}</text>')
    return _svg(ident, title, width, max(row, row * len(items)), body)


def stacked_rows(ident: str, title: str, rows: Sequence[tuple[str, dict[str, int]]],
                 outcomes: Sequence[str]) -> str:
    """One 100 % bar per row (push service), split by outcome."""
    width, label_w, row = 720, 190, 26
    body: list[str] = []
    for i, (label, counts) in enumerate(rows):
        total = sum(counts.get(o, 0) for o in outcomes) or 1
        y, x = i * row, float(label_w)
        body.append(f'<text x="0" y="{y + 17}">{e(label[:30])}</text>')
        for o in outcomes:
            n = counts.get(o, 0)
            if n:
                w = round((width - label_w) * n / total, 1)
                body.append(f'<rect class="o-{css_class(o)}" x="{round(x, 1)}" y="{y + 4}" '
                            f'width="{w}" height="{row - 8}"/>')
                x += w
    return _svg(ident, title, width, max(row, row * len(rows)), body)


def timeline_chart(ident: str, title: str, timeline: Timeline,
                   outcomes: Sequence[str]) -> str:
    """Stacked columns of outcomes per bucket; empty buckets (pauses) stay empty."""
    width, height, left, bottom = 720, 220, 48, 22
    n = len(timeline.counts)
    top = max((sum(c.values()) for c in timeline.counts), default=0) or 1
    plot_w, plot_h = width - left - 4, height - bottom - 6
    step = plot_w / max(n, 1)
    body = [f'<line class="axis" x1="{left}" y1="{plot_h + 6}" x2="{width}" '
            f'y2="{plot_h + 6}"/>',
            f'<text x="0" y="14">{num(top)}</text>',
            f'<text x="0" y="{plot_h + 6}">0</text>']
    for i, counts in enumerate(timeline.counts):
        y = float(plot_h + 6)
        for o in outcomes:
            c = counts.get(o, 0)
            if c:
                h = plot_h * c / top
                y -= h
                body.append(f'<rect class="o-{css_class(o)}" x="{round(left + i * step, 1)}" '
                            f'y="{round(y, 1)}" width="{round(max(step - 0.5, 0.5), 1)}" '
                            f'height="{round(h, 1)}"/>')
    for i in sorted({0, n // 2, n - 1}) if n else ():
        t = time.strftime("%H:%M", time.gmtime(timeline.start + i * timeline.width_s))
        anchor = "end" if i == n - 1 and n > 1 else "start"
        body.append(f'<text x="{round(left + (i + (1 if anchor == "end" else 0)) * step, 1)}" '
                    f'y="{height - 4}" text-anchor="{anchor}">{t}</text>')
    return _svg(ident, title, width, height, body)


def rate_bars(ident: str, title: str, items: Sequence[tuple[str, float, float, float]]) -> str:
    """One bar per (label, rate, low, high) with its interval drawn as a whisker; the scale
    runs to the highest upper bound, so every interval fits."""
    width, label_w, row = 720, 190, 24
    span = width - label_w - 190  # room for "12.34% (12.34%–12.34%)" right of the whisker
    top = max((hi for *_, hi in items), default=0.0) or 1.0
    body: list[str] = []
    for i, (label, rate, lo, hi) in enumerate(items):
        y = i * row
        x0, x1 = (round(label_w + span * v / top, 1) for v in (lo, hi))
        body.append(f'<text x="0" y="{y + 16}">{e(label[:30])}</text>'
                    f'<rect class="o-click" x="{label_w}" y="{y + 4}" '
                    f'width="{round(span * rate / top, 1)}" height="{row - 8}"/>'
                    f'<line class="ci" x1="{x0}" y1="{y + 12}" x2="{x1}" y2="{y + 12}"/>'
                    f'<line class="ci" x1="{x0}" y1="{y + 7}" x2="{x0}" y2="{y + 17}"/>'
                    f'<line class="ci" x1="{x1}" y1="{y + 7}" x2="{x1}" y2="{y + 17}"/>'
                    f'<text x="{x1 + 6}" y="{y + 16}">{rate:.2%} ({lo:.2%}–{hi:.2%})</text>')
    return _svg(ident, title, width, max(row, row * len(items)), body)


def run_lines(ident: str, title: str, runs: Sequence[dict[str, Any]],
              series: Sequence[str]) -> str:
    """One line per series (``due``, ``waiting``...) over the runs, placed at each run's
    moment (``at``): cron runs hours apart stay hours apart. A dot marks each run while
    there are few enough to tell apart."""
    width, height, left, bottom = 720, 220, 48, 22
    plot_w, plot_h = width - left - 10, height - bottom - 6
    first, last = runs[0]["at"], runs[-1]["at"]
    span = (last - first) or 1.0
    top = max((int(r[k]) for r in runs for k in series), default=0) or 1
    xs = [left + 5 + (plot_w * (r["at"] - first) / span if last > first
                      else plot_w * i / max(len(runs) - 1, 1)) for i, r in enumerate(runs)]
    body = [f'<line class="axis" x1="{left}" y1="{plot_h + 6}" x2="{width}" '
            f'y2="{plot_h + 6}"/>',
            f'<text x="0" y="14">{num(top)}</text>',
            f'<text x="0" y="{plot_h + 6}">0</text>']
    for k in series:
        pts = [(round(x, 1), round(plot_h + 6 - plot_h * int(r[k]) / top, 1))
               for x, r in zip(xs, runs, strict=True)]
        body.append(f'<polyline class="s-{k}" points="'
                    + " ".join(f"{x},{y}" for x, y in pts) + '"/>')
        if len(runs) <= 60:
            body += [f'<circle class="s-{k}" cx="{x}" cy="{y}" r="3"/>' for x, y in pts]
    ends = [(0, "start"), (len(runs) - 1, "end")] if len(runs) > 1 else [(0, "start")]
    for i, anchor in ends:
        body.append(f'<text x="{round(xs[i], 1)}" y="{height - 4}" text-anchor="{anchor}">'
                    f'{when(runs[i]["at"])[:16]}</text>')
    return _svg(ident, title, width, height, body)


def table(ident: str, head: Sequence[str], rows: Sequence[Sequence[Any]], *,
          key_col: bool = False, reason_col: int | None = None) -> str:
    """A table of a chart's numbers; ``key_col`` puts a colour key before the first cell."""
    out = [f'<table id="{ident}"><thead><tr>',
           *(f'<th{" class=reason" if j == reason_col else ""}>{e(h)}</th>'
             for j, h in enumerate(head)), "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>")
        for j, cell in enumerate(r):
            text = num(cell) if isinstance(cell, int | float) else e(cell)
            if j == 0 and key_col:
                text = f'<span class="key k-{css_class(str(cell))}"></span>{text}'
            cls = ' class="reason"' if j == reason_col else ""
            out.append(f"<td{cls}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# --- the page ----------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<meta name=\"color-scheme\" content=\"light dark\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def render(doc: dict[str, Any], timeline: Timeline, reasons: Sequence[dict[str, Any]],
           *, generated_at: float | None = None) -> str:
    """The page for one report document (``report.build_report``) and its aggregates."""
    outcomes = shown_outcomes(doc)
    run = doc.get("run") or doc.get("last_run") or {}
    duration = run.get("duration_s")
    if duration is None and doc.get("started_at") and doc.get("finished_at"):
        duration = round(doc["finished_at"] - doc["started_at"], 3)
    head = [("status", doc["status"]), ("runs", num(doc["runs"])),
            ("started", when(doc.get("started_at"))), ("finished", when(doc.get("finished_at"))),
            ("audience", num(doc["total"] + doc.get("pending", 0))),
            ("final outcomes", num(doc["total"])), ("pending", num(doc.get("pending", 0))),
            ("duration", "–" if duration is None else f"{duration:,.1f} s"),
            ("rate", f"{run['rate_per_s']:,.1f}/s" if "rate_per_s" in run else "–")]
    if "retries" in run:
        head.append(("retries", num(run["retries"])))
    body = [f"<h1>Campaign {e(doc['campaign'])}</h1>",
            f'<p class="muted">pushcli results page, generated {when(generated_at)}; '
            "the numbers are those of <code>pushcli report --json</code>.</p>",
            '<dl class="head">',
            *(f'<div><dt>{e(k)}</dt><dd data-field="{e(k)}">{e(v)}</dd></div>'
              for k, v in head), "</dl>"]

    # outcomes overall
    items = [(o, int(doc.get(o, 0)), o) for o in outcomes]
    items.append(("possible duplicates", int(doc.get("possible_duplicates", 0)), "other"))
    total = doc["total"] or 1
    summary = ", ".join(f"{o} {num(v)}" for o, v, _ in items)
    body += ["<h2>Outcomes</h2>", hbars("outcomes-t", f"Outcomes: {summary}", items),
             table("outcomes", ["outcome", "subscribers", "share"],
                   [(o, v, f"{100 * v / total:.1f} %") for o, v, _ in items], key_col=True)]

    # per push service
    services = sorted(doc.get("by_service", {}).items())
    if services:
        body += ["<h2>By push service</h2>",
                 stacked_rows("services-t", "Outcome shares per push service: " + "; ".join(
                     f"{s}: " + ", ".join(f"{o} {num(r.get(o, 0))}" for o in outcomes
                                          if r.get(o)) for s, r in services),
                     services, outcomes),
                 table("services", ["push service", *outcomes, "total"],
                       [(s, *(int(r.get(o, 0)) for o in outcomes), int(r.get("total", 0)))
                        for s, r in services])]

    # timeline
    body.append("<h2>Timeline</h2>")
    if timeline.counts:
        unit = ("minute" if timeline.width_s == 60
                else f"{timeline.width_s // 60} minutes")
        used = [o for o in ALL_OUTCOMES if any(c.get(o) for c in timeline.counts)]
        body += [f'<p class="muted">Outcomes recorded per {unit} (UTC); gaps are pauses '
                 "(Retry-After, send windows, between runs).</p>",
                 timeline_chart("timeline-t", f"Messages per {unit} by outcome from "
                                f"{when(timeline.start)}, {len(timeline.counts)} intervals, "
                                f"peak {num(max(sum(c.values()) for c in timeline.counts))}",
                                timeline, used),
                 " ".join(f'<span class="key k-{css_class(o)}"></span>{e(o)}' for o in used),
                 '<div class="scroll">',
                 table("timeline", ["time (UTC)", *used, "total"],
                       [(when(timeline.start + i * timeline.width_s)[:16],
                         *(c.get(o, 0) for o in used), sum(c.values()))
                        for i, c in enumerate(timeline.counts)]),
                 "</div>"]
    else:
        body.append('<p class="muted">No outcomes recorded yet.</p>')

    # failure reasons
    body.append("<h2>Top failure reasons</h2>")
    if reasons:
        body += [hbars("reasons-t", "Commonest reasons not sent: " + "; ".join(
                     f"{r['outcome']} {r['status_code'] or ''} {r['reason'][:40]}: "
                     f"{num(r['subscribers'])}" for r in reasons),
                     [(f"{r['status_code'] or '–'} {r['reason'] or r['outcome']}",
                       r["subscribers"], r["outcome"]) for r in reasons]),
                 table("reasons", ["outcome", "status", "reason", "subscribers"],
                       [(r["outcome"], "–" if r["status_code"] is None else str(r["status_code"]),
                         r["reason"], r["subscribers"]) for r in reasons],
                       key_col=True, reason_col=2)]
    else:
        body.append('<p class="muted">Nobody failed.</p>')

    body += engagement_section(doc)

    body += schedule_section(doc)
    return _page(f"pushcli: {doc['campaign']}", body)


#: The send-window chart's lines, in the order of its legend and table.
RUN_SERIES = ("due", "sent", "waiting", "capped", "missed")


def schedule_section(doc: dict[str, Any]) -> list[str]:
    """Send windows: who waits now (by reason), capped and missed, and, from
    ``run_history``, due, sent, waiting, capped and missed at each run of a campaign with a
    schedule (or frequency cap)."""
    by_reason = doc.get("waiting_by_reason") or {}
    runs = doc.get("run_history") or []
    over_time = any(r.get("scheduled") for r in runs)
    now = bool(doc.get("waiting") or doc.get("capped") or doc.get("missed")
               or any(by_reason.values()))
    if not (now or over_time):
        return []
    out = ["<h2>Send windows</h2>"]
    if now:
        sched = [(f"waiting: {r}", int(by_reason.get(r, 0)), "capped")
                 for r in (*WAITING_REASONS, *(k for k in by_reason if k not in WAITING_REASONS))]
        sched += [("capped", int(doc.get("capped", 0)), "capped"),
                  ("missed", int(doc.get("missed", 0)), "missed")]
        out += [f'<p>waiting <b>{num(int(doc.get("waiting", 0)))}</b>; next due '
                f'{when(doc.get("next_due_at"))}</p>',
                hbars("schedule-t", "Send windows: " + ", ".join(
                    f"{k} {num(v)}" for k, v, _ in sched), sched),
                table("schedule", ["state", "subscribers"], [(k, v) for k, v, _ in sched])]
    if over_time:
        peak = {k: max(int(r[k]) for r in runs) for k in RUN_SERIES}
        out += [f'<p class="muted">Each run (cron) of the campaign, {len(runs)} shown: who was '
                "due and sent, who still waited after it, and whom it capped or closed as "
                "missed.</p>",
                run_lines("runs-t", f"Send windows over {len(runs)} runs from "
                          f"{when(runs[0]['at'])} to {when(runs[-1]['at'])}; peaks: "
                          + ", ".join(f"{k} {num(v)}" for k, v in peak.items()),
                          runs, RUN_SERIES),
                " ".join(f'<span class="key k-{k}"></span>{e(k)}' for k in RUN_SERIES),
                '<div class="scroll">',
                table("runs", ["run", "time (UTC)", "status", *RUN_SERIES],
                      [(str(r["run"]), when(r["at"])[:16], r["status"],
                        *(int(r[k]) for k in RUN_SERIES)) for r in runs]),
                "</div>"]
    return out


#: Variants drawn on the page: ``variants:`` allows 8, this bounds the page whatever the ledger.
MAX_VARIANTS_SHOWN = 50


def _ci(figures: dict[str, Any]) -> str:
    lo, hi = figures["click_rate_ci95"]
    return f"{figures['click_rate']:.2%} ({lo:.2%}–{hi:.2%})"


def engagement_section(doc: dict[str, Any]) -> list[str]:
    """Click rate per variant with its 95 % interval, the holdout and the winner's reason;
    for a campaign without variants, its shown/clicked/closed totals once any came back."""
    variants = list((doc.get("variants") or {}).items())[:MAX_VARIANTS_SHOWN]
    if not variants:
        eng = doc.get("engagement") or {}
        if not any(eng.get(k) for k in ("shown", "clicked", "closed")):
            return []
        return ["<h2>Engagement</h2>",
                table("engagement", ["sent", "shown", "clicked", "closed",
                                     "click rate (95 % interval)"],
                      [(*(int(eng[k]) for k in ("sent", "shown", "clicked", "closed")),
                        _ci(eng))])]
    keys = ("sent", "expired", "rejected", "failed", "shown", "clicked", "closed")
    winner = doc.get("winner")
    out = ["<h2>Variants</h2>",
           '<p class="muted">Click rate = subscribers who clicked / subscribers sent, with its '
           "95 % Wilson interval (the whisker).</p>",
           # a variant sent to nobody yet has the interval [0, 1]: left out of the chart,
           # where it would squash every other bar (the table lists it)
           rate_bars("variants-t", "Click rate per variant with 95 % interval: " + "; ".join(
               f"{n} {_ci(f)}" for n, f in variants if f["sent"]),
               [(n, f["click_rate"], *f["click_rate_ci95"]) for n, f in variants if f["sent"]]),
           table("variants", ["variant", *keys, "click rate (95 % interval)"],
                 [(n, *(int(f[k]) for k in keys), _ci(f)) for n, f in variants])]
    if doc.get("holdout"):
        out.append(f'<p id="holdout">Holdout (the control group, sent nothing): '
                   f'<b>{num(int(doc["holdout"]))}</b> subscribers.</p>')
    if winner:
        out.append(f'<p id="winner">Winner: <b>{e(winner["variant"])}</b>, decided '
                   f'{when(winner.get("decided_at"))}: {e(winner.get("reason", ""))}</p>')
    return out


def render_campaign(store: Store, doc: dict[str, Any], *, now: float | None = None) -> str:
    """Query the bounded aggregates for ``doc``'s campaign and render its page."""
    info = store.get_campaign(doc["campaign"])
    if info is None:
        raise InputError(f"no campaign named {doc['campaign']!r} in this store")
    return render(doc, store.outcome_timeline(info.id),
                  store.failure_reasons(info.id, limit=TOP_REASONS),
                  generated_at=time.time() if now is None else now)


def render_campaigns(rows: Sequence[dict[str, Any]], *, generated_at: float | None = None) -> str:
    """``campaigns list --html``: recent campaigns side by side (``report.campaign_rows``),
    so a growing expired share or a falling click rate is visible at a glance."""
    stamp = time.time() if generated_at is None else generated_at
    body = ["<h1>Campaigns</h1>", f'<p class="muted">pushcli, generated {when(stamp)}.</p>']
    if rows:
        shares = [(r["campaign"], round(100 * r["expired"] / r["total"], 1) if r["total"] else 0.0)
                  for r in rows]
        # a campaign no event came back from has no click rate (null), not 0 %
        clicks = [(r["campaign"], 100 * r["click_rate"]) for r in rows
                  if r.get("click_rate") is not None]
        body += ["<h2>Sent</h2>",
                 hbars("sent-t", "Sent per campaign: " + ", ".join(
                     f"{r['campaign']} {num(r['sent'])}" for r in rows),
                     [(r["campaign"], int(r["sent"]), "sent") for r in rows]),
                 "<h2>Expired share</h2>",
                 _share_bars("expired-t", "Expired share", "expired", shares, 1),
                 "<h2>Click rate</h2>",
                 # scaled to the best campaign: rates of a few percent stay comparable
                 _share_bars("clicks-t", "Click rate (clicked / sent)", "click", clicks, 2,
                             full=max(p for _, p in clicks) or 1.0)
                 if clicks else '<p class="muted">No notification events yet.</p>',
                 table("campaigns", ["campaign", "status", "runs", "started", "total", "sent",
                                     "expired", "expired share", "failed", "clicked",
                                     "click rate"],
                       [(r["campaign"], r["status"], int(r["runs"]), when(r["started_at"]),
                         int(r["total"]), int(r["sent"]), int(r["expired"]), f"{s:.1f} %",
                         int(r["failed"]), int(r.get("clicked") or 0),
                         "–" if r.get("click_rate") is None else f"{r['click_rate']:.2%}")
                        for r, (_, s) in zip(rows, shares, strict=True)])]
    else:
        body.append('<p class="muted">No campaigns yet.</p>')
    return _page("pushcli: campaigns", body)


def _share_bars(ident: str, what: str, cls: str, shares: Sequence[tuple[str, float]],
                digits: int, *, full: float = 100.0) -> str:
    """One bar per (campaign, percent); a bar of ``full`` percent spans the chart."""
    width, label_w, row = 720, 190, 24
    body: list[str] = []
    for i, (label, pct) in enumerate(shares):
        y, w = i * row, round((width - label_w - 70) * pct / full, 1)
        body.append(f'<text x="0" y="{y + 16}">{e(label[:30])}</text>'
                    f'<rect class="o-{cls}" x="{label_w}" y="{y + 4}" width="{w}" '
                    f'height="{row - 8}"/><text x="{label_w + w + 6}" y="{y + 16}">'
                    f"{pct:.{digits}f} %</text>")
    return _svg(ident, f"{what} per campaign: " + ", ".join(
        f"{c} {s:.{digits}f} %" for c, s in shares), width, max(row, row * len(shares)), body)


def write_html(path: str | os.PathLike[str], page: str) -> Path:
    """Write a page 0600 (it names the campaign and failure reasons) atomically."""
    target = Path(path)
    try:
        with private_file(target) as fh:
            fh.write(page)
    except OSError as exc:
        raise InputError(f"cannot write report: {exc.strerror}", file=str(target)) from None
    return target
