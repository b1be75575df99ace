"""The one test harness: how tests, ``stress/`` and ``bench/`` start things.

Everything that starts pushcli (in process with typer's runner, or as
``python -m pushcli`` in a subprocess with its store, key, allow-list and
colour settings in the environment), the push-service emulator (in process,
or as ``pushcli testing serve --port 0`` in another process), npm's
web-push-testing, a throwaway PostgreSQL and a desktop notification daemon
(clicks in Chromium) live here, so every test starts
them the same way, and so does the nginx HTTPS sink of ``tests/test_transport.py``
and the benches. Servers report the port they bound (``--port 0``); only nginx,
which cannot, gets a port by binding and releasing it, retried on a clash.

Waiting is on conditions (:func:`wait_for`), never on a fixed sleep.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.encoding import b64url_encode
from pushcli.testing import PushServiceEmulator
from tests.pg import fresh_database, postgres_server

__all__ = [
    "COLOUR_FORCING", "NGINX_ECHO_MODULE", "ROOT", "DesktopNotifications", "EmulatorServer",
    "NginxSink", "ShownNotification", "WebPushTesting", "Workspace", "desktop_notifications",
    "echo_201", "emulator", "emulator_server",
    "fresh_database", "invoke", "nginx_sink", "p256dh_keys",
    "postgres_server", "pushcli_env", "real_subscription", "run_pushcli", "start_pushcli",
    "wait_for", "web_push_testing", "workspace",
]

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: Variables that make rich or typer colour output even off a terminal: never inherited,
#: so a developer's FORCE_COLOR cannot change what a test sees.
COLOUR_FORCING = ("FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "GITHUB_ACTIONS",
                  "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES")


# --- real subscriptions ------------------------------------------------------------------


def p256dh_keys(n: int) -> list[str]:
    """``n`` genuine uncompressed P-256 public keys, base64url: import checks the curve."""
    out = []
    for _ in range(n):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        out.append(b64url_encode(point))
    return out


def real_subscription(endpoint: str | None = None, **extra: object) -> dict[str, Any]:
    """A toJSON()-shaped subscription whose keys come from a real P-256 key pair."""
    sub: dict[str, Any] = {
        "endpoint": endpoint or f"https://fcm.googleapis.com/fcm/send/{secrets.token_urlsafe(16)}",
        "expirationTime": None,
        "keys": {"p256dh": p256dh_keys(1)[0], "auth": b64url_encode(os.urandom(16))},
    }
    sub.update(extra)
    return sub


# --- waiting -----------------------------------------------------------------------------


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "a condition",
             interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy and return that value.

    The timeout is a failure deadline, not a schedule: a test that waits here
    takes as long as the condition needs, and fails loudly if it never holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_line(stream: IO[str], timeout: float, what: str) -> str:
    """One line from a child's pipe, or AssertionError after ``timeout`` s.

    Read in a thread, not after ``select()``: the first ``readline`` may pull the
    next lines into the stream's buffer too, and ``select()`` on the pipe then
    waits for bytes already read (web-push-testing prints two lines at once).
    """
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:
        raise AssertionError(f"{what} printed nothing within {timeout:.0f} s")
    return got[0]


# --- pushcli -----------------------------------------------------------------------------


def pushcli_env(*, db: Path | str | None = None, key: Path | str | None = None,
                allow_hosts: str | None = "127.0.0.1", no_color: bool = True,
                **extra: str) -> dict[str, str]:
    """The environment a pushcli child runs with: none of the caller's PUSHCLI_* or
    colour settings, then the store (``db``), key, allow-list and NO_COLOR given here."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PUSHCLI_") and k not in COLOUR_FORCING}
    if db is not None:
        env["PUSHCLI_DB"] = str(db)
    if key is not None:
        env["PUSHCLI_VAPID_PRIVATE_KEY"] = str(key)
    if allow_hosts is not None:
        env["PUSHCLI_ALLOW_HOSTS"] = allow_hosts
    if no_color:
        env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def run_pushcli(*args: str, cwd: Path | str, env: dict[str, str], timeout: float = 120,
                check: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m pushcli ARGS`` as a user runs it (no stdin), to completion."""
    proc = subprocess.run([sys.executable, "-m", "pushcli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"pushcli {' '.join(args)}: exit {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def start_pushcli(*args: str, cwd: Path | str, env: dict[str, str],
                  stdout: int | IO[Any] | None = subprocess.PIPE,
                  stderr: int | IO[Any] | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """``python -m pushcli ARGS`` in the background (kill, interrupt, concurrency tests).

    It leads its own process group (the group id is its pid), so a test can wait
    for its sender processes too: ``wait_for_group_exit``.
    """
    return subprocess.Popen([sys.executable, "-m", "pushcli", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)


def process_exists(pid: int) -> bool:
    """``pid`` is still in the process table: running, or a zombie nobody has reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _live_in_group(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_for_group_exit(pgid: int, timeout: float = 30.0) -> None:
    """Wait until every process of a ``start_pushcli`` group has ended.

    After its leader is killed, orphaned sender processes notice and stop on
    their own, writing what they know; a check of the store waits for that.
    """
    wait_for(lambda: not _live_in_group(pgid), timeout, f"process group {pgid} to end")


def run_side_by_side(jobs: dict[str, tuple[list[str], dict[str, str]]], *, cwd: Path | str,
                     parallel: int = 2, timeout: float = 120
                     ) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent commands ``parallel`` at a time (start-up dominates their cost).

    ``jobs`` maps a name to (argv, environment).
    """
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    pending = list(jobs.items())
    running: list[tuple[str, list[str], subprocess.Popen[str]]] = []
    while pending or running:
        while pending and len(running) < parallel:
            name, (argv, env) = pending.pop(0)
            running.append((name, argv, start_pushcli(*argv, cwd=cwd, env=env)))
        name, argv, proc = running.pop(0)
        out, err = proc.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return results


def invoke(*args: str, db: Path | str | None = None, env: dict[str, str] | None = None,
           input: str | bytes | None = None, catch_exceptions: bool = True) -> Any:
    """pushcli in this process (typer's CliRunner): fast, for tests of one command's
    output; ``db`` becomes ``--db``. Returns click's Result."""
    from typer.testing import CliRunner

    from pushcli.cli import app

    argv = ["--db", str(db), *args] if db is not None else list(args)
    return CliRunner().invoke(app, argv, env=env, input=input,
                              catch_exceptions=catch_exceptions)


# --- a folder with a key, a store and an emulator -----------------------------------------


@dataclass
class Workspace:
    """A folder with a 0600 VAPID key and a store, pushcli run inside it, and (for
    sends) a loopback push-service emulator whose subscriptions it imports.

    ``allow_hosts``/``no_color``/``extra_env`` shape every child's environment
    (see :func:`pushcli_env`).
    """

    dir: Path
    emu: PushServiceEmulator | None = None
    server_key: str = ""  # applicationServerKey of the key in ``dir``
    allow_hosts: str | None = "127.0.0.1"
    no_color: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, folder: Path, emu: PushServiceEmulator | None = None,
               **settings: Any) -> Workspace:
        """Generate the key in ``folder`` (``vapid_private.pem``)."""
        from pushcli.keys import generate_keys

        info = generate_keys(folder)
        return cls(folder, emu, info.application_server_key, **settings)

    @property
    def db(self) -> Path:
        return self.dir / "pushcli.db"

    @property
    def key(self) -> Path:
        return self.dir / "vapid_private.pem"

    def env(self, **extra: str) -> dict[str, str]:
        return pushcli_env(db=self.db, key=self.key, allow_hosts=self.allow_hosts,
                           no_color=self.no_color, **{**self.extra_env, **extra})

    def pushcli(self, *args: str, check: bool = False, timeout: float = 120,
                **env: str) -> subprocess.CompletedProcess[str]:
        """``pushcli ARGS`` in a subprocess; ``env`` adds or overrides variables."""
        return run_pushcli(*args, cwd=self.dir, env=self.env(**env), timeout=timeout,
                           check=check)

    def start(self, *args: str, stdout: int | IO[Any] | None = subprocess.PIPE,
              stderr: int | IO[Any] | None = subprocess.PIPE,
              **env: str) -> subprocess.Popen[str]:
        """Start ``pushcli ARGS`` in the background (for kill/interrupt/concurrency tests)."""
        return start_pushcli(*args, cwd=self.dir, env=self.env(**env), stdout=stdout,
                             stderr=stderr)

    def wait_until(self, stat: str, at_least: int, timeout: float = 60) -> None:
        """Wait until the emulator's ``stats()[stat]`` reaches ``at_least``."""
        assert self.emu is not None
        emu = self.emu
        wait_for(lambda: emu.stats()[stat] >= at_least, timeout,
                 f"emulator {stat} to reach {at_least}")

    def subscribe(self, n: int, *, key: str | None = None, **fields: object) -> list[dict]:
        """``n`` new subscriptions at the emulator for this folder's key (or ``key``)."""
        assert self.emu is not None
        subs = self.emu.create_subscriptions(n, key or self.server_key)
        for s in subs:
            s.update(fields)
        return subs

    def write_subs(self, subs: list[dict], name: str | None = None) -> Path:
        path = self.dir / (name or f"subs-{len(list(self.dir.glob('subs-*')))}.json")
        path.write_text(json.dumps(subs))
        return path

    def import_subs(self, subs: list[dict], *extra: str) -> dict:
        """``pushcli subscribers import`` in a subprocess; returns its JSON summary."""
        proc = self.pushcli("subscribers", "import", str(self.write_subs(subs)), "--json",
                            *extra)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def add_subscribers(self, subs: list[dict],
                        allowed: frozenset[str] | None = None) -> None:
        """Import in this process (faster than a subprocess when import is not under test).

        ``allowed`` defaults to this workspace's allow-list.
        """
        from pushcli.store import Store
        from pushcli.subscriptions import parse_stream

        if allowed is None:
            allowed = frozenset(h for h in (self.allow_hosts or "").split(",") if h)
        data = io.BytesIO(json.dumps(subs).encode())
        with Store.open(self.db) as store:
            recs = [("subs", r) for r in parse_stream(data, "json", source="subs",
                                                      allowed_hosts=allowed)]
            result = store.import_subscriptions(recs)
        assert result.rejected == 0 and result.added + result.updated == len(subs), \
            result.rejections

    def campaign(self, name: str = "e2e", body: str = "Hello {{ first_name | default('you') }}",
                 extra: str = "") -> Path:
        path = self.dir / f"{name}.yml"
        path.write_text(
            f"name: {name}\n"
            "notification:\n"
            "  title: Big news\n"
            f"  body: \"{body}\"\n"
            "  url: https://shop.example.com/news\n"
            "  icon: https://shop.example.com/icon.png\n"
            "vapid:\n"
            "  subject: mailto:ops@shop.example.com\n" + extra
        )
        return path

    def send(self, campaign: Path, *args: str, **env: str) -> tuple[int, dict]:
        proc = self.pushcli("send", str(campaign), "--json", *args, **env)
        assert proc.returncode in (0, 1, 130), f"{proc.returncode}: {proc.stderr}"
        return proc.returncode, json.loads(proc.stdout)


@contextmanager
def emulator(seed: int = 1, **kwargs: Any) -> Iterator[PushServiceEmulator]:
    """The push-service emulator in this process (a background thread), on a port it
    chose itself."""
    with PushServiceEmulator(port=0, seed=seed, **kwargs) as emu:
        yield emu


@contextmanager
def workspace(seed: int = 1) -> Iterator[Workspace]:
    """A fresh folder with a key and a running emulator, without pytest (stress/)."""
    with tempfile.TemporaryDirectory(prefix="pushcli-ws-") as d, emulator(seed) as emu:
        yield Workspace.create(Path(d), emu)


# --- servers in other processes -----------------------------------------------------------


def _post_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """POST JSON (no proxy: every server here is on loopback); decoded answer or None."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"POST {url}: HTTP {exc.code} {exc.read()[:500]!r}") from None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _stop(proc: subprocess.Popen[Any], signal_first: Callable[[], None]) -> None:
    if proc.poll() is None:
        signal_first()
        try:
            proc.wait(timeout=60)  # a failure deadline: a loaded CI machine stops slowly
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class EmulatorServer:
    """``pushcli testing serve`` in another process and its JSON API."""

    url: str
    proc: subprocess.Popen[str]

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return _post_json(self.url + path, body)


@contextmanager
def emulator_server(*, cwd: Path | str, env: dict[str, str],
                    timeout: float = 30) -> Iterator[EmulatorServer]:
    """``pushcli testing serve --port 0``; its URL is the first line it prints.

    Stopped with SIGINT (Ctrl-C) at exit; the caller may check ``proc.returncode``.
    """
    import signal

    proc = start_pushcli("testing", "serve", "--port", "0", cwd=cwd, env=env)
    assert proc.stdout is not None
    try:
        line = read_line(proc.stdout, timeout, "pushcli testing serve")
        assert line.startswith("listening on http://"), (line, proc.poll())
        yield EmulatorServer(line.split()[-1], proc)
    finally:
        _stop(proc, lambda: proc.send_signal(signal.SIGINT))
        proc.communicate()


#: web-push-testing's own launcher (``bin/server.js PORT``) builds its endpoint URLs
#: from the port it was given, so port 0 would give endpoints at ``:0``. This launcher
#: listens on port 0 and, once bound, sets the model's notify URL to the real port and
#: prints it. It relies on the package's ``_server`` field: if a new version renames it,
#: the fallback is to pass a port (``WPT_PORT``) and poll ``/status``.
_WPT_LAUNCHER = """
const dir = process.argv[1];
const TestingServer = require(dir + '/server.js');
const {PushApiModel} = require(dir + '/PushApiModel.js');
const model = new PushApiModel();
const server = new TestingServer(model, 0);
server.startServer();
server._server.on('listening', () => {
  const port = server._server.address().port;
  model.notifyUrl = 'http://localhost:' + port + '/notify/';
  console.log('listening on http://localhost:' + port);
});
"""
WPT_DIR = ROOT / "node_modules" / "web-push-testing" / "src"
WPT_INSTALL_HINT = f"run `npm ci` in {ROOT} (CI installs web-push-testing from package-lock.json)"


@dataclass
class WebPushTesting:
    """A running web-push-testing server and its JSON API (every route is POST)."""

    url: str
    log: Path

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST JSON; return the decoded answer (None when it is not JSON, e.g. "OK")."""
        try:
            return _post_json(self.url + path, body)
        except AssertionError as exc:
            raise AssertionError(f"web-push-testing {path}: {exc}") from None

    def subscribe(self, application_server_key: str) -> dict[str, Any]:
        """A new subscription: {"endpoint", "keys": {"p256dh", "auth"}, "clientHash"}.

        userVisibleOnly must be the string "true": the server rejects a JSON boolean.
        """
        return self.post("/subscribe", {"applicationServerKey": application_server_key,
                                        "userVisibleOnly": "true"})["data"]

    def messages(self, client_hash: str) -> list[str]:
        """Decrypted payloads, oldest first, as UTF-8 text (``decrypted.toString('utf-8')``)."""
        return self.post("/get-notifications", {"clientHash": client_hash})["data"]["messages"]

    def expire(self, client_hash: str) -> None:
        """From now on the endpoint answers 410 Gone."""
        self.post(f"/expire-subscription/{client_hash}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@contextmanager
def web_push_testing(log: Path, timeout: float = 20) -> Iterator[WebPushTesting]:
    """npm's web-push-testing on a port it chose, endpoints at http://localhost:PORT.

    A missing node or package raises AssertionError (never a skip: interop must not
    silently stop being checked).
    """
    node = shutil.which("node")
    if node is None:
        raise AssertionError(f"node is not on PATH; install Node.js >= 20, then "
                             f"{WPT_INSTALL_HINT}")
    if not (WPT_DIR / "server.js").is_file():
        raise AssertionError(f"web-push-testing is not installed ({WPT_DIR} missing): "
                             f"{WPT_INSTALL_HINT}")
    with log.open("w") as out:
        proc = subprocess.Popen([node, "-e", _WPT_LAUNCHER, str(WPT_DIR)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=out, text=True)
    assert proc.stdout is not None
    try:
        url = ""
        deadline = time.monotonic() + timeout
        while not url:
            left = deadline - time.monotonic()
            line = read_line(proc.stdout, max(left, 0), "web-push-testing") if left > 0 else ""
            if not line:
                raise AssertionError(f"web-push-testing did not start (exit {proc.poll()}): "
                                     f"{log.read_text(errors='replace')[-2000:]}")
            if line.startswith("listening on "):
                url = line.split()[-1]
        # keep draining its stdout into the log, or a full pipe would stall the server
        drain = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
        drain.start()
        yield WebPushTesting(url, log)
    finally:
        _stop(proc, proc.terminate)


def _copy_lines(stream: IO[str], log: Path) -> None:
    with stream, log.open("a") as out:
        for line in stream:
            out.write(line)
            out.flush()


# --- nginx HTTPS sink ----------------------------------------------------------------------

NGINX_ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"

_NGINX_CONF = """\
{load_module}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  http2_max_concurrent_streams 128;
  server {{
    listen 127.0.0.1:{port} ssl{http2};
    ssl_certificate {cert};
    ssl_certificate_key {key};
{locations}
  }}
}}
"""


def echo_201(latency_ms: int = 0) -> str:
    """nginx directives answering 201 with a Location after reading the body, ``latency_ms`` late.

    Uses the echo module (``echo_sleep``): a push service tens of milliseconds away, where
    requests in flight rather than CPU decide the rate.
    """
    sleep = f"echo_sleep {latency_ms / 1000:.3f}; " if latency_ms else ""
    return f'echo_read_request_body; echo_status 201; add_header Location /m/1; {sleep}echo "";'


@dataclass(frozen=True)
class NginxSink:
    """A running sink: its port and the certificate (a self-signed CA) clients must trust."""

    port: int
    cert: str
    pid: int = 0  # nginx's master process (benches add its workers' CPU time)

    def url(self, host: str = "127.0.0.1") -> str:
        """Base URL without a trailing slash (``localhost`` also matches the certificate)."""
        return f"https://{host}:{self.port}"


@contextmanager
def nginx_sink(work: Path, locations: dict[str, str], *, http2: bool = False,
               worker_connections: int = 16384, timeout: float = 10) -> Iterator[NginxSink]:
    """nginx (1 worker) serving HTTPS from ``work`` with ``locations`` (prefix -> directives).

    The one place tests and benches start an nginx sink. It writes a certificate, the
    config and nginx's temp folders into ``work``; the echo module is loaded when a location
    uses it. nginx cannot report a port it chose, so this is the one starter here that binds
    and releases a port: a clash (nginx exits) is retried with another port. Raises
    RuntimeError (one line, with the install hint) when nginx or the echo module is missing
    or nginx does not answer within ``timeout``.
    """
    from pushcli.testing import make_self_signed_cert

    nginx = next((c for c in (shutil.which("nginx"), "/usr/sbin/nginx")
                  if c and os.path.exists(c)), None)
    if nginx is None:
        raise RuntimeError("nginx not found: apt-get install nginx-light "
                           "(scripts/install-deps.sh does)")
    echo = any("echo" in d for d in locations.values())
    if echo and not os.path.exists(NGINX_ECHO_MODULE):
        raise RuntimeError(f"{NGINX_ECHO_MODULE} missing: apt-get install "
                           "libnginx-mod-http-echo (scripts/install-deps.sh does)")
    cert, key = make_self_signed_cert(work)
    conf = work / "nginx.conf"
    body = "\n".join(f"    location {path} {{ {d} }}" for path, d in locations.items())
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf.write_text(_NGINX_CONF.format(
            load_module=f"load_module {NGINX_ECHO_MODULE};" if echo else "", dir=work,
            worker_connections=worker_connections, port=port, http2=" http2" if http2 else "",
            cert=cert, key=key, locations=body))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            if proc.poll() is None:  # running but never answered
                _stop(proc, proc.terminate)
                raise RuntimeError(f"nginx did not answer on port {port} within {timeout} s")
        if proc.poll() is None:
            break
    else:
        log = work / "error.log"
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError("nginx did not start: " + (err or (log.read_text(errors="replace")
                                                            if log.exists() else "")).strip())
    try:
        yield NginxSink(port, cert, proc.pid)
    finally:
        _stop(proc, proc.terminate)
        if proc.stderr:
            proc.stderr.close()


# --- desktop notifications (real notification clicks in headless Chromium) -----------------


@dataclass
class ShownNotification:
    """One Notify call Chromium made: the id we gave it, its text and its action keys."""

    id: int
    summary: str
    body: str
    actions: list[str]  # key, label, key, label...: Chromium keys buttons "0", "1"...


class DesktopNotifications:
    """A freedesktop notification daemon on a private D-Bus session bus.

    Headless Chromium on Linux hands notifications to ``org.freedesktop.Notifications``
    when that name has an owner on its session bus, and turns the daemon's
    ``ActionInvoked``/``NotificationClosed`` signals into trusted ``notificationclick`` and
    ``notificationclose`` events: the only way to click a notification in headless Chromium
    (a script-made NotificationEvent cannot waitUntil nor open a window). Clicks reach the
    service worker only in a persistent browser context (Playwright's new_context() profiles
    are not found when the click comes back). Start it with :func:`desktop_notifications`.
    """

    PATH = "/org/freedesktop/Notifications"
    NAME = "org.freedesktop.Notifications"

    def __init__(self, address: str) -> None:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self.address = address
        self.shown: list[ShownNotification] = []
        self.closed_by_browser: list[int] = []
        self._conn = open_dbus_connection(bus=address)
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        reply = self._conn.send_and_get_reply(message_bus.RequestName(self.NAME))
        assert reply.body == (1,), f"could not own {self.NAME}: {reply.body}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _send(self, message: Any) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_method_return

        while not self._stop.is_set():
            try:
                msg = self._conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            member = msg.header.fields.get(HeaderFields.member)
            if member == "GetCapabilities":
                reply = new_method_return(msg, "as", (["actions", "body", "persistence"],))
            elif member == "GetServerInformation":
                reply = new_method_return(msg, "ssss", ("pushcli-tests", "pushcli", "1", "1.2"))
            elif member == "Notify":
                _app, replaces, _icon, summary, body, actions, _hints, _timeout = msg.body
                nid = replaces or len(self.shown) + 1
                self.shown.append(ShownNotification(nid, summary, body, list(actions)))
                reply = new_method_return(msg, "u", (nid,))
            else:
                if member == "CloseNotification":
                    self.closed_by_browser.append(msg.body[0])
                reply = new_method_return(msg)
            self._send(reply)

    def wait_shown(self, count: int, timeout: float = 15) -> list[ShownNotification]:
        """The notifications shown so far, once there are at least ``count``."""
        wait_for(lambda: len(self.shown) >= count, timeout, f"{count} notification(s) shown")
        return list(self.shown)

    def _signal(self, member: str, signature: str, body: tuple[Any, ...]) -> None:
        from jeepney import DBusAddress, new_signal

        self._send(new_signal(DBusAddress(self.PATH, interface=self.NAME), member, signature,
                              body))

    def click(self, notification: ShownNotification, action_label: str | None = None) -> None:
        """Click the notification's body, or the button labelled ``action_label``."""
        key = "default"
        if action_label is not None:
            pairs = dict(zip(notification.actions[1::2], notification.actions[::2], strict=True))
            key = pairs[action_label]
        self._signal("ActionInvoked", "us", (notification.id, key))

    def dismiss(self, notification: ShownNotification) -> None:
        """The user closed it (reason 2: dismissed by the user)."""
        self._signal("NotificationClosed", "uu", (notification.id, 2))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


@contextmanager
def desktop_notifications(work: Path, timeout: float = 10) -> Iterator[DesktopNotifications]:
    """A private ``dbus-daemon`` in ``work`` and a :class:`DesktopNotifications` on it.

    Give Chromium ``DBUS_SESSION_BUS_ADDRESS=<.address>``. Needs ``dbus-daemon`` (Debian's
    ``dbus``) and the test extra's ``jeepney``; a missing one raises AssertionError.
    """
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise AssertionError("dbus-daemon not found: apt-get install dbus "
                             "(scripts/install-deps.sh does)")
    proc = subprocess.Popen([daemon, "--session", "--nofork", "--print-address=1",
                             f"--address=unix:path={work / 'bus'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    server = None
    try:
        address = read_line(proc.stdout, timeout, "dbus-daemon").strip()
        assert address.startswith("unix:"), (address, proc.poll())
        server = DesktopNotifications(address)
        yield server
    finally:
        if server is not None:
            server.close()
        _stop(proc, proc.terminate)
        proc.communicate()
