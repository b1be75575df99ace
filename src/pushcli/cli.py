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

import functools
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from pushcli import __version__, console, heap
from pushcli import options as opt
from pushcli.console import render
from pushcli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, PushcliError, listening

if TYPE_CHECKING:
    from pushcli.store import Store

F = TypeVar("F", bound=Callable[..., Any])

console.hide_flag_types()


class _Typer(typer.Typer):
    """Every command registered here gets :func:`handle_errors`: one line on stderr
    and the documented exit code, whoever adds the command."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(handle_errors(fn))


app = _Typer(
    name="pushcli",
    help="Campaign-style Web Push: VAPID keys, subscriber store, encrypted delivery, reports.\n\n"
    + opt.EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _group(name: str, help_text: str) -> typer.Typer:
    """A command group such as ``pushcli keys``; with no subcommand it prints its help."""
    group = _Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


keys_app = _group("keys", "Generate and inspect VAPID keys.")
subs_app = _group("subscribers", "Import, count and export subscribers.")
campaigns_app = _group("campaigns", "Campaign history.")
testing_app = _group("testing", "The loopback push-service emulator.")
web_app = _group("web", "The browser side: service worker and subscribe page.")
events_app = _group("events", "Notification events: import, collect, token secret.")


class _State:
    db: str | None = None


state = _State()


def _exit_code(exc: BaseException) -> int:
    """The documented exit code for ``exc``, after its one line on stderr; a bug
    (anything not ours) is re-raised to show itself. A database error can only have
    escaped once a command loaded the store: before that there is nothing to ask it."""
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    store = sys.modules.get("pushcli.store")
    error = (store.known_error(exc) if store is not None
             else exc if isinstance(exc, PushcliError) else None)
    if error is None:
        raise exc
    console.print_error(str(error))
    return error.exit_code


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has exited (``pushcli ... | head``): the one
    BrokenPipeError that means "done", not "failed"."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (tests)
        return False


def handle_errors(fn: F) -> F:
    """Turn library exceptions into one line on stderr and the documented exit code."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError as exc:
            if _stdout_gone():
                raise typer.Exit(EXIT_OK) from None
            # a link to a child sender, a socket: a failure (exit 1), not `| head`
            raise typer.Exit(_exit_code(PushcliError(
                f"a pipe or socket closed while pushcli wrote to it ({exc.strerror or exc})"
            ))) from None
        except (KeyboardInterrupt, Exception) as exc:
            raise typer.Exit(_exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


def open_store(create: bool = True) -> Store:
    from pushcli.store import Store

    return Store.open(state.db, create=create)


def _version(value: bool) -> None:
    if value:
        print(f"pushcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: opt.DbOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    state.db = db


# --- keys ----------------------------------------------------------------------------------

@keys_app.command("generate")
def keys_generate(
    directory: opt.KeysDirOpt = Path("."),
    subject: opt.KeysSubjectOpt = None,
    force: opt.KeysForceOpt = False,
    as_json: opt.JsonOpt = False,
) -> None:
    """Create a P-256 VAPID key pair: vapid_private.pem (0600) and vapid_public.pem."""
    from pushcli.keys import generate_keys

    info = generate_keys(directory, subject=subject, force=force)
    render(as_json, info.to_json(), lambda: console.print_keys(info, subject))


@keys_app.command("show")
def keys_show(key: opt.KeyOpt = None, as_json: opt.JsonOpt = False) -> None:
    """Print the applicationServerKey of an existing private key."""
    from pushcli.keys import show_key, vapid_key_path

    path = vapid_key_path(None, key)
    info = show_key(path)
    render(as_json, {"private_key": str(path),
                     "application_server_key": info.application_server_key},
           lambda: print(info.application_server_key))


# --- subscribers ---------------------------------------------------------------------------

@subs_app.command("import")
def subscribers_import(
    files: opt.ImportFilesArg,
    fmt: opt.ImportFormatOpt = None,
    tag: opt.ImportTagOpt = None,
    allow_host: opt.AllowHostOpt = None,
    strict: opt.StrictOpt = False,
    delimiter: opt.DelimiterOpt = None,
    as_json: opt.JsonOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Import subscriptions (PushSubscription.toJSON() objects) and upsert them by endpoint.

    Invalid records are reported with their line or index and skipped; exit 1
    if any was rejected. With --strict nothing is stored unless all are valid.
    """
    from pushcli.subscriptions import describe_rejection, read_files

    records = read_files(files, fmt, allowed_hosts=opt.allowed_hosts(allow_host),
                         extra_tags=tag or (), delimiter=delimiter)
    rejected = console.RejectionLines(describe_rejection)
    with open_store() as store:
        result = store.import_subscriptions(records, strict=strict, on_reject=rejected.show)
    console.print_import(result, rejected, as_json=as_json, quiet=quiet)
    raise typer.Exit(EXIT_PARTIAL if result.rejected else EXIT_OK)


@subs_app.command("count")
def subscribers_count(tag: opt.CountTagOpt = None, status: opt.StatusOpt = "active",
                      as_json: opt.JsonOpt = False) -> None:
    """Count subscribers (active ones by default)."""
    with open_store(create=False) as store:
        n = store.count(status=status, tags=tag or ())
    render(as_json, {"count": n, "status": status, "tags": tag or []}, lambda: print(n))


@subs_app.command("export")
def subscribers_export(fmt: opt.ExportFormatOpt = "ndjson", status: opt.StatusOpt = "active",
                       output: opt.OutputOpt = None) -> None:
    """Export subscribers in the import format (round-trips with import)."""
    from pushcli.subscriptions import detect_format, export_file

    f = detect_format("-", fmt)
    skipped = console.SkippedRows()
    with open_store(create=False) as store:
        n = export_file(store.iter_subscriptions(status=status), f, output, skipped.show)
    if output is not None:
        print(f"exported {n} subscribers to {output}", file=sys.stderr)
    raise typer.Exit(EXIT_PARTIAL if skipped.count else EXIT_OK)


# --- send ----------------------------------------------------------------------------------

@app.command("send")
def send(
    campaign_file: opt.CampaignFileArg,
    key: opt.KeyOpt = None,
    subject: opt.SubjectOpt = None,
    allow_host: opt.AllowHostOpt = None,
    dry_run: opt.SendDryRunOpt = False,
    at: opt.AtOpt = None,
    limit: opt.LimitOpt = None,
    to: opt.ToOpt = None,
    retry_failed: opt.RetryFailedOpt = False,
    drop_winner: opt.DropWinnerOpt = False,
    on_uncertain: opt.OnUncertainOpt = None,
    concurrency: opt.ConcurrencyOpt = None,
    timeout: opt.TimeoutOpt = 10.0,
    workers: opt.WorkersOpt = None,
    lease: opt.LeaseOpt = 60.0,
    report: opt.ReportFilesOpt = None,
    as_json: opt.ReportJsonOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Send a campaign to every pending subscriber in its audience.

    Re-running the same campaign sends only to subscribers without a final
    outcome (resume after a crash or Ctrl-C). Exit 0 when everyone ended sent
    or expired, 1 when any failed/rejected/blocked/auth, 2 for invalid input,
    75 when another run of this campaign holds its lock (SQLite; on PostgreSQL
    several senders share the campaign), 130 on Ctrl-C.
    """
    from pushcli.spawn import Spares, spares_for

    # a large send starts its child senders first: they import the send path on other
    # cores while this process does (spawn.Spares; unused ones are killed)
    early = 0 if dry_run else spares_for(workers, state.db, limit=limit, to=to)
    with Spares(early) as spares:
        from pushcli import audience
        from pushcli.campaign import load_campaign
        from pushcli.delivery import check_run, options_for, send_campaign
        from pushcli.keys import resolve_vapid
        from pushcli.report import build_and_write, exit_code_for

        check_run(limit=limit, workers=workers, lease=lease)
        now = opt.send_moment(at, dry_run)
        campaign = load_campaign(campaign_file)
        options = options_for(campaign, concurrency=concurrency, timeout=timeout,
                              on_uncertain=on_uncertain.value if on_uncertain else None)
        allowed = opt.allowed_hosts(allow_host)
        # From here to the fork, --dry-run and send refuse the same things in the same order.
        signer = resolve_vapid(campaign, key, subject)
        with open_store() as store:
            if dry_run:
                found = audience.dry_run(store, campaign, allowed, limit=limit, to=to, now=now,
                                         drop_winner=drop_winner)
                console.print_dry_run(found, quiet, as_json=as_json)
                raise typer.Exit(found.exit_code)
            audience.preflight(store, campaign, allowed, limit=limit, to=to)
            with console.Progress(quiet, campaign.name) as progress:
                result = send_campaign(store, campaign, signer, allowed_hosts=allowed,
                                       options=options, retry_failed=retry_failed, limit=limit,
                                       to=to, workers=workers, lease=lease,
                                       on_progress=progress.update, handle_signals=True, now=now,
                                       spares=spares, drop_winner=drop_winner)
            doc = build_and_write(store, campaign.name, report or (), run=result.run_summary())
        console.print_run(doc, result, quiet=quiet, as_json=as_json)
        raise typer.Exit(EXIT_INTERRUPTED if result.interrupted else exit_code_for(doc))


# --- reports and history -------------------------------------------------------------------

@app.command("report")
def report_cmd(
    name: opt.CampaignNameArg,
    report: opt.ReportFilesOpt = None,
    as_json: opt.ReportJsonOpt = False,
    html: opt.HtmlOpt = None,
) -> None:
    """Re-print a campaign's report from the ledger."""
    from pushcli.report import build_and_write

    with open_store(create=False) as store:
        doc = build_and_write(store, name, report or (), html=html)
    render(as_json, doc, lambda: console.print_summary(doc))


@campaigns_app.command("list")
def campaigns_list(as_json: opt.JsonOpt = False, html: opt.HtmlOpt = None) -> None:
    """Campaigns in this store: started, finished, counts by outcome."""
    from pushcli.htmlreport import render_campaigns, write_html
    from pushcli.report import campaign_rows

    with open_store(create=False) as store:
        rows = campaign_rows(store)
    if html:
        write_html(html, render_campaigns(rows))
    render(as_json, rows, lambda: console.print_campaigns(rows))


@app.command("prune")
def prune(
    dry_run: opt.PruneDryRunOpt = False,
    failed_campaigns: opt.FailedCampaignsOpt = None,
    unengaged_days: opt.UnengagedDaysOpt = None,
    min_sent: opt.MinSentOpt = None,
    wait: opt.WaitOpt = 30.0,
    as_json: opt.JsonOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Delete subscribers marked expired (404/410), never for 401/403 or blocked.

    Waits up to --wait seconds while a send is running, then exits 75.
    """
    from pushcli import prune as pruning

    rules = pruning.rules(failed_campaigns, unengaged_days, min_sent, time.time())
    with open_store(create=False) as store:
        result = pruning.prune(store, **rules, dry_run=dry_run, wait=wait)
    render(as_json, result.to_json(), lambda: console.print_prune(result, dry_run, quiet))


# --- events ------------------------------------------------------------------------------

@events_app.command("import")
def events_import(files: opt.EventFilesArg, as_json: opt.JsonOpt = False,
                  quiet: opt.QuietOpt = False) -> None:
    """Store the shown/clicked/closed events of NDJSON files; exit 1 if any line was refused.

    Each (campaign, subscriber, kind) counts once: importing a file again adds nothing.
    """
    from pushcli.events import import_events
    from pushcli.subscriptions import describe_rejection

    rejected = console.RejectionLines(describe_rejection)
    with open_store(create=False) as store:
        result = import_events(store, files, time.time(), on_reject=rejected.show)
    console.print_event_import(result, rejected, as_json=as_json, quiet=quiet)
    raise typer.Exit(EXIT_PARTIAL if result.rejected else EXIT_OK)


@events_app.command("serve")
def events_serve(host: opt.EventsHostOpt = "127.0.0.1", port: opt.PortOpt = 8091,
                 allow_origin: opt.AllowOriginOpt = None,
                 max_connections: opt.MaxConnectionsOpt = None) -> None:
    """Collect events posted by the service worker (POST /events) until Ctrl-C.

    A connection has 10 s for its request head (from opening, or from its previous
    answer: idle keep-alive connections close then) and 10 s more for its body."""
    from pushcli.collector import check_max_connections, check_origins, serve_forever

    origins = check_origins(allow_origin or ())
    opt.check_port(port)
    cap = check_max_connections(max_connections)
    with open_store(create=False) as store, listening(host, port):
        stats = serve_forever(store, host, port, allow_origins=origins, max_connections=cap,
                              on_ready=console.announce_collector, on_problem=console.print_error)
    console.print_collector_stats(stats)


@events_app.command("rotate-secret")
def events_rotate_secret() -> None:
    """Replace the token secret; tokens from before the previous rotation stop verifying."""
    with open_store(create=False) as store:
        store.rotate_token_secret()
    console.print_secret_rotated()


# --- web and testing -----------------------------------------------------------------------

@web_app.command("init")
def web_init(
    directory: opt.WebDirArg,
    key: opt.KeyOpt = None,
    subscribe_url: opt.SubscribeUrlOpt = None,
    force: opt.WebForceOpt = False,
) -> None:
    """Write a ready-to-serve service worker, subscribe script and example page."""
    from pushcli.keys import show_key, vapid_key_path
    from pushcli.web import init_site

    paths = init_site(directory, show_key(vapid_key_path(None, key)).application_server_key,
                      subscribe_url=subscribe_url, force=force)
    for p in paths:
        print(f"wrote {p}")


@testing_app.command("serve")
def testing_serve(host: opt.HostOpt = "127.0.0.1", port: opt.PortOpt = 8090) -> None:
    """Run the push-service emulator on loopback until Ctrl-C (JSON API in README)."""
    from pushcli.testing import serve_forever

    opt.serve_address(host, port)
    with listening(host, port):
        serve_forever(host=host, port=port, on_ready=console.announce_emulator)


@app.command("doctor")
def doctor(
    campaign_file: opt.DoctorCampaignArg = None,
    key: opt.KeyOpt = None,
    subject: opt.SubjectOpt = None,
    allow_host: opt.AllowHostOpt = None,
    as_json: opt.JsonOpt = False,
    quiet: opt.DoctorQuietOpt = False,
) -> None:
    """Check the store, key, subject, push services and (given) a campaign; exit 1 on problems."""
    from pushcli.doctor import exit_code, run_doctor

    checks = run_doctor(state.db, key_path=key, subject=subject, campaign_path=campaign_file,
                        allowed_hosts=opt.allowed_hosts(allow_host))
    console.print_checks(checks, quiet, as_json=as_json)
    raise typer.Exit(exit_code(checks))


@app.command("demo")
def demo(
    directory: opt.DemoDirOpt = None,
    subscribers: opt.DemoSubscribersOpt = 3000,
    expire_share: opt.ExpireShareOpt = 0.1,
    as_json: opt.JsonOpt = False,
) -> None:
    """Run the whole flow offline: keys, emulator, import, two sends, expiry, prune."""
    from pushcli.demo import run_demo

    with console.DemoDisplay(plain=as_json) as display:
        result = run_demo(directory, subscribers=subscribers, expire_share=expire_share,
                          on_step=display.step, on_progress=display.progress)
    render(as_json, result.to_json(), lambda: console.print_demo(result))


def main() -> None:
    """Console-script entry point."""
    # Outside a command's handle_errors (option callbacks, typer's own
    # plumbing): still one line and the documented code, never a traceback
    # that could quote an endpoint or an auth secret.
    heap.skip_collection_at_exit()  # ~0.3 s less between a send's last line and its exit
    try:
        app()
    except (KeyboardInterrupt, Exception) as exc:
        sys.exit(_exit_code(exc))


__all__ = ["app", "main"]
