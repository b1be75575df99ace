"""Typer wiring only: parse options, call one library function, render its
result (``console``, or one JSON document with --json), map errors to exit codes.

Exit codes (the same for every command):
  0 ok; 1 partial failure (rejected records, failed deliveries, doctor problems);
  2 invalid input or usage; 74 the store could not be written (nothing lost, re-run);
  75 busy (another run holds the lock); 130 interrupted.

The library is imported inside each command: ``pushcli --help`` or a typo
never pays for SQLAlchemy, the crypto or aiohttp.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from pushcli import __version__
from pushcli.console import Progress, err, hide_flag_types, print_error, print_summary
from pushcli.defaults import (
    ALLOW_HOSTS_ENV,
    DB_ENV,
    DEFAULT_DB,
    PRIVATE_KEY_ENV,
    PRIVATE_KEY_NAME,
    SUBJECT_ENV,
)
from pushcli.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, PushcliError

if TYPE_CHECKING:
    from pushcli.store import Store

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 partial failure, 2 invalid input, 74 store not writable, "
    "75 busy (locked), 130 interrupted."
)

# Options several commands share, declared once.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReportJsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key", envvar=PRIVATE_KEY_ENV, show_envvar=True,
    help=f"VAPID private key (default: the campaign's vapid.private_key, else "
    f"{PRIVATE_KEY_NAME}).")]
SubjectOpt = Annotated[str | None, typer.Option(
    "--subject", envvar=SUBJECT_ENV, show_envvar=True,
    help="VAPID subject (overrides vapid.subject).")]
AllowHostOpt = Annotated[list[str] | None, typer.Option(
    "--allow-host", help=f"Also allow endpoints at this host (repeatable; {ALLOW_HOSTS_ENV}).")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar=DB_ENV, show_envvar=True,
    help=f"Store: a SQLite path or a SQLAlchemy URL (default: {DEFAULT_DB} in the working "
    "directory).")]
StatusOpt = Annotated[str, typer.Option(help="active | expired | all")]
ReportFilesOpt = Annotated[list[Path] | None, typer.Option(
    "--report", help="Also write the report to FILE.json, FILE.csv and/or FILE.html (the "
    "results page; repeatable).")]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Also write a self-contained HTML results page (charts, no script) to FILE.")]


hide_flag_types()

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


def _known_error(exc: BaseException) -> PushcliError | None:
    """Our own errors, and a database error that escaped the store boundary as the
    store's one-line error; None for anything else (a bug: let it show).

    SQLAlchemy is loaded only once a command opened the store, so there is
    nothing to recognise before that (and no reason to import it here).
    """
    if isinstance(exc, PushcliError):
        return exc
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
        return None
    from pushcli.store import store_error

    return store_error(exc, None)


def handle_errors(fn: F) -> F:
    """Turn library exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise typer.Exit(EXIT_OK) from None
        except Exception as exc:
            error = _known_error(exc)
            if error is None:
                raise
            fail(str(error), error.exit_code)

    return wrapper  # type: ignore[return-value]


def emit_json(doc: Any) -> None:
    """One JSON document on stdout and nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def open_store(create: bool = True) -> Store:
    from pushcli.store import Store

    return Store.open(state.db, create=create)


def _allowed(allow_host: list[str] | None) -> frozenset[str]:
    from pushcli.pushservices import allowed_hosts_from_env

    return allowed_hosts_from_env(allow_host or ())


def _version(value: bool) -> None:
    if value:
        print(f"pushcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: DbOpt = None,
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
    as_json: JsonOpt = False,
) -> None:
    """Create a P-256 VAPID key pair: vapid_private.pem (0600) and vapid_public.pem."""
    from pushcli.console import print_keys
    from pushcli.keys import generate_keys

    info = generate_keys(directory, subject=subject, force=force)
    if as_json:
        emit_json(info.to_json())
        return
    print_keys(info, subject)


@keys_app.command("show")
@handle_errors
def keys_show(key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Print the applicationServerKey of an existing private key."""
    from pushcli.keys import show_key, vapid_key_path

    path = vapid_key_path(None, key)
    info = show_key(path)
    if as_json:
        emit_json({"private_key": str(path),
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
    allow_host: AllowHostOpt = None,
    strict: Annotated[bool, typer.Option(
        help="Import nothing if any record is invalid.")] = False,
    delimiter: Annotated[str | None, typer.Option(
        "--delimiter", help="CSV separator (default: ',' ';' or tab, detected from the "
        "header); 'tab' for a tab.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Import subscriptions (PushSubscription.toJSON() objects) and upsert them by endpoint.

    Invalid records are reported with their line or index and skipped; exit 1
    if any was rejected. With --strict nothing is stored unless all are valid.
    """
    from pushcli.console import RejectionLines, print_import
    from pushcli.subscriptions import describe_rejection, read_files

    records = read_files(files, fmt, allowed_hosts=_allowed(allow_host), extra_tags=tag or (),
                         delimiter=delimiter)
    rejected = RejectionLines(describe_rejection)
    with open_store() as store:
        result = store.import_subscriptions(records, strict=strict, on_reject=rejected.show)
    if as_json:
        emit_json({**result.to_json(), "errors": [rejected.describe(r)
                                                  for r in result.rejections]})
    elif not quiet or result.rejected:
        print_import(result)
    if result.rejected:
        raise typer.Exit(EXIT_PARTIAL)


@subs_app.command("count")
@handle_errors
def subscribers_count(
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Any of these tags.")] = None,
    status: StatusOpt = "active",
    as_json: JsonOpt = False,
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
    status: StatusOpt = "active",
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write to this file (0600) instead of standard output.")] = None,
) -> None:
    """Export subscribers in the import format (round-trips with import)."""
    from pushcli.errors import InputError
    from pushcli.files import private_file
    from pushcli.subscriptions import detect_format, export_rows

    f = detect_format("-", fmt)
    skipped = 0

    def skip(sid: int, problem: str) -> None:
        nonlocal skipped
        skipped += 1
        print(f"skipped subscriber {sid}: {problem}", file=sys.stderr)

    with open_store(create=False) as store:
        rows = store.iter_subscriptions(status=status)
        if output is None:
            n = export_rows(rows, f, sys.stdout, skip)
        else:
            try:
                with private_file(output) as fh:  # 0600, exclusive temp file, atomic
                    n = export_rows(rows, f, fh, skip)
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
    key: KeyOpt = None,
    subject: SubjectOpt = None,
    allow_host: AllowHostOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, count, render and size-check; send nothing.")] = False,
    at: Annotated[str | None, typer.Option(
        "--at", help="With --dry-run: who the schedule makes due at this moment (ISO 8601 "
        "with offset, e.g. 2026-12-01T09:30:00+01:00; default now).")] = None,
    limit: Annotated[int | None, typer.Option(help="Send to at most N subscribers.")] = None,
    to: Annotated[str | None, typer.Option(help="Send only to this endpoint.")] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Also retry subscribers whose last attempt failed.")] = False,
    on_uncertain: Annotated[OnUncertain | None, typer.Option(
        "--on-uncertain", help="Subscribers an earlier run left in flight (may have the "
        "message): resend (counted as possible_duplicates) or skip (recorded uncertain). "
        "Overrides delivery.on_uncertain.")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Pin the requests in flight per push service at N (default: adaptive, up "
        "to delivery.concurrency).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
    workers: Annotated[int | None, typer.Option(
        help="Sender processes (default: 1 below 20,000 pending, else one per core, max 4).")
    ] = None,
    lease: Annotated[float, typer.Option(
        help="PostgreSQL shared sends: seconds a claimed batch stays reserved; a dead "
        "sender's work returns to the others after it.")] = 60.0,
    report: ReportFilesOpt = None,
    as_json: ReportJsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Send a campaign to every pending subscriber in its audience.

    Re-running the same campaign sends only to subscribers without a final
    outcome (resume after a crash or Ctrl-C). Exit 0 when everyone ended sent
    or expired, 1 when any failed/rejected/blocked/auth, 2 for invalid input,
    75 when another run of this campaign holds its lock (SQLite; on PostgreSQL
    several senders share the campaign), 130 on Ctrl-C.
    """
    from pushcli.campaign import load_campaign
    from pushcli.console import EMPTY_AUDIENCE, print_dry_run
    from pushcli.delivery import check_run, options_for, preflight, send_campaign
    from pushcli.delivery import dry_run as check_send
    from pushcli.due import current_time, parse_moment, preview
    from pushcli.errors import InputError
    from pushcli.keys import resolve_vapid
    from pushcli.report import build_report, exit_code_for, write_report_files

    check_run(limit=limit, workers=workers, lease=lease)
    if at is not None and not dry_run:
        raise InputError("--at works with --dry-run only (a send always uses the clock)",
                         field="--at")
    now = parse_moment(at, "--at") if at is not None else current_time()
    campaign = load_campaign(campaign_file)
    options = options_for(campaign, concurrency=concurrency, timeout=timeout,
                          on_uncertain=on_uncertain.value if on_uncertain else None)
    allowed = _allowed(allow_host)
    # From here to the fork, --dry-run and send refuse the same things in the same order.
    signer = resolve_vapid(campaign, key, subject)
    with open_store() as store:
        if dry_run:
            found = check_send(store, campaign, allowed, limit=limit, to=to)
            timing = preview(store, campaign, now, to=to) if campaign.schedule else {}
            if as_json:
                emit_json({**found.to_json(), **timing})
            print_dry_run(found, quiet, summary=not as_json, timing=timing)
            raise typer.Exit(found.exit_code)
        preflight(store, campaign, allowed, limit=limit, to=to)
        progress = Progress(quiet, campaign.name)
        try:
            result = send_campaign(store, campaign, signer, allowed_hosts=allowed,
                                   options=options, retry_failed=retry_failed, limit=limit,
                                   to=to, workers=workers, lease=lease,
                                   on_progress=progress.update, handle_signals=True,
                                   now=now)
        finally:
            progress.close()
        doc = build_report(store, campaign.name, run=result.run_summary())
        if report:
            write_report_files(store, doc, report)
    if not doc["total"] and not result.stats.total and not quiet:
        print(EMPTY_AUDIENCE, file=sys.stderr)
    if as_json:
        emit_json(doc)
    elif not quiet:
        print_summary(doc)
        if result.interrupted:
            err.print("Interrupted: re-run the same command to finish the campaign.")
    raise typer.Exit(EXIT_INTERRUPTED if result.interrupted else exit_code_for(doc))


# --- reports and history -------------------------------------------------------------------


@app.command("report")
@handle_errors
def report_cmd(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    report: ReportFilesOpt = None,
    as_json: ReportJsonOpt = False,
    html: HtmlOpt = None,
) -> None:
    """Re-print a campaign's report from the ledger."""
    from pushcli.htmlreport import render_campaign, write_html
    from pushcli.report import build_report, write_report_files

    with open_store(create=False) as store:
        doc = build_report(store, name)
        if report:
            write_report_files(store, doc, report)
        if html:
            write_html(html, render_campaign(store, doc))
    if as_json:
        emit_json(doc)
    else:
        print_summary(doc)


@campaigns_app.command("list")
@handle_errors
def campaigns_list(as_json: JsonOpt = False, html: HtmlOpt = None) -> None:
    """Campaigns in this store: started, finished, counts by outcome."""
    from pushcli.console import print_campaigns
    from pushcli.htmlreport import render_campaigns, write_html
    from pushcli.report import campaign_rows

    with open_store(create=False) as store:
        rows = campaign_rows(store)
    if html:
        write_html(html, render_campaigns(rows))
    if as_json:
        emit_json(rows)
    else:
        print_campaigns(rows)


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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Delete subscribers marked expired (404/410), never for 401/403 or blocked.

    Waits up to --wait seconds while a send is running, then exits 75.
    """
    from pushcli import prune as pruning

    pruning.check_failed_campaigns(failed_campaigns)
    with open_store(create=False) as store:
        result = pruning.prune(store, failed_campaigns=failed_campaigns, dry_run=dry_run,
                               wait=wait)
    if as_json:
        emit_json(result.to_json())
    elif not quiet:
        print(f"would delete {len(result.ids)} subscribers" if dry_run
              else f"deleted {result.deleted} subscribers")


# --- web and testing -----------------------------------------------------------------------


@web_app.command("init")
@handle_errors
def web_init(
    directory: Annotated[Path, typer.Argument(help="Folder to write sw.js, subscribe.js, "
                                                   "index.html into.")],
    key: KeyOpt = None,
    subscribe_url: Annotated[str | None, typer.Option(
        help="Where subscribe.js POSTs subscriptions (omit to show the JSON for copy).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Write a ready-to-serve service worker, subscribe script and example page."""
    from pushcli.keys import show_key, vapid_key_path
    from pushcli.web import init_site

    paths = init_site(directory, show_key(vapid_key_path(None, key)).application_server_key,
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
    key: KeyOpt = None,
    subject: SubjectOpt = None,
    allow_host: AllowHostOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only problems.")] = False,
) -> None:
    """Check the store, key, subject, push services and (given) a campaign; exit 1 on problems."""
    from pushcli.console import print_checks
    from pushcli.doctor import run_doctor

    checks = run_doctor(state.db, key_path=key, subject=subject, campaign_path=campaign_file,
                        allowed_hosts=_allowed(allow_host))
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [c.to_json() for c in checks]})
    else:
        print_checks(checks, quiet)
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
    as_json: JsonOpt = False,
) -> None:
    """Run the whole flow offline: keys, emulator, import, two sends, expiry, prune."""
    from pushcli.console import DemoDisplay, print_demo
    from pushcli.demo import run_demo

    display = DemoDisplay(plain=as_json)
    try:
        result = run_demo(directory, subscribers=subscribers, expire_share=expire_share,
                          on_step=display.step, on_progress=display.progress)
    finally:
        display.close()
    if as_json:
        emit_json(result.to_json())
    else:
        print_demo(result)


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
    except Exception as exc:
        error = _known_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


__all__ = ["app", "main"]
