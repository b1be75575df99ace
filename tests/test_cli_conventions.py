"""CLI conventions every command keeps, checked on real processes (real stdout, no TTY):

- ``--json`` prints exactly one JSON document on stdout and nothing else there;
- ``--quiet`` prints nothing at all on success;
- no ANSI colour off a terminal or under ``NO_COLOR`` (also on a pseudo-terminal);
- bad input is one line on stderr and exit 2, never a traceback;
- ``--version`` and ``--help`` work and name the default store.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pushcli.store import Store
from pushcli.testing import PushServiceEmulator
from tests import support
from tests.support import Workspace, pushcli_env, run_pushcli, run_side_by_side

ANSI = "\x1b["
SGR_RE = re.compile(rb"\x1b\[([0-9;:]*)m")
#: SGR parameters that set a colour (foreground, background, bright, 256/truecolour).
COLOUR_PARAMS = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}

CAMPAIGN = """\
name: {name}
notification:
  title: Big news
  body: "Hello {{{{ first_name | default('you') }}}}"
  url: https://shop.example.com/news
vapid:
  subject: mailto:ops@shop.example.com
"""


def colour_codes(data: bytes) -> list[bytes]:
    """The SGR sequences in ``data`` that set a colour (bold/italic/reset are fine)."""
    found = []
    for m in SGR_RE.finditer(data):
        params = [p for p in re.split(rb"[;:]", m.group(1)) if p]
        if any(int(p) in COLOUR_PARAMS for p in params):
            found.append(m.group(0))
    return found


SUBS_FILE = "subs.json"


def make_world(folder: Path, emu: PushServiceEmulator, n: int = 20) -> Workspace:
    """A folder with a 0600 key, a store of ``n`` emulated subscribers (``subs.json``) and
    children that see a colour terminal's TERM but no colour-forcing variable."""
    world = Workspace.create(folder, emu, no_color=False,
                             extra_env={"TERM": "xterm-256color"})
    subs = world.subscribe(n)
    world.write_subs(subs, name=SUBS_FILE)
    world.add_subscribers(subs)
    return world


def first_endpoint(world: Workspace) -> str:
    return json.loads((world.dir / SUBS_FILE).read_text())[0]["endpoint"]


def campaign_file(world: Workspace, name: str) -> Path:
    path = world.dir / f"{name}.yml"
    path.write_text(CAMPAIGN.format(name=name))
    return path


def run_many(world: Workspace, jobs: dict[str, tuple[list[str], dict[str, str]]],
             parallel: int = 2) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent read-only commands a few at a time (start-up dominates their cost)."""
    return run_side_by_side({name: (argv, world.env(**extra))
                             for name, (argv, extra) in jobs.items()},
                            cwd=world.dir, parallel=parallel)


@pytest.fixture(scope="module")
def emulator():
    with support.emulator(seed=3) as emu:
        yield emu


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory,
           emulator: PushServiceEmulator) -> Workspace:
    """A store that already ran campaign ``sent``; tests on it must not change it."""
    world = make_world(tmp_path_factory.mktemp("shared"), emulator)
    proc = world.pushcli("send", str(campaign_file(world, "sent")), "-q")
    assert proc.returncode == 0, proc.stderr
    return world


@pytest.fixture
def world(tmp_path: Path, emulator: PushServiceEmulator) -> Workspace:
    return make_world(tmp_path, emulator)


def one_json_document(proc: subprocess.CompletedProcess[str]) -> object:
    assert ANSI not in proc.stdout
    try:
        return json.loads(proc.stdout)  # all of stdout: one document, nothing around it
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{proc.stdout!r}\n"
                             f"stderr: {proc.stderr}") from None


# --- --json: one document on stdout ------------------------------------------------------

READ_ONLY_JSON = {
    "keys show": (["keys", "show", "--json"], 0),
    "subscribers count": (["subscribers", "count", "--json"], 0),
    "send --dry-run": (["send", "{campaign}", "--dry-run", "--json"], 0),
    "report": (["report", "sent", "--json"], 0),
    "campaigns list": (["campaigns", "list", "--json"], 0),
    "prune --dry-run": (["prune", "--dry-run", "--json"], 0),
    "doctor": (["doctor", "{campaign}", "--json"], 0),
}


def with_campaign(world: Workspace, argv: list[str]) -> list[str]:
    campaign = str(campaign_file(world, "sent"))
    return [a.replace("{campaign}", campaign) for a in argv]


@pytest.fixture(scope="module")
def json_results(shared: Workspace) -> dict[str, subprocess.CompletedProcess[str]]:
    return run_many(shared, {name: (with_campaign(shared, argv), {})
                             for name, (argv, _) in READ_ONLY_JSON.items()})


@pytest.mark.parametrize("name", list(READ_ONLY_JSON))
def test_json_is_one_document_on_stdout(json_results, name: str) -> None:
    proc = json_results[name]
    assert proc.returncode == READ_ONLY_JSON[name][1], proc.stderr
    doc = one_json_document(proc)
    if name == "report":
        assert doc["campaign"] == "sent" and doc["sent"] == 20
    if name == "campaigns list":
        assert [r["campaign"] for r in doc] == ["sent"]
        assert {"campaign", "status", "started_at", "finished_at", "total", "sent",
                "expired", "failed"} <= set(doc[0])
    if name == "doctor":
        assert doc["ok"] is True, doc


def test_json_of_commands_that_change_things(world: Workspace) -> None:
    gen = world.pushcli("keys", "generate", "--dir", str(world.dir / "k2"), "--json",
                    "--subject", "mailto:ops@shop.example.com")
    assert gen.returncode == 0, gen.stderr
    assert one_json_document(gen)["application_server_key"]

    imp = world.pushcli("subscribers", "import", str(world.dir / SUBS_FILE), "--json")
    assert imp.returncode == 0, imp.stderr
    assert one_json_document(imp)["unchanged"] == 20

    send = world.pushcli("send", str(campaign_file(world, "news")), "--json")
    assert send.returncode == 0, send.stderr
    assert one_json_document(send)["sent"] == 20

    world.emu.expire(first_endpoint(world))
    send = world.pushcli("send", str(campaign_file(world, "more")), "--json")
    assert send.returncode == 0, send.stderr
    assert one_json_document(send)["expired"] == 1

    prune = world.pushcli("prune", "--json")
    assert prune.returncode == 0, prune.stderr
    assert one_json_document(prune)["deleted"] == 1


def test_demo_json_is_one_document(tmp_path: Path) -> None:
    env = pushcli_env(allow_hosts=None, no_color=False)
    proc = run_pushcli("demo", "--subscribers", "200", "--json", "--dir",
                       str(tmp_path / "demo"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = one_json_document(proc)
    assert doc["subscribers"] == 200 and doc["second_campaign"]["campaign"]


def test_reject_messages_do_not_leak_into_json(world: Workspace) -> None:
    bad = world.dir / "bad.json"
    bad.write_text(json.dumps([{"endpoint": "https://evil.example.com/x",
                                "keys": {"p256dh": "x", "auth": "y"}}]))
    proc = world.pushcli("subscribers", "import", str(bad), "--json")
    assert proc.returncode == 1
    assert one_json_document(proc)["rejected"] == 1
    assert "rejected" in proc.stderr


# --- --quiet: nothing at all on success --------------------------------------------------


def test_quiet_prints_nothing_on_success(world: Workspace) -> None:
    world.emu.expire(first_endpoint(world))
    for argv in (["subscribers", "import", str(world.dir / SUBS_FILE), "-q"],
                 ["send", str(campaign_file(world, "quiet")), "--quiet"],
                 ["prune", "-q"]):
        proc = world.pushcli(*argv)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert (proc.stdout, proc.stderr) == ("", ""), argv
    assert Store.open(world.db).count(status="all") == 19


# --- colour ------------------------------------------------------------------------------

PLAIN_OUTPUT = {
    "--help": (["--help"], 0),
    "report": (["report", "sent"], 0),
    # a failing doctor prints both the green "ok" and the red "FAIL" marks
    "doctor": (["doctor", "{campaign}", "--subject", "mailto:a@localhost"], 1),
    "error message": (["report", "no-such-campaign"], 2),
}


@pytest.fixture(scope="module")
def plain_results(shared: Workspace) -> dict[str, subprocess.CompletedProcess[str]]:
    return run_many(shared, {
        f"{name}-{no_color}": (with_campaign(shared, argv), {"NO_COLOR": "1"} if no_color else {})
        for name, (argv, _) in PLAIN_OUTPUT.items() for no_color in (False, True)})


@pytest.mark.parametrize("no_color", [False, True], ids=["not-a-tty", "NO_COLOR"])
@pytest.mark.parametrize("name", list(PLAIN_OUTPUT))
def test_no_ansi_off_a_terminal(plain_results, name: str, no_color: bool) -> None:
    proc = plain_results[f"{name}-{no_color}"]
    assert proc.returncode == PLAIN_OUTPUT[name][1], proc.stderr
    assert proc.stdout or proc.stderr
    assert ANSI not in proc.stdout and ANSI not in proc.stderr


def test_no_ansi_in_a_send_summary(world: Workspace) -> None:
    for name, extra in (("plain", {}), ("nocolor", {"NO_COLOR": "1"})):
        proc = world.pushcli("send", str(campaign_file(world, name)), **extra)
        assert proc.returncode == 0, proc.stderr
        assert "sent" in proc.stdout and "20" in proc.stdout
        assert ANSI not in proc.stdout and ANSI not in proc.stderr, name


def run_in_pty(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, bytes]:
    """Run with a pseudo-terminal as stdout and stderr; return exit code and all output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks)


@pytest.mark.parametrize("argv", [["doctor", "{campaign}", "--subject", "mailto:a@localhost"],
                                  ["--help"]], ids=["doctor", "help"])
def test_no_colour_codes_on_a_terminal_with_no_color(shared: Workspace, argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "pushcli", *with_campaign(shared, argv)]
    if argv[0] == "doctor":
        # the probe: on a terminal without NO_COLOR it is coloured (else this proves nothing)
        code, out = run_in_pty(cmd, shared.dir, shared.env())
        assert code == 1 and colour_codes(out), "expected colour on a terminal"
    code, out = run_in_pty(cmd, shared.dir, shared.env(NO_COLOR="1"))
    assert code in (0, 1) and out
    assert colour_codes(out) == [], out[:500]


# --- bad input: one line, exit 2, no traceback -------------------------------------------

TYPO_CAMPAIGN = CAMPAIGN.replace("notification:", "notificaton:")

BAD_INPUT = {
    "missing campaign file": ["send", "missing.yml"],
    "campaign key typo": ["send", "typo.yml"],
    "unknown database dialect": ["--db", "nosuchdb://user@host/db", "subscribers", "count"],
    "database driver not installed": ["--db", "postgresql+nosuchdriver://u@127.0.0.1:1/db",
                                      "subscribers", "count"],
    "unparseable database URL": ["--db", "://nothing", "subscribers", "count"],
    # nothing listens on port 1: the driver's (multi-line) message must become one line
    "database not reachable": ["--db", "postgresql://u@127.0.0.1:1/db", "subscribers", "count"],
    "missing key file": ["send", "ok.yml", "--key", "missing.pem"],
    "export --format xml": ["subscribers", "export", "--format", "xml"],
    "send --limit 0": ["send", "ok.yml", "--limit", "0"],
}


@pytest.fixture(scope="module")
def bad_results(shared: Workspace) -> dict[str, subprocess.CompletedProcess[str]]:
    (shared.dir / "typo.yml").write_text(TYPO_CAMPAIGN.format(name="typo"))
    campaign_file(shared, "ok")
    return run_many(shared, {name: (argv, {}) for name, argv in BAD_INPUT.items()})


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(bad_results, name: str) -> None:
    proc = bad_results[name]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    if name == "campaign key typo":
        assert "notificaton" in lines[0] and "notification" in lines[0]


# --- version and help --------------------------------------------------------------------


def test_version_and_help(world: Workspace) -> None:
    from pushcli import __version__

    proc = world.pushcli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"pushcli {__version__}"
    script = Path(sys.executable).parent / "pushcli"
    if script.exists():
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                              env=world.env(), timeout=60)
        assert proc.returncode == 0 and __version__ in proc.stdout

    proc = world.pushcli("--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "pushcli.db" in text and "PUSHCLI_DB" in text
    for command in ("send", "report", "prune", "doctor", "demo", "subscribers", "campaigns"):
        assert command in text
    assert "75" in text  # the exit codes are documented


def test_send_progress_and_summary_on_a_terminal_with_no_color(world: Workspace) -> None:
    cmd = [sys.executable, "-m", "pushcli", "send", str(campaign_file(world, "tty"))]
    code, out = run_in_pty(cmd, world.dir, world.env(NO_COLOR="1"))
    assert code == 0, out[-2000:]
    assert b"sent" in out
    assert colour_codes(out) == [], out[:500]


def test_user_text_is_never_read_as_markup(world: Workspace) -> None:
    """File names with brackets print as they are, on a terminal and off it."""
    name = "spring[/b].yml"
    code, out = run_in_pty([sys.executable, "-m", "pushcli", "send", name], world.dir,
                           world.env(NO_COLOR="1"))
    assert b"Traceback" not in out, out[-800:]
    assert code == 2 and f"error: {name}: no such file".encode() in out
    proc = world.pushcli("keys", "generate", "--dir", "k[/k]")  # relative: short enough not to wrap
    assert "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.returncode == 0 and "k[/k]/vapid_private.pem" in proc.stdout


# --- what the operator reads --------------------------------------------------------------

def _command_paths() -> list[list[str]]:
    """Every command and group of the app, as argv prefixes (``[]`` is the root)."""
    import typer.main

    from pushcli.cli import app

    paths: list[list[str]] = []

    def walk(command: object, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_shows_no_type_after_plain_flags() -> None:
    from typer.testing import CliRunner

    from pushcli.cli import app

    paths = _command_paths()
    assert ["send"] in paths and ["keys", "generate"] in paths and len(paths) > 15
    runner = CliRunner()
    for argv in paths:
        result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, (argv, result.output)
        assert "<bool>" not in result.output, (argv, result.output)
        assert "--help" in result.output
    send_help = runner.invoke(app, ["send", "--help"], env={"COLUMNS": "100"}).output
    assert "<int>" in send_help  # options that take a value still say what kind


LONG_NAME = "spring-sale-2026-newsletter-for-every-subscriber"


def _interrupted_campaign(world: Workspace, name: str, audience: str, done: int) -> None:
    """A campaign whose sender stopped after ``done`` outcomes (as Ctrl-C leaves it)."""
    from pushcli.campaign import load_campaign
    from pushcli.pushservices import Outcome
    from pushcli.store import DeliveryRecord

    path = world.dir / f"{name}.yml"
    path.write_text(CAMPAIGN.format(name=name) + audience)
    spec = load_campaign(path).model_dump(mode="json")
    with Store.open(world.db) as store:
        info = store.start_campaign(name, spec)
        ids = [s.id for s in store.iter_subscriptions(status="active")][:done]
        store.record(info.id, [DeliveryRecord(i, Outcome.SENT, "127.0.0.1", 201) for i in ids])
        store.finish_campaign(info.id, "interrupted")


def test_report_and_campaigns_list_say_how_many_are_still_pending(world: Workspace) -> None:
    _interrupted_campaign(world, LONG_NAME, "", done=5)
    _interrupted_campaign(world, "targeted", "audience:\n  exclude_tags: [vip]\n", done=8)
    doc = one_json_document(world.pushcli("report", LONG_NAME, "--json"))
    assert doc["status"] == "interrupted" and doc["sent"] == 5 and doc["pending"] == 15
    human = world.pushcli("report", "targeted")
    assert human.returncode == 0, human.stderr
    assert re.search(r"pending \(re-run to finish\)\W+12\b", human.stdout), human.stdout
    rows = one_json_document(world.pushcli("campaigns", "list", "--json"))
    assert {r["campaign"]: r["pending"] for r in rows} == {LONG_NAME: 15, "targeted": 12}


def test_campaigns_list_without_a_terminal_prints_whole_values(world: Workspace) -> None:
    _interrupted_campaign(world, LONG_NAME, "", done=5)
    proc = world.pushcli("campaigns", "list")  # stdout is a pipe, as in a cron job
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    header, row = (line.split("\t") for line in proc.stdout.splitlines())
    assert header == ["campaign", "status", "started", "finished", "total", "sent", "expired",
                      "failed", "other", "pending", "waiting", "next due"]
    assert row[0] == LONG_NAME and row[1] == "interrupted"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row[2]) and row[9] == "15"
    assert row[10:] == ["0", "-"]  # nobody waits for a send window


def test_a_reader_that_closed_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """``pushcli ... | head``: stdout's reader is gone; exit 0, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "pushcli", "doctor", "--json"],
                              cwd=tmp_path, env=pushcli_env(db=tmp_path / "pushcli.db"),
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == ""


def test_a_broken_pipe_that_is_not_stdout_is_not_success(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A link to a child sender or a socket that breaks is a failure, said in one line:
    before, every BrokenPipeError became exit 0, so a send whose child died said nothing
    and succeeded."""
    import pushcli.report

    def broken(*_: object, **__: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(pushcli.report, "build_and_write", broken)
    db = tmp_path / "pushcli.db"
    Store.open(db).close()
    result = support.invoke("report", "anything", db=db)
    assert result.exit_code == 1
    assert "a pipe or socket closed while pushcli wrote to it (Broken pipe)" in result.output


def test_loading_the_cli_leaves_rich_for_when_something_is_drawn() -> None:
    """rich (~60 ms to import) loads on first use: a `send --json`, `-q` or cron run
    reaches its first request without it."""
    code = ("import sys, pushcli.cli\n"
            "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'rich'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
