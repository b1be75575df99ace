"""Everything rich: the progress display, summary tables, plain tab-separated
output off a terminal, and error lines.

The one place that draws. Library modules return data (report documents,
dry-run results, doctor checks); ``cli.py`` hands them here. Imported by the
CLI only, so no library import pulls rich in.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


# rich is imported on first use, not with this module: it takes ~60 ms, on the way to a
# send's first request, and a `send --json`, `-q` or cron run never draws anything.
@functools.cache
def _err() -> Console:
    """The console for progress, errors and notes (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def _out() -> Console:
    """The console for results (stdout)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def escape(text: str) -> str:
    """``text`` with rich markup characters escaped (rich's ``escape``, imported on use)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _table(*args: Any, **kwargs: Any) -> Table:
    """A rich ``Table`` (imported on use)."""
    from rich.table import Table

    return Table(*args, **kwargs)


def hide_flag_types() -> None:
    """Keep rich help from printing ``<bool>`` after flags such as ``--dry-run``.

    Typer 0.29's rich help shows every option's type, flags included, which
    reads as if ``--dry-run`` wanted a value (``--dry-run true``). A flag takes
    none, so it gets no type column; every other option keeps its own.
    """
    import typer

    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None or getattr(shown, "_pushcli_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich._pushcli_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


def print_error(message: str) -> None:
    """One ``error:`` line on stderr: red on a terminal, plain text in logs and pipes."""
    if _err().is_terminal:
        _err().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def emit_json(doc: Any) -> None:
    """One JSON document on stdout and nothing else there (``--json``)."""
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def render(as_json: bool, doc: Any, draw: Callable[[], object]) -> None:
    """A command's result: with ``--json`` the document alone on stdout, else ``draw()``
    (tables and lines for a person)."""
    if as_json:
        emit_json(doc)
    else:
        draw()


def other_count(outcomes: Mapping[str, int]) -> int:
    """What the short displays call "other": rejected + auth + blocked (+ capped, missed).

    Those end a subscriber's delivery without a push-service verdict on the
    message itself; progress lines and ``campaigns list`` fold them together.
    """
    return sum(outcomes.get(k, 0) for k in ("rejected", "auth", "blocked", "capped", "missed"))


class Progress:
    """A rich bar on a terminal, plain periodic lines otherwise, nothing with -q."""

    def __init__(self, quiet: bool, name: str) -> None:
        self.quiet = quiet
        self.name = name
        self.bar: Any = None
        self.last_line = 0.0
        if not quiet and _err().is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[flight]}"),
                console=_err(), transient=False,
            )
            self.task = self.bar.add_task(name, total=None, counts="", rate="", eta="",
                                          flight="")
            self.bar.start()

    def update(self, stats: Any) -> None:
        if self.quiet:
            return
        o = stats.outcomes
        other = other_count(o)
        counts = (f"sent {o['sent']:,}  expired {o['expired']:,}  failed {o['failed']:,}"
                  + (f"  other {other:,}" if other else ""))
        rate = stats.live_rate()  # the last few seconds, not the average since the start
        eta = stats.eta()
        left = "" if eta is None or stats.done >= stats.total else f"ETA {_duration(eta)}"
        flight = "  ".join(f"{svc} {n:,} in flight"
                           for svc, n in sorted(stats.in_flight.items()) if n)
        if self.bar is not None:
            self.bar.update(self.task, total=stats.total, completed=stats.done, counts=counts,
                            rate=f"{rate:,.0f}/s", eta=left, flight=flight)
            return
        now = time.monotonic()
        if now - self.last_line >= 5 or (stats.total and stats.done >= stats.total):
            self.last_line = now
            extra = "".join(f", {part}" for part in (left, flight) if part)
            print(f"{self.name}: {stats.done:,}/{stats.total:,} {counts} "
                  f"({rate:,.0f}/s{extra})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary_tables(report: dict[str, Any]) -> list[Table]:
    """The human summary: outcomes, then one row per push service."""
    outcomes = _table(title=f"Campaign {report['campaign']} ({report['status']})",
                      title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("count", justify="right")
    for key in ("sent", "expired", "rejected", "auth", "blocked", "failed"):
        outcomes.add_row(key, f"{report.get(key, 0):,}")
    for key, label in (("capped", "capped (frequency cap)"), ("missed", "missed (schedule ended)"),
                       ("holdout", "holdout (control group, not sent)")):
        if report.get(key):
            outcomes.add_row(label, f"{report[key]:,}")
    if report.get("uncertain"):
        outcomes.add_row("uncertain (not resent)", f"{report['uncertain']:,}")
    outcomes.add_row("total", f"{report['total']:,}", style="bold")
    if report.get("pending"):
        outcomes.add_row("pending (re-run to finish)", f"{report['pending']:,}")
    if report.get("waiting"):  # send windows: a later run (cron) sends them when due
        by = ", ".join(f"{k} {v:,}" for k, v in report["waiting_by_reason"].items() if v)
        outcomes.add_row(f"waiting ({by}; next due {_ts(report['next_due_at'])})",
                         f"{report['waiting']:,}")
    if report.get("possible_duplicates"):
        outcomes.add_row("possible duplicates", f"{report['possible_duplicates']:,}")
    run = report.get("run")
    if run:
        outcomes.add_row("duration", f"{run['duration_s']:.1f} s")
        outcomes.add_row("rate", f"{run['rate_per_s']:,.0f} msg/s")
    services = _table(title="By push service", title_justify="left")
    services.add_column("service")
    for key in ("sent", "expired", "rejected", "auth", "blocked", "failed", "total"):
        services.add_column(key, justify="right")
    transport = (run or report.get("last_run") or {}).get("by_service") or {}
    if transport:
        for key in ("p50 ms", "p95 ms", "concurrency", "sender-bound"):
            services.add_column(key, justify="right")
    for service, row in report["by_service"].items():
        cells = [f"{row.get(k, 0):,}" for k in (
            "sent", "expired", "rejected", "auth", "blocked", "failed", "total")]
        if transport:
            t = transport.get(service, {})
            cells += ["" if t.get(k) is None else f"{t[k]:,}" for k in (
                "latency_p50_ms", "latency_p95_ms", "concurrency_reached")]
            bound = t.get("sender_bound_pct")
            cells.append("" if bound is None else f"{bound:.0f} %")
        services.add_row(service, *cells)
    return [outcomes, services, *engagement_tables(report)]


def _rate(figures: Mapping[str, Any]) -> str:
    lo, hi = figures["click_rate_ci95"]
    return f"{figures['click_rate']:.2%} ({lo:.2%}–{hi:.2%})"


def engagement_tables(report: dict[str, Any]) -> list[Table]:
    """The A/B test's variant table (and the winner), or, for a campaign without variants,
    its shown/clicked/closed totals once any event came back; nothing otherwise."""
    variants = report.get("variants") or {}
    if not variants:
        eng = report.get("engagement") or {}
        if not any(eng.get(k) for k in ("shown", "clicked", "closed")):
            return []
        table = _table(title="Engagement", title_justify="left")
        for key in ("sent", "shown", "clicked", "closed", "click rate (95 % interval)"):
            table.add_column(key, justify="right")
        table.add_row(*(f"{eng[k]:,}" for k in ("sent", "shown", "clicked", "closed")),
                      _rate(eng))
        return [table]
    winner = report.get("winner") or {}
    table = _table(title="Variants", title_justify="left",
                   caption=(escape(f"winner: {winner['variant']} ({winner['reason']})")
                            if winner else None), caption_justify="left")
    table.add_column("variant")
    keys = ("sent", "expired", "rejected", "failed", "shown", "clicked", "closed")
    for key in (*keys, "click rate (95 % interval)"):
        table.add_column(key, justify="right")
    for name, figures in variants.items():
        mark = " (winner)" if winner.get("variant") == name else ""
        table.add_row(escape(name) + mark, *(f"{figures[k]:,}" for k in keys), _rate(figures))
    return [table]


def print_summary(report: dict[str, Any]) -> None:
    """Print a campaign report's summary tables on stdout."""
    for table in summary_tables(report):
        _out().print(table)


class RejectionLines:
    """``rejected: file:line: reason`` on stderr for the first 50 rejected records, then
    one line saying there are more (the summary counts them all)."""

    LIMIT = 50

    def __init__(self, describe: Callable[[str, str, str], str]) -> None:
        self._describe = describe
        self.shown = 0

    def describe(self, rejection: Any) -> str:
        return self._describe(rejection.source, rejection.location, rejection.reason)

    def show(self, rejection: Any) -> None:
        self.shown += 1
        if self.shown <= self.LIMIT:
            print(f"rejected: {self.describe(rejection)}", file=sys.stderr)
        elif self.shown == self.LIMIT + 1:
            print("rejected: ... (more; see the summary)", file=sys.stderr)


def print_keys(info: Any, subject: str | None) -> None:
    """What ``keys generate`` wrote, and the applicationServerKey for the browser."""
    from pushcli.defaults import SUBJECT_ENV

    _out().print(f"Wrote {info.private_key} (mode 0600) and {info.public_key}", markup=False)
    _out().print("applicationServerKey (pass it to pushManager.subscribe):")
    _out().print(info.application_server_key, soft_wrap=True)
    if subject:
        _out().print(f"Subject {subject} is valid; set it with {SUBJECT_ENV} or "
                     "vapid.subject in the campaign.")


class SkippedRows:
    """``skipped subscriber ID: problem`` on stderr for each stored row an export cannot
    write (the ``on_skip`` of ``subscriptions.export_file``); ``count`` sets the exit code."""

    def __init__(self) -> None:
        self.count = 0

    def show(self, sid: int, problem: str) -> None:
        self.count += 1
        print(f"skipped subscriber {sid}: {problem}", file=sys.stderr)


def print_import(result: Any, rejected: RejectionLines, *, as_json: bool, quiet: bool) -> None:
    """The ``subscribers import`` summary table (shown with -q too when any record was
    rejected), or with ``--json`` the result and every rejection's line."""
    if as_json:
        emit_json({**result.to_json(), "errors": [rejected.describe(r)
                                                  for r in result.rejections]})
        return
    if quiet and not result.rejected:
        return
    columns = ("read", "added", "updated", "unchanged", "rejected")
    table = _table(title="Import" + ("" if result.committed else " (strict: nothing stored)"),
                   title_justify="left")
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(f"{getattr(result, c):,}" for c in columns))
    _out().print(table)


def _ts(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value)) if value else "-"


def print_campaigns(rows: Iterable[Mapping[str, Any]]) -> None:
    """``campaigns list``: a rich table on a terminal, tab-separated lines otherwise."""
    columns = ("campaign", "status", "started", "finished", "total", "sent", "expired",
               "failed", "other", "pending", "waiting", "next due")
    cells = [[r["campaign"], r["status"], _ts(r["started_at"]), _ts(r["finished_at"]),
              r["total"], r["sent"], r["expired"], r["failed"], other_count(r), r["pending"],
              r.get("waiting", 0), _ts(r.get("next_due_at"))]
             for r in rows]
    if not _out().is_terminal:
        # Cron logs and pipes: whole values, one tab-separated line per campaign; a rich
        # table would be cut to 80 columns there (`campa…`, `2026-…`).
        for line in [list(columns), *cells]:
            print("\t".join(str(c) for c in line))
        return
    table = _table(title="Campaigns", title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in (
            "campaign", "status", "started", "finished", "next due") else "right",
            overflow="fold")
    for c in cells:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in c))
    _out().print(table)


#: On stderr when a send or dry run finds nobody to send to (not an error: exit 0).
EMPTY_AUDIENCE = ("audience is empty: no active subscriber matches this campaign "
                  "(nothing sent; exit 0)")


def print_dry_run(found: Any, quiet: bool, *, as_json: bool = False) -> None:
    """``send --dry-run`` (an ``audience.DryRun``): the audience per service and a sample
    payload on stdout (unless -q; ``--json``: the document instead), then what a send
    would not contact; its ``timing`` says who the schedule makes due then."""
    timing = found.timing
    if as_json:
        emit_json(found.to_json())
    elif not quiet:
        _out().print(f"Campaign [bold]{escape(found.campaign)}[/bold]: valid; "
                     f"{found.audience:,} subscribers, {found.variants} distinct payloads")
        for svc, n in sorted(found.services.items()):
            _out().print(f"  {svc:<30} {n:>10,}")
        if timing:
            by = ", ".join(f"{k} {v:,}" for k, v in timing["waiting_by_reason"].items() if v)
            _out().print(f"At {_ts(timing['at'])}: {timing['due']:,} due, {timing['waiting']:,} "
                         f"waiting{f' ({by})' if by else ''}; next due "
                         f"{_ts(timing['next_due_at'])}"
                         + (f"; {timing['missed']:,} missed (schedule ended)"
                            if timing.get("missed") else ""), markup=False)
        if found.sample:
            _out().print(f"Sample payload ({len(found.sample)} bytes):")
            _out().print_json(found.sample.decode())
    if not found.audience and not quiet:
        print(EMPTY_AUDIENCE, file=sys.stderr)
    for line in found.warnings():
        print(line, file=sys.stderr)


def print_run(report: dict[str, Any], result: Any, *, quiet: bool, as_json: bool) -> None:
    """The end of ``send``: the report (``--json``: the document alone on stdout), a
    note when nobody was in the audience, how to finish an interrupted run, and the
    run's warnings (``SendResult.warnings``: a removed ``winner:``) on stderr."""
    if not report["total"] and not result.stats.total and not quiet:
        print(EMPTY_AUDIENCE, file=sys.stderr)
    if as_json:
        emit_json(report)
    elif not quiet:
        print_summary(report)
        if result.interrupted:
            _err().print("Interrupted: re-run the same command to finish the campaign.")
    if not quiet:
        for line in result.warnings():
            print(line, file=sys.stderr)


def print_prune(result: Any, dry_run: bool, quiet: bool) -> None:
    """``prune``: how many subscribers went (or, with --dry-run, would go); -q: nothing."""
    if not quiet:
        print(f"would delete {len(result.ids)} subscribers" if dry_run
              else f"deleted {result.deleted} subscribers")


def print_checks(checks: Sequence[Any], quiet: bool, *, as_json: bool = False) -> None:
    """Doctor's checks, one line each (only the failed ones with -q), or with ``--json``
    ``{ok, checks}``."""
    if as_json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
        return
    for c in checks:
        if c.ok and quiet:
            continue
        mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
        _out().print(f"{mark} {c.name}: {escape(c.detail)}", soft_wrap=True)


def announce_emulator(url: str) -> None:
    """First stdout line ``listening on URL``: with ``--port 0`` the caller learns the
    port the server bound (no bind-and-release race); the hint goes to stderr."""
    print(f"listening on {url}", flush=True)
    print(f"push-service emulator listening on {url} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)


def announce_collector(url: str) -> None:
    """``events serve``: first stdout line ``listening on URL`` (as ``testing serve``)."""
    print(f"listening on {url}", flush=True)
    print(f"event collector: POST {url}/events (Ctrl-C to stop)", file=sys.stderr, flush=True)


def print_secret_rotated() -> None:
    """``events rotate-secret``: what the rotation means for tokens already sent."""
    print("rotated the token secret: tokens signed with the one it replaced still verify; "
          "tokens from before the previous rotation no longer do (their events are refused)")


def print_collector_stats(stats: Any) -> None:
    """What ``events serve`` did, on stderr once it stopped."""
    print(f"stopped: {stats.accepted} events accepted, {stats.stored} stored, "
          f"{stats.duplicates} already stored, {stats.unknown} about unknown subscribers, "
          f"{stats.refused} requests refused, {stats.connections_refused} connections "
          f"refused (over --max-connections), {stats.timed_out} timed out",
          file=sys.stderr, flush=True)


def print_event_import(result: Any, rejected: RejectionLines, *, as_json: bool,
                       quiet: bool) -> None:
    """``events import``: the counts on one line (-q: only when a line was refused), or
    with ``--json`` the result and every refused line (as ``print_import``)."""
    if as_json:
        emit_json({**result.to_json(), "errors": [rejected.describe(r)
                                                  for r in result.rejections]})
    elif not quiet or result.rejected:
        print(f"events: {result.read} read, {result.added} added, {result.duplicates} "
              f"duplicates, {result.rejected} rejected")


class DemoDisplay:
    """The demo's steps on stderr, with a progress display during each send.

    ``plain`` (stdout carries JSON): steps as plain lines and no progress.
    """

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.bar: Progress | None = None

    def progress(self, stats: Any) -> None:
        if self.bar is None:
            self.bar = Progress(self.plain, "sending")
        self.bar.update(stats)

    def step(self, message: str) -> None:
        self.close()
        if self.plain:
            print(message, file=sys.stderr)
        else:
            _err().print(f"[bold cyan]>[/bold cyan] {escape(message)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> DemoDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def print_demo(result: Any) -> None:
    """The demo's ending: the second campaign's summary, what happened, the files."""
    print_summary(result.second)
    _out().print(f"Sent {result.first['sent']:,} in the first campaign, {result.second['sent']:,} "
                 f"in the second; {result.second['expired']:,} expired and "
                 f"{result.pruned:,} pruned; {result.remaining:,} subscribers remain. "
                 f"({result.seconds:.1f} s)")
    _out().print("Files:")
    for name, path in result.files.items():
        _out().print(f"  {name:<32} {path}", markup=False)
    _out().print(f"Try: pushcli --db {result.files['store']} campaigns list", markup=False)
