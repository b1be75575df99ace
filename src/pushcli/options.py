"""Every option and argument the CLI declares: its flags, help text and environment
variable, once each, as ``Annotated`` aliases; plus the few helpers that turn raw
option values into what the library takes.

Declarations only: nothing here prints, exits or draws. ``cli.py`` keeps the
wiring (which command takes which option, what it calls); keeping the words
here keeps that file readable as one line per option. An option without its
own flag names takes them from the parameter name in ``cli.py`` (``strict`` ->
``--strict/--no-strict``), so renaming a parameter there renames the option.

Imports stay cheap (typer and ``defaults`` only): ``pushcli --help`` must not
load SQLAlchemy, the crypto or aiohttp; the helpers import the library lazily.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pushcli.defaults import (
    ALLOW_HOSTS_ENV,
    DB_ENV,
    DEFAULT_DB,
    PRIVATE_KEY_ENV,
    PRIVATE_KEY_NAME,
    SUBJECT_ENV,
)

if TYPE_CHECKING:
    from datetime import datetime

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 partial failure, 2 invalid input, 74 store not writable, "
    "75 busy (locked), 130 interrupted."
)


class OnUncertain(enum.StrEnum):
    """``send --on-uncertain``: what to do with subscribers an earlier run left in flight."""

    resend = "resend"
    skip = "skip"


# --- shared by several commands ------------------------------------------------------------

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
CampaignFileArg = Annotated[Path, typer.Argument(help="Campaign YAML file.")]

# --- one command each ----------------------------------------------------------------------

KeysDirOpt = Annotated[Path, typer.Option("--dir", help="Where to write the key files.")]
KeysSubjectOpt = Annotated[str | None, typer.Option(
    help="VAPID contact, mailto:you@example.com or an https URL (checked as Apple would).")]
KeysForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing private key (orphans every subscription!).")]

ImportFilesArg = Annotated[list[str], typer.Argument(
    help="Files to import; - for standard input.")]
ImportFormatOpt = Annotated[str | None, typer.Option(
    "--format", help="json | ndjson | csv (default: from the extension).")]
ImportTagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", help="Add this tag to every imported subscriber (repeatable).")]
StrictOpt = Annotated[bool, typer.Option(help="Import nothing if any record is invalid.")]
DelimiterOpt = Annotated[str | None, typer.Option(
    "--delimiter", help="CSV separator (default: ',' ';' or tab, detected from the "
    "header); 'tab' for a tab.")]
CountTagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Any of these tags.")]
ExportFormatOpt = Annotated[str, typer.Option("--format", help="json | ndjson | csv")]
OutputOpt = Annotated[Path | None, typer.Option(
    "-o", "--output", help="Write to this file (0600) instead of standard output.")]

SendDryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Validate, count, render and size-check; send nothing.")]
AtOpt = Annotated[str | None, typer.Option(
    "--at", help="With --dry-run: who the schedule makes due at this moment (ISO 8601 "
    "with offset, e.g. 2026-12-01T09:30:00+01:00; default now).")]
LimitOpt = Annotated[int | None, typer.Option(help="Send to at most N subscribers.")]
ToOpt = Annotated[str | None, typer.Option(
    help="Send only to this endpoint (a test send; refused, exit 2, for a subscriber in "
    "the A/B holdout or waiting for the winner).")]
DropWinnerOpt = Annotated[bool, typer.Option(
    "--drop-winner", help="Confirm that winner: was removed from the campaign: subscribers "
    "still waiting for the A/B winner get variants by weight (refused without it, exit 2).")]
RetryFailedOpt = Annotated[bool, typer.Option(
    "--retry-failed", help="Also retry subscribers whose last attempt failed.")]
OnUncertainOpt = Annotated[OnUncertain | None, typer.Option(
    "--on-uncertain", help="Subscribers an earlier run left in flight (may have the "
    "message): resend (counted as possible_duplicates) or skip (recorded uncertain). "
    "Overrides delivery.on_uncertain.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    help="Pin the requests in flight per push service at N (default: adaptive, up "
    "to delivery.concurrency).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds per request.")]
WorkersOpt = Annotated[int | None, typer.Option(
    help="Sender processes: this one and N-1 children (default: 1 below 5,000 pending, "
    "else one per core, max 4).")]
LeaseOpt = Annotated[float, typer.Option(
    help="PostgreSQL shared sends: seconds a claimed batch stays reserved; a dead "
    "sender's work returns to the others after it.")]

CampaignNameArg = Annotated[str, typer.Argument(help="Campaign name.")]
PruneDryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")]
FailedCampaignsOpt = Annotated[int | None, typer.Option(
    help="Also prune subscribers whose last N campaigns each ended with an answer about "
         "that subscriber (see README).")]
WaitOpt = Annotated[float, typer.Option(
    help="Seconds to wait for running sends before giving up (exit 75).")]
UnengagedDaysOpt = Annotated[float | None, typer.Option(
    help="With --min-sent: also prune subscribers with no click in the last D days...")]
MinSentOpt = Annotated[int | None, typer.Option(
    help="...who were sent at least K messages (ledger 'sent', across campaigns).")]

EventFilesArg = Annotated[list[str], typer.Argument(
    help="NDJSON files of event documents; - for standard input.")]
EventsHostOpt = Annotated[str, typer.Option(
    help="Address to bind (run it behind the site's reverse proxy).")]
AllowOriginOpt = Annotated[list[str] | None, typer.Option(
    "--allow-origin", help="Answer CORS for this origin, refuse others (repeatable; "
    "scheme://host[:port], or * for any).")]
MaxConnectionsOpt = Annotated[int | None, typer.Option(
    "--max-connections", help="Connections served at once (default 512, fewer under a "
    "lower open-file limit); one more is answered 503 and closed. Exit 2 below 1 or "
    "above the open-file limit minus 64.")]

WebDirArg = Annotated[Path, typer.Argument(
    help="Folder to write sw.js, subscribe.js, index.html into.")]
SubscribeUrlOpt = Annotated[str | None, typer.Option(
    help="Where subscribe.js POSTs subscriptions (omit to show the JSON for copy).")]
WebForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing files.")]
HostOpt = Annotated[str, typer.Option(help="Loopback address to bind.")]
PortOpt = Annotated[int, typer.Option(help="Port (0 = any free port).")]

DoctorCampaignArg = Annotated[Path | None, typer.Argument(help="Also check this campaign.")]
DoctorQuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print only problems.")]
DemoDirOpt = Annotated[Path | None, typer.Option(
    "--dir", help="Where to put the demo's files (default: a new temporary folder).")]
DemoSubscribersOpt = Annotated[int, typer.Option(help="How many emulated browsers.")]
ExpireShareOpt = Annotated[float, typer.Option(
    help="Share of subscriptions the push service expires before the second send.")]


# --- from option values to library arguments -----------------------------------------------


def allowed_hosts(allow_host: list[str] | None) -> frozenset[str]:
    """``--allow-host`` values plus PUSHCLI_ALLOW_HOSTS, as the endpoint policy takes them."""
    from pushcli.pushservices import allowed_hosts_from_env

    return allowed_hosts_from_env(allow_host or ())


def send_moment(at: str | None, dry_run: bool) -> datetime:
    """The moment ``send`` plans for: ``--at`` (dry runs only: a send always uses the
    clock, so a mistyped --at cannot silently send outside the schedule), else now."""
    from pushcli.due import current_time, parse_moment
    from pushcli.errors import InputError

    if at is None:
        return current_time()
    if not dry_run:
        raise InputError("--at works with --dry-run only (a send always uses the clock)",
                         field="--at")
    return parse_moment(at, "--at")


def serve_address(host: str, port: int) -> None:
    """Refuse a ``testing serve`` address beyond loopback (the emulator's control API
    is unauthenticated) or a port out of range, as one InputError line."""
    from pushcli.errors import InputError
    from pushcli.testing import check_loopback

    try:
        check_loopback(host)
    except ValueError as exc:
        raise InputError(f"--host: {exc}") from None
    check_port(port)


def check_port(port: int) -> None:
    """Refuse a ``--port`` out of range (``testing serve``, ``events serve``)."""
    from pushcli.errors import InputError

    if not 0 <= port <= 65535:
        raise InputError(f"{port} is not a port number (0-65535; 0 = any free port)",
                         field="--port")
