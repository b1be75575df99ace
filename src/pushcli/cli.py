"""Typer wiring only: parse options, call one library function, render its
result (rich tables, or one JSON document with --json), map errors to exit codes.

Exit codes (the same for every command):
  0 ok; 1 partial failure (rejected records, failed deliveries, doctor problems);
  2 invalid input or usage; 74 the store could not be written (nothing lost, re-run);
  75 busy (another run holds the lock); 130 interrupted.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from pushcli import __version__
from pushcli.console import Progress, err, out, print_error, print_summary
from pushcli.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, PushcliError
from pushcli.store import DB_ENV, DEFAULT_DB, PRUNE_LOCK, Store, is_campaign_lock, store_error

if TYPE_CHECKING:
    from pushcli.campaign import Campaign

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 partial failure, 2 invalid input, 74 store not writable, "
    "75 busy (locked), 130 interrupted."
)

def _flags_take_no_value() -> None:
    """Keep rich help from printing ``<bool>`` after flags such as ``--dry-run``.

    Typer 0.29's rich help shows every option's type, flags included, which
    reads as if ``--dry-run`` wanted a value (``--dry-run true``). A flag takes
    none, so it gets no type column; every other option keeps its own.
    """
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


_flags_take_no_value()

app = typer.Typer(
    name="pushcli",
    help="Campaign-style Web Push: VAPID keys, subscriber store, encrypted delivery, reports.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(help="Generate and inspect VAPID keys.", no_args_is_help=True)
subs_app = typer.Typer(help="Import, count and export subscribers.", no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaign history.", no_args_is_help=True)
testing_app = typer.Typer(help="The loopback push-service emulator.", no_args_is_help=True)
web_app = typer.Typer(help="The browser side: service worker and subscribe page.",
                      no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(subs_app, name="subscribers")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(testing_app, name="testing")
app.add_typer(web_app, name="web")



class OnUncertain(enum.StrEnum):
    """``send --on-uncertain``: what to do with subscribers an earlier run left in flight."""

    resend = "resend"
    skip = "skip"


class _State:
    db: str | None = None


state = _State()


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn library exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PushcliError as exc:
            fail(str(exc), exc.exit_code)
        except DBAPIError as exc:  # a database call past the store boundary: same one line
            error = store_error(exc, None)
            fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise typer.Exit(EXIT_OK) from None

    return wrapper  # type: ignore[return-value]


def emit_json(doc: Any) -> None:
    """One JSON document on stdout and nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def open_store(create: bool = True) -> Store:
    return Store.open(state.db, create=create)


def _version(value: bool) -> None:
    if value:
        print(f"pushcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: Annotated[str | None, typer.Option(
        "--db", envvar=DB_ENV, show_envvar=True,
        help=f"Store: a SQLite path or a SQLAlchemy URL "
        f"(default: {DEFAULT_DB} in the working directory).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    state.db = db


# --- keys ----------------------------------------------------------------------------------


@keys_app.command("generate")
@handle_errors
def keys_generate(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the key files.")] = Path(
        "."),
    subject: Annotated[str | None, typer.Option(
        help="VAPID contact, mailto:you@example.com or an https URL (checked as Apple would).")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing private key (orphans every subscription!).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a P-256 VAPID key pair: vapid_private.pem (0600) and vapid_public.pem."""
    from pushcli.keys import generate_keys

    info = generate_keys(directory, subject=subject, force=force)
    if as_json:
        emit_json(info.to_json())
        return
    out.print(f"Wrote {info.private_key} (mode 0600) and {info.public_key}", markup=False)
    out.print("applicationServerKey (pass it to pushManager.subscribe):")
    out.print(info.application_server_key, soft_wrap=True)
    if subject:
        out.print(f"Subject {subject} is valid; set it with PUSHCLI_VAPID_SUBJECT or "
                  "vapid.subject in the campaign.")


@keys_app.command("show")
@handle_errors
def keys_show(
    key: Annotated[Path, typer.Option("--key", envvar="PUSHCLI_VAPID_PRIVATE_KEY",
                                      help="Private key file.")] = Path("vapid_private.pem"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the applicationServerKey of an existing private key."""
    from pushcli.keys import show_key

    info = show_key(key)
    if as_json:
        emit_json({"private_key": str(key),
                   "application_server_key": info.application_server_key})
    else:
        print(info.application_server_key)


# --- subscribers ---------------------------------------------------------------------------


@subs_app.command("import")
@handle_errors
def subscribers_import(
    files: Annotated[list[str], typer.Argument(help="Files to import; - for standard input.")],
    fmt: Annotated[str | None, typer.Option(
        "--format", help="json | ndjson | csv (default: from the extension).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Add this tag to every imported subscriber (repeatable).")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also accept endpoints at this host (repeatable).")] = None,
    strict: Annotated[bool, typer.Option(
        help="Import nothing if any record is invalid.")] = False,
    delimiter: Annotated[str | None, typer.Option(
        "--delimiter", help="CSV separator (default: ',' ';' or tab, detected from the "
        "header); 'tab' for a tab.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")
                     ] = False,
) -> None:
    """Import subscriptions (PushSubscription.toJSON() objects) and upsert them by endpoint.

    Invalid records are reported with their line or index and skipped; exit 1
    if any was rejected. With --strict nothing is stored unless all are valid.
    """
    from pushcli.pushservices import allowed_hosts_from_env
    from pushcli.subscriptions import csv_delimiter, detect_format, open_source, parse_stream

    allowed = allowed_hosts_from_env(allow_host or ())
    formats = [(name, detect_format(name, fmt)) for name in files]
    if delimiter is not None:
        delimiter = csv_delimiter(delimiter)
    for name, _ in formats:
        # Open (and close) every file before importing any, so a typo in the third name
        # does not leave the first two imported.
        if name != "-":
            open_source(name).close()

    def records() -> Any:
        for name, f in formats:
            stream = open_source(name)
            try:
                source = "<stdin>" if name == "-" else name
                for rec in parse_stream(stream, f, source=source, allowed_hosts=allowed,
                                        extra_tags=tag or (), delimiter=delimiter):
                    yield source, rec
            finally:
                if name != "-":
                    stream.close()

    shown = 0

    def on_reject(msg: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= 50:
            print(f"rejected: {msg}", file=sys.stderr)
        elif shown == 51:
            print("rejected: ... (more; see the summary)", file=sys.stderr)

    with open_store() as store:
        result = store.import_subscriptions(records(), strict=strict, on_reject=on_reject)
    if as_json:
        emit_json(result.to_json())
    elif not quiet or result.rejected:
        from rich.table import Table

        table = Table(title="Import" + ("" if result.committed else
                                        " (strict: nothing stored)"), title_justify="left")
        for col in ("read", "added", "updated", "unchanged", "rejected"):
            table.add_column(col, justify="right")
        table.add_row(*(f"{getattr(result, c):,}" for c in (
            "read", "added", "updated", "unchanged", "rejected")))
        out.print(table)
    if result.rejected:
        raise typer.Exit(EXIT_PARTIAL)


@subs_app.command("count")
@handle_errors
def subscribers_count(
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Any of these tags.")] = None,
    status: Annotated[str, typer.Option(help="active | expired | all")] = "active",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count subscribers (active ones by default)."""
    with open_store(create=False) as store:
        n = store.count(status=status, tags=tag or ())
    if as_json:
        emit_json({"count": n, "status": status, "tags": tag or []})
    else:
        print(n)


@subs_app.command("export")
@handle_errors
def subscribers_export(
    fmt: Annotated[str, typer.Option("--format", help="json | ndjson | csv")] = "ndjson",
    status: Annotated[str, typer.Option(help="active | expired | all")] = "active",
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write to this file (0600) instead of standard output.")] = None,
) -> None:
    """Export subscribers in the import format (round-trips with import)."""
    from pushcli.errors import InputError
    from pushcli.files import private_file
    from pushcli.subscriptions import detect_format, write_csv, write_json

    f = detect_format("-", fmt)
    skipped = 0

    def usable(rows: Any) -> Any:
        """The subscriptions to export; a malformed row (written into the table
        directly) is skipped with one line on stderr, and export exits 1."""
        nonlocal skipped
        for s in rows:
            if s.problem is None:
                yield s.subscription
                continue
            skipped += 1
            print(f"skipped subscriber {s.id}: {s.problem}", file=sys.stderr)

    with open_store(create=False) as store:
        subs = usable(store.iter_subscriptions(status=status))

        def write(fh: Any) -> int:
            return write_csv(subs, fh) if f == "csv" else write_json(subs, fh, ndjson=f == "ndjson")

        if output is None:
            n = write(sys.stdout)
        else:
            try:
                with private_file(output) as fh:  # 0600, exclusive temp file, atomic
                    n = write(fh)
            except OSError as exc:
                raise InputError(f"cannot write: {exc.strerror or exc}", file=str(output)
                                 ) from None
    if output is not None:
        print(f"exported {n} subscribers to {output}", file=sys.stderr)
    if skipped:
        raise typer.Exit(EXIT_PARTIAL)


# --- send ----------------------------------------------------------------------------------


@app.command("send")
@handle_errors
def send(
    campaign_file: Annotated[Path, typer.Argument(help="Campaign YAML file.")],
    key: Annotated[Path | None, typer.Option(
        "--key", envvar="PUSHCLI_VAPID_PRIVATE_KEY", show_envvar=True,
        help="VAPID private key (overrides vapid.private_key).")] = None,
    subject: Annotated[str | None, typer.Option(
        envvar="PUSHCLI_VAPID_SUBJECT", show_envvar=True,
        help="VAPID subject (overrides vapid.subject).")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also send to this host (repeatable; PUSHCLI_ALLOW_HOSTS).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, count, render and size-check; send nothing.")] = False,
    limit: Annotated[int | None, typer.Option(help="Send to at most N subscribers.")] = None,
    to: Annotated[str | None, typer.Option(help="Send only to this endpoint.")] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Also retry subscribers whose last attempt failed.")] = False,
    on_uncertain: Annotated[OnUncertain | None, typer.Option(
        "--on-uncertain", help="Subscribers an earlier run left in flight (may have the "
        "message): resend (counted as possible_duplicates) or skip (recorded uncertain). "
        "Overrides delivery.on_uncertain.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Requests in flight (overrides delivery.concurrency).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
    workers: Annotated[int | None, typer.Option(
        help="Sender processes (default: 1 below 20,000 pending, else one per core, max 4).")
    ] = None,
    lease: Annotated[float, typer.Option(
        help="PostgreSQL shared sends: seconds a claimed batch stays reserved; a dead "
        "sender's work returns to the others after it.")] = 60.0,
    report: Annotated[list[Path] | None, typer.Option(
        "--report", help="Write the report to FILE.json and/or FILE.csv (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")
                       ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress, no summary.")
                     ] = False,
) -> None:
    """Send a campaign to every pending subscriber in its audience.

    Re-running the same campaign sends only to subscribers without a final
    outcome (resume after a crash or Ctrl-C). Exit 0 when everyone ended sent
    or expired, 1 when any failed/rejected/blocked/auth, 2 for invalid input,
    75 when another run of this campaign holds its lock (SQLite; on PostgreSQL
    several senders share the campaign), 130 on Ctrl-C.
    """
    from pushcli.campaign import Renderer, load_campaign
    from pushcli.delivery import DeliveryOptions, count_by_service, send_campaign
    from pushcli.keys import resolve_vapid
    from pushcli.pushservices import KNOWN_SERVICES, allowed_hosts_from_env, topic_problem
    from pushcli.report import build_report, exit_code_for, write_report_files

    if limit is not None and limit < 1:
        fail("--limit must be at least 1")
    if concurrency is not None and not 1 <= concurrency <= 1000:
        fail("--concurrency must be between 1 and 1000")
    if timeout <= 0:
        fail("--timeout must be positive")
    if workers is not None and not 1 <= workers <= 64:
        fail("--workers must be between 1 and 64")
    if not 1 <= lease <= 3600:
        fail("--lease must be between 1 and 3600 seconds")
    campaign = load_campaign(campaign_file)
    allowed = allowed_hosts_from_env(allow_host or ())
    # From here to the fork, --dry-run and send refuse the same things in the same order.
    signer = resolve_vapid(campaign, key, subject)
    with open_store() as store:
        if to is not None and store.find_by_endpoint(to) is None:
            # The endpoint itself is never printed: its path is a bearer token.
            fail("--to: no subscriber with this endpoint in the store (import it first)")
        if dry_run:
            renderer = Renderer(campaign)
            from pushcli.delivery import validate_variants

            variants = validate_variants(store, campaign, renderer, to=to)
            services = count_by_service(store, campaign, allowed, limit=limit, to=to,
                                        renderer=renderer)
            _refuse_topic(campaign, services)
            try:  # a subscriber without attributes; templates with defaults still render
                sample: bytes | None = renderer.render(None, {})
            except PushcliError:
                sample = None
            doc = {"campaign": campaign.name, "audience": sum(services.values()),
                   "by_service": dict(services), "variants": variants,
                   "sample_payload": json.loads(sample) if sample else None,
                   "sample_payload_bytes": len(sample) if sample else None}
            if as_json:
                emit_json(doc)
            elif not quiet:
                out.print(f"Campaign [bold]{escape(campaign.name)}[/bold]: valid; "
                          f"{doc['audience']:,} subscribers, {variants} distinct payloads")
                for svc, n in sorted(services.items()):
                    out.print(f"  {svc:<30} {n:>10,}")
                if sample:
                    out.print(f"Sample payload ({len(sample)} bytes):")
                    out.print_json(sample.decode())
            if not doc["audience"] and not quiet:
                print(_EMPTY_AUDIENCE, file=sys.stderr)
            blocked = services.get("blocked", 0)
            rejected = services.get("rejected", 0)
            if rejected:  # malformed rows, duplicate endpoints, attributes that do not render
                print(f"{rejected:,} of {doc['audience']:,} subscribers would be rejected "
                      "without being contacted (see: pushcli doctor)", file=sys.stderr)
            if blocked:  # a send would record them `blocked` and exit 1: so does the dry run
                print(f"{blocked:,} of {doc['audience']:,} subscribers would be blocked by the "
                      "endpoint policy (see: pushcli doctor; --allow-host)", file=sys.stderr)
            if blocked or rejected:
                raise typer.Exit(EXIT_PARTIAL)
            return
        if campaign.delivery.topic and any(
                topic_problem(svc, campaign.delivery.topic) for svc in KNOWN_SERVICES):
            _refuse_topic(campaign, count_by_service(store, campaign, allowed, limit=limit,
                                                     to=to))
        options = DeliveryOptions(
            ttl=campaign.delivery.ttl, urgency=campaign.delivery.urgency,
            topic=campaign.delivery.topic,
            concurrency=concurrency or campaign.delivery.concurrency,
            rate_limit=campaign.delivery.rate_limit, timeout=timeout,
            on_uncertain=(on_uncertain.value if on_uncertain is not None
                          else campaign.delivery.on_uncertain),
        )
        progress = Progress(quiet, campaign.name)
        try:
            result = send_campaign(store, campaign, signer, allowed_hosts=allowed,
                                   options=options, retry_failed=retry_failed, limit=limit,
                                   to=to, workers=workers, lease=lease,
                                   on_progress=progress.update, handle_signals=True)
        finally:
            progress.close()
        stats = result.stats
        run = {"duration_s": round(result.duration, 3),
               "rate_per_s": round(stats.done / result.duration, 1) if result.duration else 0,
               "attempted": stats.done, "retries": stats.retries,
               "vapid_signatures": stats.signatures, "interrupted": result.interrupted}
        doc = build_report(store, campaign.name, run=run)
        if report:
            write_report_files(store, doc, report)
    if not doc["total"] and not stats.total and not quiet:
        print(_EMPTY_AUDIENCE, file=sys.stderr)
    if as_json:
        emit_json(doc)
    elif not quiet:
        print_summary(doc)
        if result.interrupted:
            err.print("Interrupted: re-run the same command to finish the campaign.")
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(exit_code_for(doc))


_EMPTY_AUDIENCE = ("audience is empty: no active subscriber matches this campaign "
                   "(nothing sent; exit 0)")


def _refuse_topic(campaign: Campaign, services: Mapping[str, int]) -> None:
    """Refuse a ``delivery.topic`` that a push service in the audience rejects outright.

    ``services`` counts the audience per push service; one Apple subscriber is
    enough, since Apple would reject the topic for every one of them.
    """
    from pushcli.campaign import field_line
    from pushcli.errors import InputError
    from pushcli.pushservices import topic_problem

    for svc, n in sorted(services.items()):
        problem = topic_problem(svc, campaign.delivery.topic) if n else None
        if problem:
            raise InputError(f"{problem} ({n:,} subscribers at {svc} in the audience)",
                             file=campaign.source, line=field_line(campaign, "delivery.topic"),
                             field="delivery.topic")


# --- reports and history -------------------------------------------------------------------


@app.command("report")
@handle_errors
def report_cmd(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    report: Annotated[list[Path] | None, typer.Option(
        "--report", help="Also write FILE.json and/or FILE.csv.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Re-print a campaign's report from the ledger."""
    from pushcli.report import build_report, write_report_files

    with open_store(create=False) as store:
        doc = build_report(store, name)
        if report:
            write_report_files(store, doc, report)
    if as_json:
        emit_json(doc)
    else:
        print_summary(doc)


@campaigns_app.command("list")
@handle_errors
def campaigns_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Campaigns in this store: started, finished, counts by outcome."""
    from pushcli.report import build_report

    with open_store(create=False) as store:
        docs = [build_report(store, c.name) for c in store.list_campaigns()]
    rows = [{k: d[k] for k in ("campaign", "status", "runs", "started_at", "finished_at",
                                "total", "sent", "expired", "rejected", "auth", "blocked",
                                "failed", "pending")} for d in docs]
    if as_json:
        emit_json(rows)
        return
    columns = ("campaign", "status", "started", "finished", "total", "sent", "expired",
               "failed", "other", "pending")
    cells = [[r["campaign"], r["status"], _ts(r["started_at"]), _ts(r["finished_at"]),
              r["total"], r["sent"], r["expired"], r["failed"],
              r["rejected"] + r["auth"] + r["blocked"], r["pending"]] for r in rows]
    if not out.is_terminal:
        # Cron logs and pipes: whole values, one tab-separated line per campaign; a rich
        # table would be cut to 80 columns there (`campa…`, `2026-…`).
        for line in [list(columns), *cells]:
            print("\t".join(str(c) for c in line))
        return
    from rich.table import Table

    table = Table(title="Campaigns", title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in (
            "campaign", "status", "started", "finished") else "right",
                         overflow="fold")
    for c in cells:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in c))
    out.print(table)


def _ts(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value)) if value else "-"


@app.command("prune")
@handle_errors
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")
                       ] = False,
    failed_campaigns: Annotated[int | None, typer.Option(
        help="Also prune subscribers whose last N campaigns each ended with an answer about "
             "that subscriber (see README).")
    ] = None,
    wait: Annotated[float, typer.Option(
        help="Seconds to wait for running sends before giving up (exit 75).")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")
                     ] = False,
) -> None:
    """Delete subscribers marked expired (404/410), never for 401/403 or blocked.

    Waits up to --wait seconds while a send is running, then exits 75.
    """
    prune_wait = wait
    if failed_campaigns is not None and failed_campaigns < 1:
        fail("--failed-campaigns must be at least 1")
    with open_store(create=False) as store:
        if dry_run:  # reads only: no lock, so it never waits for (or blocks) a send
            ids = store.prunable(failed_campaigns=failed_campaigns)
            deleted = 0
        else:
            lock = store.acquire_lock(PRUNE_LOCK, wait=prune_wait, blocked_by=is_campaign_lock)
            try:
                candidates = store.prune_candidates(failed_campaigns=failed_campaigns)
                ids = [c.id for c in candidates]
                deleted = store.delete_subscriptions(candidates)
            finally:
                lock.release()
    if as_json:
        emit_json({"dry_run": dry_run, "count": len(ids), "deleted": deleted,
                   "ids": ids if dry_run else None})
    elif not quiet:
        print(f"would delete {len(ids)} subscribers" if dry_run
              else f"deleted {deleted} subscribers")


# --- web and testing -----------------------------------------------------------------------


@web_app.command("init")
@handle_errors
def web_init(
    directory: Annotated[Path, typer.Argument(help="Folder to write sw.js, subscribe.js, "
                                                   "index.html into.")],
    key: Annotated[Path, typer.Option("--key", envvar="PUSHCLI_VAPID_PRIVATE_KEY",
                                      help="VAPID private key.")] = Path("vapid_private.pem"),
    subscribe_url: Annotated[str | None, typer.Option(
        help="Where subscribe.js POSTs subscriptions (omit to show the JSON for copy).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a ready-to-serve service worker, subscribe script and example page."""
    from pushcli.keys import show_key
    from pushcli.web import init_site

    paths = init_site(directory, show_key(key).application_server_key,
                      subscribe_url=subscribe_url, force=force)
    for p in paths:
        print(f"wrote {p}")


def _announce_emulator(url: str) -> None:
    """First stdout line ``listening on URL``: with ``--port 0`` the caller learns the
    port the server bound (no bind-and-release race); the hint goes to stderr."""
    print(f"listening on {url}", flush=True)
    print(f"push-service emulator listening on {url} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)


@testing_app.command("serve")
@handle_errors
def testing_serve(
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8090,
) -> None:
    """Run the push-service emulator on loopback until Ctrl-C (JSON API in README)."""
    from pushcli.errors import InputError
    from pushcli.testing import check_loopback, serve_forever

    try:
        check_loopback(host)  # its control API is unauthenticated: never beyond this machine
    except ValueError as exc:
        raise InputError(f"--host: {exc}") from None
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port number (0-65535; 0 = any free port)")
    try:
        serve_forever(host=host, port=port, on_ready=_announce_emulator)
    except OSError as exc:  # the port is taken, or the address is not on this machine
        raise PushcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@app.command("doctor")
@handle_errors
def doctor(
    campaign_file: Annotated[Path | None, typer.Argument(help="Also check this campaign.")
                             ] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", envvar="PUSHCLI_VAPID_PRIVATE_KEY", help="VAPID private key.")] = None,
    subject: Annotated[str | None, typer.Option(envvar="PUSHCLI_VAPID_SUBJECT",
                                                help="VAPID subject.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also allow this host (repeatable; PUSHCLI_ALLOW_HOSTS).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only problems.")] = False,
) -> None:
    """Check the store, key, subject, push services and (given) a campaign; exit 1 on problems."""
    from pushcli.doctor import run_doctor
    from pushcli.pushservices import allowed_hosts_from_env

    checks = run_doctor(state.db, key_path=key, subject=subject, campaign_path=campaign_file,
                        allowed_hosts=allowed_hosts_from_env(allow_host or ()))
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            if c.ok and quiet:
                continue
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {c.name}: {escape(c.detail)}", soft_wrap=True)
    if not ok:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("demo")
@handle_errors
def demo(
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where to put the demo's files (default: a new temporary folder).")
    ] = None,
    subscribers: Annotated[int, typer.Option(help="How many emulated browsers.")] = 3000,
    expire_share: Annotated[float, typer.Option(
        help="Share of subscriptions the push service expires before the second send.")
    ] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the whole flow offline: keys, emulator, import, two sends, expiry, prune."""
    import tempfile

    from pushcli.demo import run_demo

    if not 1 <= subscribers <= 1_000_000:
        fail("--subscribers must be between 1 and 1,000,000")
    if not 0 <= expire_share <= 1:
        fail("--expire-share must be between 0 and 1")
    folder = directory or Path(tempfile.mkdtemp(prefix="pushcli-demo-"))
    if (folder / "vapid_private.pem").exists():
        fail(f"{folder}: already holds a demo (vapid_private.pem); choose another --dir")
    say = (lambda msg: print(msg, file=sys.stderr)) if as_json else (
        lambda msg: err.print(f"[bold cyan]>[/bold cyan] {escape(msg)}"))
    progress: Progress | None = None

    def on_progress(stats: Any) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(as_json, "sending")
        progress.update(stats)

    def step(msg: str) -> None:
        nonlocal progress
        if progress is not None:
            progress.close()
            progress = None
        say(msg)

    result = run_demo(folder, subscribers=subscribers, expire_share=expire_share,
                      on_step=step, on_progress=on_progress)
    if progress is not None:
        progress.close()
    doc = {"directory": str(result.directory), "subscribers": result.subscribers,
           "expired_at_push_service": result.expired_at_service,
           "first_campaign": result.first, "second_campaign": result.second,
           "pruned": result.pruned, "remaining": result.remaining,
           "seconds": round(result.seconds, 2), "files": result.files}
    if as_json:
        emit_json(doc)
        return
    print_summary(result.second)
    out.print(f"Sent {result.first['sent']:,} in the first campaign, {result.second['sent']:,} "
              f"in the second; {result.second['expired']:,} expired and "
              f"{result.pruned:,} pruned; {result.remaining:,} subscribers remain. "
              f"({result.seconds:.1f} s)")
    out.print("Files:")
    for name, path in result.files.items():
        out.print(f"  {name:<32} {path}", markup=False)
    out.print(f"Try: pushcli --db {result.files['store']} campaigns list", markup=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    # Outside a command's handle_errors (option callbacks, typer's own
    # plumbing): still one line and the documented code, never a traceback
    # that could quote an endpoint or an auth secret.
    except PushcliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except DBAPIError as exc:
        error = store_error(exc, None)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


__all__ = ["app", "main"]
