"""The generated web site: init_site, and sw.js / subscribe.js in a real headless Chromium.

Browser tests need Debian's Chromium (``apt-get install chromium``) at /usr/bin/chromium
(or $PUSHCLI_CHROMIUM) and Playwright for Python; they never download a browser.
They fail, never skip, when Chromium is missing. Pushes are delivered to the service
worker through the DevTools Protocol (ServiceWorker.deliverPushMessage), so no push
service or network is involved.

PUSHCLI_SCREENSHOTS=1 also writes docs/img/demo-page.png.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.errors import InputError
from pushcli.web import SITE_FILES, init_site
from tests import support
from tests.support import DesktopNotifications, Workspace, desktop_notifications

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CAMPAIGNS = sorted((ROOT / "sample_campaigns").glob("*.yml"))
SCREENSHOT_DIR = ROOT / "docs" / "img"
CHROMIUM = os.environ.get("PUSHCLI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
SUBSCRIBE_PATH = "/api/subscribe"

browser_test = pytest.mark.browser


def make_key() -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(raw)


KEY = make_key()


# --------------------------------------------------------------------------- init_site


def test_init_site_writes_files_with_key_and_url(tmp_path: Path) -> None:
    target = tmp_path / "new" / "site"
    written = init_site(target, KEY, subscribe_url="https://example.com/push/subscribe")
    assert written == [target / name for name in SITE_FILES]
    sw = (target / "sw.js").read_text()
    sub = (target / "subscribe.js").read_text()
    for text in (sw, sub):
        assert f"const APPLICATION_SERVER_KEY = {json.dumps(KEY)};" in text
        assert 'const SUBSCRIBE_URL = "https://example.com/push/subscribe";' in text
        assert "__PUSHCLI_" not in text
    assert 'src="subscribe.js"' in (target / "index.html").read_text()


def test_init_site_without_url_and_normalised_key(tmp_path: Path) -> None:
    padded_std = KEY.replace("-", "+").replace("_", "/") + "=" * (-len(KEY) % 4)
    init_site(tmp_path, padded_std)
    text = (tmp_path / "subscribe.js").read_text()
    assert f"const APPLICATION_SERVER_KEY = {json.dumps(KEY)};" in text
    assert "const SUBSCRIBE_URL = null;" in text


def test_init_site_escapes_url_as_js_literal(tmp_path: Path) -> None:
    url = '/sub?x="y"&z=\\'
    init_site(tmp_path, KEY, subscribe_url=url)
    assert f"const SUBSCRIBE_URL = {json.dumps(url)};" in (tmp_path / "sw.js").read_text()


def test_init_site_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "subscribe.js").write_text("mine")
    with pytest.raises(InputError) as err:
        init_site(tmp_path, KEY)
    expected = f"{tmp_path / 'subscribe.js'}: already exists (use --force to overwrite)"
    assert str(err.value) == expected
    assert (tmp_path / "subscribe.js").read_text() == "mine"
    assert not (tmp_path / "sw.js").exists(), "nothing is written when one file exists"

    init_site(tmp_path, KEY, force=True)
    assert KEY in (tmp_path / "subscribe.js").read_text()


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "example.com/subscribe", "//evil.example/x", "", "https://"]
)
def test_init_site_rejects_bad_subscribe_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(InputError, match="subscribe URL"):
        init_site(tmp_path / "s", KEY, subscribe_url=url)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("url", [
    "/\\evil.example/x", "\\/evil.example/x", "/\t/evil.example/x", "/\n/evil.example/x",
    "/\r\n/evil.example", "http://shop.example.com/subscribe", "javascript:alert(1)",
    "data:text/html,x", "https://shop.example.com\\@evil.example/x",
    "https://user@evil.example/x", "https:/evil.example/x", "https:\\\\evil.example/x",
    "/api/\tsubscribe",
])
def test_init_site_refuses_what_a_browser_would_send_elsewhere(tmp_path: Path, url: str) -> None:
    """Browsers drop tabs/newlines and read '\\' as '/': these would post subscribers'
    auth secrets to another host (or in the clear)."""
    with pytest.raises(InputError, match="subscribe URL"):
        init_site(tmp_path / "s", KEY, subscribe_url=url)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("url", ["/api/push-subscriptions", "/sub?next=//x&y=\\z",
                                 "https://api.example.com/push", "http://localhost:8000/sub",
                                 "http://127.0.0.1:9/sub"])
def test_init_site_accepts_same_origin_paths_and_https(tmp_path: Path, url: str) -> None:
    init_site(tmp_path, KEY, subscribe_url=url)
    assert f"const SUBSCRIBE_URL = {json.dumps(url)};" in (tmp_path / "sw.js").read_text()


@pytest.mark.parametrize("key", ["", "not base64!", b64url_encode(b"\x04" + b"\x01" * 31)])
def test_init_site_rejects_bad_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(InputError, match="applicationServerKey"):
        init_site(tmp_path / "s", key)
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- test server


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site directory; POST /api/subscribe records the JSON body."""

    received: list[Any]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != SUBSCRIBE_PATH:
            self.send_error(404)
            return
        try:
            record = json.loads(body)
        except ValueError:
            self.send_error(400)
            return
        self.received.append(record)
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SiteServer:
    def __init__(self, directory: Path) -> None:
        self.received: list[Any] = []
        handler = type("Handler", (_Handler,), {"received": self.received})
        factory = functools.partial(handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    directory = tmp_path_factory.mktemp("site")
    init_site(directory, KEY, subscribe_url=SUBSCRIBE_PATH)
    server = SiteServer(directory)
    yield server
    server.close()


@pytest.fixture(scope="module")
def site_without_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    directory = tmp_path_factory.mktemp("site-nourl")
    init_site(directory, KEY)
    server = SiteServer(directory)
    yield server
    server.close()


@pytest.fixture(scope="module")
def site_unreachable_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteServer]:
    directory = tmp_path_factory.mktemp("site-down")
    init_site(directory, KEY, subscribe_url=f"http://127.0.0.1:{_closed_port()}/subscribe")
    server = SiteServer(directory)
    yield server
    server.close()


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """This module's one Playwright (a second sync_playwright() in a thread is refused).

    Module scope, not session: the sync API keeps an asyncio loop running in the main
    thread while it is started, so any later test module that sends in-process
    (``asyncio.run``) failed with "cannot be called from a running event loop"."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
            "(apt-get install chromium) or PUSHCLI_CHROMIUM=/path/to/chromium. "
            "Do not use `playwright install`.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - test extra not installed
        pytest.fail(f"Playwright for Python is missing ({exc}): pip install -e .[test]")
    manager = sync_playwright().start()
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
    except Exception as exc:
        pytest.fail(f"could not start {CHROMIUM}: {exc}", pytrace=False)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    # not UTC nor the host's zone, so the test shows the browser's own zone is sent (Chromium
    # reports some zones by their old names, Asia/Kolkata as Asia/Calcutta: import accepts both)
    ctx = browser.new_context(locale="de-DE", timezone_id="America/New_York",
                              viewport={"width": 760, "height": 640})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


NOTIFICATIONS_JS = """async () => {
  const reg = await navigator.serviceWorker.ready;
  return (await reg.getNotifications()).map((n) => ({
    title: n.title, body: n.body, icon: n.icon, image: n.image, badge: n.badge, tag: n.tag,
    lang: n.lang, dir: n.dir, silent: n.silent, renotify: n.renotify,
    requireInteraction: n.requireInteraction, timestamp: n.timestamp,
    actions: (n.actions || []).map((a) => ({action: a.action, title: a.title, icon: a.icon})),
    data: n.data,
  }));
}"""

# Test-only probe in the worker: records each showNotification outcome, so a test waits
# for the push to be handled instead of polling getNotifications() (see PushPage.push).
CLOSE_ALL_JS = """async () => {
  const reg = await navigator.serviceWorker.ready;
  for (const n of await reg.getNotifications()) n.close();
  while ((await reg.getNotifications()).length) await new Promise((r) => setTimeout(r, 20));
}"""

INSTRUMENT_JS = """() => {
  self.__pushcliTestShown = [];
  self.__pushcliTestBadges = [];
  if (self.navigator.setAppBadge) {
    const setBadge = self.navigator.setAppBadge.bind(self.navigator);
    self.navigator.setAppBadge = (value) => {
      self.__pushcliTestBadges.push(value);
      return setBadge(value);
    };
  }
  const reg = self.registration;
  const show = reg.showNotification.bind(reg);
  reg.showNotification = (title, options) => show(title, options).then(
    (value) => { self.__pushcliTestShown.push('ok'); return value; },
    (err) => { self.__pushcliTestShown.push(String(err)); throw err; });
}"""

REGISTER_JS = """async () => {
  await navigator.serviceWorker.register('sw.js');
  const reg = await navigator.serviceWorker.ready;
  const worker = reg.active;
  if (worker.state !== 'activated') {
    await new Promise((resolve) => worker.addEventListener('statechange', () => {
      if (worker.state === 'activated') resolve();
    }));
  }
  return worker.state;
}"""


class PushPage:
    """A page with sw.js active and a DevTools session that delivers pushes to it."""

    def __init__(self, context: Any, server: SiteServer) -> None:
        self.context = context
        self.origin = server.origin
        context.grant_permissions(["notifications"], origin=self.origin)
        self.page = context.new_page()
        self.cdp = context.new_cdp_session(self.page)
        self.registrations: dict[str, dict[str, Any]] = {}
        self.cdp.on("ServiceWorker.workerRegistrationUpdated", self._on_registrations)
        self.cdp.send("ServiceWorker.enable")
        self.page.goto(self.origin + "/index.html")
        assert self.page.evaluate(REGISTER_JS) == "activated"
        self.registration_id = self._wait_registration()
        self.sw = self.worker()
        self.sw.evaluate(INSTRUMENT_JS)

    def _on_registrations(self, event: dict[str, Any]) -> None:
        for reg in event["registrations"]:
            self.registrations[reg["registrationId"]] = reg

    def _wait_registration(self) -> str:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            for reg in self.registrations.values():
                if reg["scopeURL"] == self.origin + "/" and not reg["isDeleted"]:
                    return str(reg["registrationId"])
            self.page.wait_for_timeout(50)  # lets Playwright dispatch CDP events
        raise AssertionError(f"no service worker registration seen: {self.registrations}")

    def push(self, data: bytes | str) -> None:
        """Deliver one push and wait until the worker's showNotification has settled."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        before = len(self.sw.evaluate("self.__pushcliTestShown"))
        for _attempt in range(2):
            self.cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": self.origin, "registrationId": self.registration_id, "data": text},
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                results = self.sw.evaluate("self.__pushcliTestShown")
                if len(results) > before:
                    assert results[-1] == "ok", f"showNotification failed: {results[-1]}"
                    # Chromium drops a notification from getNotifications() if asked before
                    # the display service has it (headless race), so give it a moment.
                    self.page.wait_for_timeout(150)
                    return
                self.page.wait_for_timeout(25)
        raise AssertionError(f"the service worker never handled the push {text[:80]!r}")

    def has_badging(self) -> bool:
        return bool(self.sw.evaluate("typeof self.navigator.setAppBadge === 'function'"))

    def clear(self) -> None:
        self.page.evaluate(CLOSE_ALL_JS)

    def notifications(self, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            shown = self.page.evaluate(NOTIFICATIONS_JS)
            if len(shown) >= count or time.monotonic() > deadline:
                return shown
            self.page.wait_for_timeout(200)

    def worker(self) -> Any:
        for worker in self.context.service_workers:
            if worker.url == self.origin + "/sw.js":
                return worker
        return self.context.wait_for_event("serviceworker", timeout=TIMEOUT_MS)


@pytest.fixture
def push_page(context: Any, site: SiteServer) -> PushPage:
    return PushPage(context, site)


def _url(origin: str, value: str | None) -> str:
    return urljoin(origin + "/", value) if value else ""


def expected_notification(payload: dict[str, Any], origin: str, max_actions: int) -> dict:
    """What a browser should show for a Declarative Web Push payload (per sw.js's mapping)."""
    n = payload["notification"]
    actions = [a for a in n.get("actions") or [] if a.get("action") and a.get("title")]
    return {
        "title": n["title"],
        "body": n.get("body", ""),
        "icon": _url(origin, n.get("icon")),
        "image": _url(origin, n.get("image")),
        "badge": _url(origin, n.get("badge")),
        "tag": n.get("tag", ""),
        "lang": n.get("lang", ""),
        "dir": n.get("dir", "auto"),
        "silent": n.get("silent", False),
        "renotify": bool(n.get("renotify", False) and n.get("tag")),
        "requireInteraction": n.get("require_interaction", False),
        "actions": [(a["action"], a["title"], _url(origin, a.get("icon"))) for a in actions][
            :max_actions
        ],
        "data": {
            "navigate": n.get("navigate"),
            "actions": {a["action"]: a["navigate"] for a in actions if a.get("navigate")},
            "data": n.get("data") or {},
        },
    }


def shown_as_expected(shown: dict[str, Any]) -> dict:
    keys = (
        "title",
        "body",
        "icon",
        "image",
        "badge",
        "tag",
        "lang",
        "dir",
        "silent",
        "renotify",
        "requireInteraction",
        "data",
    )
    result = {key: shown[key] for key in keys}
    result["actions"] = [(a["action"], a["title"], a["icon"]) for a in shown["actions"]]
    return result


HAND_WRITTEN = {
    "full": {
        "web_push": 8030,
        "notification": {
            "title": "Spring sale \u2013 40 % off",
            "navigate": "https://shop.example/sale?utm_source=push",
            "body": "Only this weekend. \U0001f338",
            "icon": "/img/icon-192.png",
            "tag": "spring-sale",
            "lang": "en-GB",
            "dir": "ltr",
            "actions": [
                {"action": "shop", "title": "Shop now", "navigate": "https://shop.example/s"},
                {"action": "later", "title": "Remind me"},
            ],
            "data": {"campaign": "spring", "navigate": "user value, kept apart"},
        },
        "app_badge": 3,
    },
    "minimal": {
        "web_push": 8030,
        "notification": {"title": "Hi", "navigate": "/news/1"},
    },
}


@browser_test
@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_declarative_payload_is_shown(push_page: PushPage, name: str) -> None:
    payload = HAND_WRITTEN[name]
    push_page.push(json.dumps(payload).encode())
    shown = push_page.notifications()
    assert len(shown) == 1, shown
    max_actions = push_page.page.evaluate("Notification.maxActions")
    expected = expected_notification(payload, push_page.origin, max_actions)
    assert shown_as_expected(shown[0]) == expected
    if name == "full":
        assert shown[0]["lang"] == "en-GB" and shown[0]["dir"] == "ltr"
        assert shown[0]["data"]["data"]["navigate"] == "user value, kept apart"
        assert shown[0]["data"]["actions"] == {"shop": "https://shop.example/s"}
        if push_page.has_badging():
            assert push_page.sw.evaluate("self.__pushcliTestBadges") == [3]


def _campaign_payloads() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in SAMPLE_CAMPAIGNS]


def test_sample_campaigns_exist() -> None:
    assert SAMPLE_CAMPAIGNS, f"no sample campaigns in {ROOT / 'sample_campaigns'}"


@browser_test
@pytest.mark.parametrize("path", _campaign_payloads())
def test_sample_campaign_payload_is_shown(push_page: PushPage, path: Path) -> None:
    """The exact bytes pushcli would encrypt and send, for the default text and each locale."""
    from pushcli.campaign import Renderer, load_campaign

    campaign = load_campaign(path)
    renderer = Renderer(campaign)
    variants: list[tuple[str | None, dict[str, Any]]] = [(None, {})]
    variants += [(locale, {"first_name": "Zoë", "city": "Köln"}) for locale in campaign.locales]
    max_actions = push_page.page.evaluate("Notification.maxActions")
    for locale, attributes in variants:
        payload_bytes = renderer.render(locale, attributes)
        assert isinstance(payload_bytes, bytes)
        payload = json.loads(payload_bytes)
        push_page.clear()
        push_page.push(payload_bytes)
        shown = push_page.notifications()
        assert len(shown) == 1, (locale, shown)
        expected = expected_notification(payload, push_page.origin, max_actions)
        assert shown_as_expected(shown[0]) == expected, locale
        badge = payload.get("app_badge", payload["notification"].get("app_badge"))
        if badge is not None and push_page.has_badging():
            assert push_page.sw.evaluate("self.__pushcliTestBadges")[-1:] == [badge]


@browser_test
@pytest.mark.parametrize(
    ("data", "title", "body"),
    [
        pytest.param("Server says hello", "Server says hello", "", id="text"),
        pytest.param("x" * 300, "x" * 119 + "\u2026", "", id="long-text"),
        pytest.param(b"", "127.0.0.1", "You have a new notification", id="empty"),
        pytest.param('{"hello": "world"}', "127.0.0.1", "You have a new notification", id="json"),
        pytest.param(
            '{"web_push": 8030, "notification": {"body": "no title"}}',
            "127.0.0.1",
            "You have a new notification",
            id="marker-without-title",
        ),
        pytest.param(
            '{"title": "Legacy", "body": "old format"}', "Legacy", "old format", id="legacy-json"
        ),
    ],
)
def test_other_payloads_show_generic_notification(
    push_page: PushPage, data: str | bytes, title: str, body: str
) -> None:
    push_page.push(data)
    shown = push_page.notifications()
    assert len(shown) == 1, shown
    expected_title = title.replace("127.0.0.1", push_page.origin.removeprefix("http://"))
    assert (shown[0]["title"], shown[0]["body"]) == (expected_title, body)
    assert shown[0]["data"] == {"navigate": None, "actions": {}, "data": {}}


@browser_test
def test_option_mapping_in_page(context: Any, site: SiteServer) -> None:
    """buildNotification maps the snake_case and legacy fields (run in a page, not the SW)."""
    page = context.new_page()
    page.goto(site.origin + "/index.html")
    page.add_script_tag(url=site.origin + "/sw.js")
    payload = {
        "web_push": 8030,
        "notification": {
            "title": "T",
            "navigate": "/x",
            "require_interaction": True,
            "silent": True,
            "renotify": True,
            "tag": "t",
            "image": "/i.png",
            "badge": "/b.png",
            "actions": [{"action": "a", "title": "A", "icon": "/a.png"}, {"title": "no id"}],
            "app_badge": 5,
        },
    }
    built = page.evaluate("(text) => self.pushcli.buildNotification(text)", json.dumps(payload))
    assert built["badge"] == 5, "notification.app_badge (old payloads) is accepted"
    opts = built["options"]
    assert opts["requireInteraction"] is True and "require_interaction" not in opts
    assert (opts["silent"], opts["renotify"], opts["image"], opts["badge"]) == (
        True,
        True,
        "/i.png",
        "/b.png",
    )
    assert opts["actions"] == [{"action": "a", "title": "A", "icon": "/a.png"}]
    payload["app_badge"] = 7
    payload["notification"].pop("tag")
    built = page.evaluate("(text) => self.pushcli.buildNotification(text)", json.dumps(payload))
    assert built["badge"] == 7, "top-level app_badge wins"
    assert "renotify" not in built["options"], "renotify without a tag is dropped"


@browser_test
def test_click_target_choice_in_page(context: Any, site: SiteServer) -> None:
    page = context.new_page()
    page.goto(site.origin + "/index.html")
    page.add_script_tag(url=site.origin + "/sw.js")  # listeners stay off outside a worker
    data = {
        "navigate": "https://shop.example/sale",
        "actions": {"shop": "https://shop.example/buy", "evil": "javascript:alert(1)"},
        "data": {},
    }
    target = "([data, action]) => self.pushcliClickTarget(data, action)"
    assert page.evaluate(target, [data, "shop"]) == "https://shop.example/buy"
    assert page.evaluate(target, [data, "later"]) == "https://shop.example/sale"
    assert page.evaluate(target, [data, ""]) == "https://shop.example/sale"
    assert page.evaluate(target, [data, "evil"]) == "https://shop.example/sale"
    assert page.evaluate(target, [{"navigate": None, "actions": {}}, ""]) == "/"
    assert page.evaluate(target, [None, "shop"]) == "/"
    assert page.evaluate(target, [{"navigate": "javascript:alert(1)"}, ""]) == "/"
    assert page.evaluate(target, [{"navigate": "/relative"}, ""]) == "/relative"


@browser_test
def test_click_target_in_service_worker(push_page: PushPage) -> None:
    push_page.push(json.dumps(HAND_WRITTEN["full"]))
    shown = push_page.notifications()
    worker = push_page.worker()
    data = shown[0]["data"]
    target = "([data, action]) => self.pushcliClickTarget(data, action)"
    assert worker.evaluate(target, [data, "shop"]) == "https://shop.example/s"
    assert worker.evaluate(target, [data, "later"]) == "https://shop.example/sale?utm_source=push"


@browser_test
def test_pushsubscriptionchange_resubscribes_and_posts(
    push_page: PushPage, site: SiteServer
) -> None:
    site.received.clear()
    worker = push_page.worker()
    result = worker.evaluate(
        """async () => {
          let usedKey = null;
          self.registration.pushManager.subscribe = async (options) => {
            usedKey = Array.from(new Uint8Array(options.applicationServerKey));
            return {toJSON: () => ({endpoint: 'https://push.example/new', expirationTime: null,
                                    keys: {p256dh: 'P', auth: 'A'}})};
          };
          await self.pushcli.renewSubscription({endpoint: 'https://push.example/old'}, null);
          return usedKey;
        }"""
    )
    assert bytes(result) == b64_decode(KEY), "re-subscribes with the embedded key"
    assert site.received == [
        {
            "endpoint": "https://push.example/new",
            "expirationTime": None,
            "keys": {"p256dh": "P", "auth": "A"},
            "oldEndpoint": "https://push.example/old",
            "locale": "de-DE",
            "timezone": "America/New_York",
        }
    ]


# --------------------------------------------------------------------------- subscribe page

FAKE_PUSH_MANAGER = """
(() => {
  const sub = {
    endpoint: 'https://push.example/send/abc123',
    expirationTime: null,
    options: null,
    toJSON() {
      return {endpoint: this.endpoint, expirationTime: null,
              keys: {p256dh: 'BPcMbnWQL5GOYX_fake_p256dh', auth: 'fake-auth'}};
    },
    unsubscribe: async () => true,
  };
  window.__subscribeCalls = [];
  PushManager.prototype.getSubscription = async function () { return null; };
  PushManager.prototype.subscribe = async function (options) {
    window.__subscribeCalls.push({
      userVisibleOnly: options.userVisibleOnly,
      key: Array.from(new Uint8Array(options.applicationServerKey)),
    });
    return sub;
  };
})();
"""


def _open_subscribe_page(context: Any, server: SiteServer, *, grant: bool = True) -> Any:
    if grant:
        context.grant_permissions(["notifications"], origin=server.origin)
    context.add_init_script(FAKE_PUSH_MANAGER)  # no push service offline: fake the browser's
    page = context.new_page()
    page.goto(server.origin + "/index.html")
    return page


def _status(page: Any) -> tuple[str, str]:
    page.wait_for_function(
        "() => ['ok', 'error', 'info'].includes(document.getElementById('status').dataset.state)"
    )
    el = page.locator("#status")
    return el.get_attribute("data-state"), el.inner_text()


@browser_test
def test_subscribe_button_posts_subscription(context: Any, site: SiteServer) -> None:
    site.received.clear()
    page = _open_subscribe_page(context, site)
    assert page.evaluate("window.__subscribeCalls") == [], "nothing happens before the click"
    assert page.locator("#locale").inner_text() == "de-DE"
    page.check("input[value=offers]")
    page.click("#subscribe")
    state, text = _status(page)
    assert state == "ok", text
    assert "news, offers" in text
    calls = page.evaluate("window.__subscribeCalls")
    assert calls == [{"userVisibleOnly": True, "key": list(b64_decode(KEY))}]
    assert site.received == [
        {
            "endpoint": "https://push.example/send/abc123",
            "expirationTime": None,
            "keys": {"p256dh": "BPcMbnWQL5GOYX_fake_p256dh", "auth": "fake-auth"},
            "tags": ["news", "offers"],
            "locale": "de-DE",
            "timezone": "America/New_York",
        }
    ]
    if os.environ.get("PUSHCLI_SCREENSHOTS") == "1":
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_DIR / "demo-page.png"), full_page=True)


@browser_test
def test_subscribe_without_url_shows_json(context: Any, site_without_url: SiteServer) -> None:
    page = _open_subscribe_page(context, site_without_url)
    page.click("#subscribe")
    state, text = _status(page)
    assert state == "ok", text
    assert page.locator("#subscription").is_visible()
    record = json.loads(page.locator("#subscription").input_value())
    assert record["endpoint"] == "https://push.example/send/abc123"
    assert record["tags"] == ["news"] and record["locale"] == "de-DE"


@browser_test
def test_subscribe_network_error(context: Any, site_unreachable_api: SiteServer) -> None:
    page = _open_subscribe_page(context, site_unreachable_api)
    page.click("#subscribe")
    state, text = _status(page)
    assert state == "error"
    assert "network error" in text


@browser_test
def test_subscribe_permission_denied(context: Any, site: SiteServer) -> None:
    page = _open_subscribe_page(context, site, grant=False)
    page.click("#subscribe")
    state, text = _status(page)
    assert state in ("error", "info"), text
    if state == "error":
        assert "blocked" in text and "Allow" in text
    assert page.evaluate("window.__subscribeCalls") == []


@browser_test
def test_unsupported_browser_message(context: Any, site: SiteServer) -> None:
    context.add_init_script("delete window.PushManager;")
    page = context.new_page()
    page.goto(site.origin + "/index.html")
    state, text = _status(page)
    assert state == "error"
    assert "does not support Web Push" in text


# --------------------------------------------------------------------------- engagement events
# Clicks need a trusted notificationclick: Chromium gets one only from a notification
# daemon (tests.support.DesktopNotifications) and only in a persistent context.

TOKEN = "tok_" + "A" * 36  # the shape of pushcli.tokens.make_token's output (40 characters)


class _EventHandler(http.server.BaseHTTPRequestHandler):
    """POST /events: records (Content-Type, body) of nginx's copies of the worker's posts."""

    received: list[tuple[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.headers.get("Content-Type", ""), json.loads(body)))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EventRecorder:
    """Keeps the documents the service worker posted (``events serve`` keeps only rows)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        handler = type("Handler", (_EventHandler,), {"received": self.received})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/events"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[Any]:
        return [doc for _type, doc in self.received]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@dataclass
class Clickable:
    """A persistent Chromium context whose notifications go to a desktop daemon we click."""

    context: Any
    daemon: DesktopNotifications
    opened: list[str]  # https://shop.example.com/ URLs the browser loaded (routed, offline)


@pytest.fixture(scope="module")
def clickable(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clickable]:
    work = tmp_path_factory.mktemp("clickable")
    with desktop_notifications(work) as daemon:
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": daemon.address}
        try:
            ctx = playwright.chromium.launch_persistent_context(
                str(work / "profile"), executable_path=CHROMIUM, headless=True,
                # the collector's nginx has a self-signed certificate; Playwright's
                # ignore_https_errors does not reach a service worker's own fetches
                args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"], env=env, timeout=60_000,
            )
        except Exception as exc:
            pytest.fail(f"could not start {CHROMIUM}: {exc}", pytrace=False)
        ctx.set_default_timeout(TIMEOUT_MS)
        opened: list[str] = []

        def shop(route: Any) -> None:  # the landing pages, without any network
            opened.append(route.request.url)
            route.fulfill(status=200, content_type="text/html", body="<p>shop</p>")

        ctx.route("https://shop.example.com/**", shop)
        try:
            yield Clickable(ctx, daemon, opened)
        finally:
            ctx.close()


def _until(page: Any, condition: Any, what: str) -> Any:
    """Poll ``condition`` while letting Playwright dispatch its events (no fixed sleep)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


def _open_pages(context: Any) -> list[str]:
    return [p.url for p in context.pages]


@browser_test
def test_tracking_target_and_event_document_in_page(context: Any, site: SiteServer) -> None:
    page = context.new_page()
    page.goto(site.origin + "/index.html")
    page.add_script_tag(url=site.origin + "/sw.js")
    tracking = "(data) => self.pushcli.trackingOf({navigate: null, actions: {}, data})"
    url = "https://shop.example.com/api/push-events"
    assert page.evaluate(tracking, {"pushcli_token": TOKEN, "pushcli_events": url}) == {
        "url": url, "token": TOKEN}
    for loopback in ("http://127.0.0.1:8091/events", "http://localhost:1/e", "http://[::1]:2/"):
        found = page.evaluate(tracking, {"pushcli_token": TOKEN, "pushcli_events": loopback})
        assert found == {"url": loopback, "token": TOKEN}, loopback
    refused = [
        {"pushcli_token": TOKEN},
        {"pushcli_events": url},
        {"pushcli_token": TOKEN, "pushcli_events": "http://shop.example.com/events"},
        {"pushcli_token": TOKEN, "pushcli_events": "javascript:alert(1)"},
        {"pushcli_token": TOKEN, "pushcli_events": "/relative"},
        {"pushcli_token": "x" * 97, "pushcli_events": url},
        {"pushcli_token": 7, "pushcli_events": url},
    ]
    for data in refused:
        assert page.evaluate(tracking, data) is None, data
    assert page.evaluate("() => self.pushcli.trackingOf(null)") is None
    doc = "([kind, action]) => self.pushcli.eventDocument('t', kind, action)"
    assert page.evaluate(doc, ["clicked", "shop"]) == {"token": "t", "event": "clicked",
                                                        "action": "shop"}
    assert page.evaluate(doc, ["clicked", ""]) == {"token": "t", "event": "clicked"}
    assert page.evaluate(doc, ["shown", None]) == {"token": "t", "event": "shown"}


def _tracked_campaign(ws: Workspace, events_url: str) -> Path:
    path = ws.dir / "tracked.yml"
    path.write_text(
        "name: tracked\n"
        "notification:\n"
        "  title: Winter sale\n"
        "  body: 30 % off today\n"
        "  url: https://shop.example.com/sale?ref=home\n"
        "  actions:\n"
        "    - {action: shop, title: Shop now, url: https://shop.example.com/buy}\n"
        "variants:\n"
        "  - {name: a, weight: 50, notification: {title: 'Winter sale: 30% off'}}\n"
        "  - {name: b, weight: 50, notification: {title: Your winter deals are here}}\n"
        "tracking:\n"
        f"  events_url: {events_url}\n"
        "vapid:\n"
        "  subject: mailto:ops@shop.example.com\n"
    )
    return path


def _behind_https(work: Path, collector: str, recorder: EventRecorder) -> Any:
    """``events serve`` behind nginx on https, as on a site (events_url must be https); nginx
    also copies each request to ``recorder``, so the test sees the documents themselves."""
    return support.nginx_sink(work, {
        "= /api/push-events": f"mirror /copy; proxy_pass {collector};",
        "= /copy": f"internal; proxy_pass {recorder.url};",
    })


@contextmanager
def _events_serve(ws: Workspace, origin: str) -> Iterator[str]:
    """``pushcli events serve --port 0`` for ``ws``'s store; yields its POST URL. Stopped with
    Ctrl-C (SIGINT), which writes what is still waiting."""
    proc = ws.start("events", "serve", "--host", "127.0.0.1", "--port", "0",
                    "--allow-origin", origin)
    assert proc.stdout is not None
    try:
        line = support.read_line(proc.stdout, 30, "pushcli events serve")
        assert line.startswith("listening on http://"), (line, proc.poll())
        yield line.split()[-1].rstrip("/") + "/events"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


@browser_test
def test_sent_push_reports_shown_clicked_and_closed(
    clickable: Clickable, site: SiteServer, tmp_path: Path
) -> None:
    """pushcli send's decrypted payload, shown by sw.js in Chromium; real clicks and a close
    reach a running ``events serve`` and end up in the report."""
    recorder = EventRecorder()
    (tmp_path / "nginx").mkdir()
    try:
        with support.emulator() as emu:
            ws = Workspace.create(tmp_path, emu)
            subs = ws.subscribe(1)
            ws.add_subscribers(subs)
            with _events_serve(ws, site.origin) as collector, \
                    _behind_https(tmp_path / "nginx", collector, recorder) as proxy:
                events_url = proxy.url() + "/api/push-events"
                variant = _send_and_click(ws, emu, subs[0]["endpoint"], events_url,
                                          clickable, site, recorder)
        report = json.loads(ws.pushcli("report", "tracked", "--json", check=True).stdout)
        counts = {name: {k: v[k] for k in ("sent", "shown", "clicked", "closed")}
                  for name, v in report["variants"].items()}
        once = {"sent": 1, "shown": 1, "clicked": 1, "closed": 1}  # once per subscriber and kind
        nothing = dict.fromkeys(once, 0)
        assert counts == {"a": once if variant == "a" else nothing,
                          "b": once if variant == "b" else nothing}, report
        assert report["variants"][variant]["click_rate"] == 1.0
    finally:
        recorder.close()


def _send_and_click(ws: Workspace, emu: Any, endpoint: str, events_url: str,
                    clickable: Clickable, site: SiteServer, recorder: EventRecorder) -> str:
    """``pushcli send`` the tracked campaign to one subscriber, click through its payload;
    returns the variant it was sent."""
    code, report = ws.send(_tracked_campaign(ws, events_url))
    assert code == 0 and report["sent"] == 1, report
    [payload] = emu.messages(endpoint)
    n = json.loads(payload)["notification"]
    token = n["data"]["pushcli_token"]  # signed by pushcli for this subscriber
    assert 0 < len(token) <= 96 and n["data"]["pushcli_events"] == events_url
    variant = {"Winter sale: 30% off": "a", "Your winter deals are here": "b"}[n["title"]]
    utm = f"utm_source=pushcli&utm_medium=web_push&utm_campaign=tracked&utm_content={variant}"
    assert n["navigate"] == f"https://shop.example.com/sale?ref=home&{utm}"
    assert n["actions"][0]["navigate"] == f"https://shop.example.com/buy?{utm}"
    _click_through(clickable, site, recorder, payload, token)
    return variant


def _click_through(clickable: Clickable, site: SiteServer, recorder: EventRecorder,
                   payload: bytes, token: str) -> None:
    """Show ``payload`` three times: click its body, click its button, dismiss it."""
    n = json.loads(payload)["notification"]
    page = PushPage(clickable.context, site)
    daemon = clickable.daemon
    before = len(daemon.shown)

    page.push(payload)
    shown = daemon.wait_shown(before + 1)[-1]
    assert shown.summary == n["title"] and shown.body.endswith("30 % off today")
    _until(page.page, lambda: recorder.events(), "the shown event")
    assert recorder.received == [("text/plain", {"token": token, "event": "shown"})]

    daemon.click(shown)  # the body: opens notification.navigate
    _until(page.page, lambda: n["navigate"] in _open_pages(clickable.context),
           f"a page at {n['navigate']}")
    _until(page.page, lambda: len(recorder.received) >= 2, "the clicked event")
    assert recorder.events()[1] == {"token": token, "event": "clicked"}
    assert n["navigate"] in clickable.opened

    page.push(payload)
    shown = daemon.wait_shown(before + 2)[-1]
    daemon.click(shown, "Shop now")  # a button: opens the action's own URL
    action_url = n["actions"][0]["navigate"]
    _until(page.page, lambda: action_url in _open_pages(clickable.context),
           f"a page at {action_url}")
    _until(page.page, lambda: len(recorder.received) >= 4, "the second clicked event")
    assert recorder.events()[2:4] == [
        {"token": token, "event": "shown"},
        {"token": token, "event": "clicked", "action": "shop"},
    ]

    page.push(payload)
    shown = daemon.wait_shown(before + 3)[-1]
    daemon.dismiss(shown)
    _until(page.page, lambda: len(recorder.received) >= 6, "the closed event")
    assert recorder.events()[4:] == [
        {"token": token, "event": "shown"},
        {"token": token, "event": "closed"},
    ]
    assert {content_type for content_type, _doc in recorder.received} == {"text/plain"}


@browser_test
def test_unreachable_collector_never_costs_the_notification_or_the_click(
    clickable: Clickable, site: SiteServer
) -> None:
    payload = {
        "web_push": 8030,
        "notification": {
            "title": "Still shown",
            "navigate": "https://shop.example.com/still-opens",
            "data": {"pushcli_token": TOKEN,
                     "pushcli_events": f"http://127.0.0.1:{_closed_port()}/events"},
        },
    }
    page = PushPage(clickable.context, site)
    before = len(clickable.daemon.shown)
    page.push(json.dumps(payload))
    shown = clickable.daemon.wait_shown(before + 1)[-1]
    assert shown.summary == "Still shown"
    clickable.daemon.click(shown)
    _until(page.page, lambda: payload["notification"]["navigate"] in _open_pages(
        clickable.context), "the page the click opens")
