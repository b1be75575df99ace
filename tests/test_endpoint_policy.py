"""The endpoint policy (SSRF): one answer at import, at send and for the resolver.

``check_endpoint`` refuses everything that is not a real push-service endpoint
unless the operator allowed its host explicitly; ``address_allowed`` is the
resolve-time half (a push-service name that resolves into the private network
is not contacted). Import and send are exercised through the CLI in-process.

Decision documented here: a trailing-dot host (``fcm.googleapis.com.``) is
refused rather than normalised -- browsers never issue one, the VAPID ``aud``
would not match the ``Host`` the service sees, and a second spelling of one
endpoint would defeat de-duplication by endpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from pushcli.cli import app
from pushcli.keys import generate_keys
from pushcli.pushservices import (
    Endpoint,
    EndpointRefused,
    address_allowed,
    allowed_hosts_from_env,
    canonical_endpoint,
    check_endpoint,
    is_public_address,
    service_for_host,
)
from pushcli.store import Store, deliveries, subscriptions
from pushcli.testing import PushServiceEmulator
from tests.support import real_subscription

FCM = "https://fcm.googleapis.com/fcm/send/dGVzdA:APA91bHrandomtoken_-123"

ACCEPTED = [
    (FCM, "fcm", "https://fcm.googleapis.com"),
    ("https://fcm.googleapis.com/wp/cXo3pVCIRUM:APA91bH-some_token", "fcm",
     "https://fcm.googleapis.com"),
    ("https://updates.push.services.mozilla.com/wpush/v2/gAAAAABmZ_abc-def", "mozilla",
     "https://updates.push.services.mozilla.com"),
    ("https://web.push.apple.com/QGuQyavXutnMH2tUjG-pq9oc1bLz0ZyK8a0d", "apple",
     "https://web.push.apple.com"),
    ("https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB%2bXyZ%3d", "wns",
     "https://wns2-par02p.notify.windows.com"),
    ("https://FCM.GoogleAPIs.com/fcm/send/abc", "fcm", "https://fcm.googleapis.com"),
    ("HTTPS://web.push.apple.com/abc", "apple", "https://web.push.apple.com"),
    ("https://fcm.googleapis.com:443/fcm/send/abc", "fcm", "https://fcm.googleapis.com"),
]

REFUSED = [
    # private, loopback, link-local, CGNAT, unique-local, mapped, NAT64
    "https://10.0.0.1/push", "https://10.255.255.255/push", "https://172.16.0.1/push",
    "https://172.31.255.254/push", "https://192.168.1.1/push", "https://127.0.0.1/push",
    "https://127.1.2.3/push", "https://[::1]/push", "https://localhost/push",
    "https://foo.localhost/push", "https://169.254.169.254/latest/meta-data/",
    "https://[fe80::1]/push", "https://100.64.0.1/push", "https://100.127.255.254/push",
    "https://[fc00::1]/push", "https://[fd12:3456::1]/push", "https://[::ffff:10.0.0.1]/push",
    "https://[::ffff:127.0.0.1]/push", "https://[64:ff9b::a00:1]/push", "https://0.0.0.0/push",
    "https://8.8.8.8/push",  # public, but IP literals are never push services
    # numeric spellings of 127.0.0.1 that some resolvers accept
    "http://2130706433/", "https://2130706433/", "https://0x7f.1/", "https://0x7f000001/",
    "https://017700000001/", "https://0177.0.0.1/", "https://127.1/",
    # not push services / lookalikes
    "https://evil.com/push", "https://fcm.googleapis.com.evil.com/fcm/send/x",
    "https://evilfcm.googleapis.com/fcm/send/x", "https://x.fcm.googleapis.com/fcm/send/x",
    "https://googleapis.com/fcm/send/x", "https://push.services.mozilla.com/wpush/v2/x",
    "https://push.apple.com/x", "https://notify.windows.com/w/?token=x",
    "https://evilpush.apple.com/x", "https://web.push.apple.com.evil.com/x",
    "https://xn--fcm-googleapis-xyz.com/x", "https://xn--fcm-0na.googleapis.com/x",
    "https://ｆｃｍ.googleapis.com/x", "https://ｅｖｉｌ.push.apple.com/x",
    "https://fcm.googleapis.com\u200b/x", "https://evil\u200b.push.apple.com/x",
    "https://fcm.googleapis.com\u3002/x", "https://a..push.apple.com/x",
    "https://.push.apple.com/x", "https://-a.push.apple.com/x",
    "https://127.0.0.1%2f.push.apple.com/x", "https://evil.com%23.push.apple.com/x",
    "https://fcm.googleapis.com%2e/x",
    # userinfo
    "https://fcm.googleapis.com@evil.com/", "https://user:pw@fcm.googleapis.com/fcm/send/x",
    "https://@fcm.googleapis.com/fcm/send/x", "https://evil.com\\@fcm.googleapis.com/",
    # backslashes anywhere
    "https://evil.com\\.push.apple.com/x", "https://fcm.googleapis.com\\x",
    "https://fcm.googleapis.com/fcm\\send/x",
    # odd ports on known services
    "https://fcm.googleapis.com:8443/fcm/send/x", "https://fcm.googleapis.com:80/x",
    "https://web.push.apple.com:22/x", "https://fcm.googleapis.com:99999/x",
    "https://fcm.googleapis.com:+443/x", "https://fcm.googleapis.com:0x1bb/x",
    # schemes
    "http://fcm.googleapis.com/fcm/send/x", "ftp://fcm.googleapis.com/x",
    "file:///etc/passwd", "file://fcm.googleapis.com/etc/passwd", "javascript:alert(1)",
    "data:text/plain,hello", "gopher://fcm.googleapis.com/x", "ws://fcm.googleapis.com/x",
    "wss://fcm.googleapis.com/x", "//fcm.googleapis.com/fcm/send/x", "fcm.googleapis.com/x",
    "https:fcm.googleapis.com/x", "https:/fcm.googleapis.com/x", "https:///fcm.googleapis.com/x",
    # trailing dot (refused, see module docstring)
    "https://fcm.googleapis.com./fcm/send/x", "https://web.push.apple.com./x",
    # whitespace, control characters, fragments
    " " + FCM, FCM + " ", FCM + "\n", "https://fcm.googleapis.com/fcm/send/a b",
    "https://fcm.googleapis.com/fcm/send/a\tb", "https://fcm.googleapis.com/fcm/send/a\x00b",
    "https://fcm.googleapis.com/fcm/send/a\x7fb", "https://fcm.googleapis.com/x\u2028",
    "https://fcm.googleapis.com\r\n.evil.com/x", "https://fcm.googleapis.com/x\u00a0",
    FCM + "#frag", FCM + "#", "https://fcm.googleapis.com#@evil.com/",
    # over-long and empty
    FCM + "a" * 5000, "", "   ", "https://", "https:///",
]


#: Accepted endpoints whose canonical spelling differs (percent-escapes in uppercase hex).
CANONICAL = {"https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB%2bXyZ%3d":
             "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB%2BXyZ%3D",
             "https://FCM.GoogleAPIs.com/fcm/send/abc": "https://fcm.googleapis.com/fcm/send/abc",
             "HTTPS://web.push.apple.com/abc": "https://web.push.apple.com/abc",
             "https://fcm.googleapis.com:443/fcm/send/abc":
             "https://fcm.googleapis.com/fcm/send/abc"}


SIX_SPELLINGS = [
    "https://fcm.googleapis.com/fcm/send/abc-1:Z",
    "HTTPS://FCM.googleapis.COM/fcm/send/abc-1:Z",
    "https://fcm.googleapis.com:443/fcm/send/abc-1:Z",
    "https://fcm.googleapis.com/fcm/send/abc-1:Z?",
    "https://fcm.googleapis.com/fcm/./x/../send/abc-1:Z",
    "https://fcm.googleapis.com/fcm/send/%61bc%2d1:Z",
]


def test_six_spellings_of_one_endpoint_have_one_canonical_url() -> None:
    assert {check_endpoint(u).url for u in SIX_SPELLINGS} == {
        "https://fcm.googleapis.com/fcm/send/abc-1:Z"}


@pytest.mark.parametrize(("url", "canonical"), [
    ("https://fcm.googleapis.com/a%2fb%3d", "https://fcm.googleapis.com/a%2Fb%3D"),
    ("https://fcm.googleapis.com/a/b/..", "https://fcm.googleapis.com/a/"),
    ("https://fcm.googleapis.com", "https://fcm.googleapis.com/"),
    ("https://fcm.googleapis.com/caf\u00e9", "https://fcm.googleapis.com/caf%C3%A9"),
    ("https://fcm.googleapis.com/a?b=%7e&c", "https://fcm.googleapis.com/a?b=~&c"),
    ("http://localhost:80/x", "http://localhost/x"),
])
def test_canonical_url_normalizes_escapes_dots_and_default_ports(url: str,
                                                                 canonical: str) -> None:
    ep = check_endpoint(url, frozenset({"localhost"}))
    assert ep.url == canonical
    assert check_endpoint(ep.url, frozenset({"localhost"})).url == canonical  # a fixed point


@pytest.mark.parametrize("url", [u for u, *_ in ACCEPTED] + SIX_SPELLINGS + [
    "https://fcm.googleapis.com/a/./b", "https://fcm.googleapis.com/a/..",
    "https://fcm.googleapis.com/.?x", "https://fcm.googleapis.com/a?"])
def test_canonical_endpoint_for_lookups_agrees_with_the_policy(url: str) -> None:
    # canonical_endpoint has a quick path for already-canonical URLs; it must never differ
    assert canonical_endpoint(url) == check_endpoint(url).url


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:8443/push/a", "http://127.0.0.1:8080/push/a", "http://localhost/x",
    "https://127.0.0.1:443/push/a", "http://127.0.0.1:80/push/a", "https://h.example:0443/x",
    "http://h.example:080/x", "https://h.example:4430/x", "http://h.example:8000/a/./b",
    "https://h.example:65536/x", "https://h.example:99999/x", "http://h.example:1/a?",
    "https://h.example:8443/a%2d", "http://H.example:8080/x", "https://h.example:443"])
def test_canonical_endpoint_of_a_url_with_a_port_agrees_with_the_policy(url: str) -> None:
    # the quick path also takes ports and plain http (loopback sinks, emulators)
    try:
        host = urlsplit(url).hostname or ""
        want = check_endpoint(url, frozenset({host.lower()})).url
    except (EndpointRefused, ValueError):
        want = url
    assert canonical_endpoint(url) == want


PORT_URLS = [
    "https://127.0.0.1:8443/push/a", "http://127.0.0.1:8080/push/a", "http://localhost/x",
    "https://127.0.0.1:443/push/a", "http://127.0.0.1:80/push/a", "https://h.example:0443/x",
    "http://h.example:080/x", "https://h.example:4430/x", "http://h.example:8000/a/./b",
    "https://h.example:65536/x", "https://h.example:99999/x", "http://h.example:1/a?",
    "https://h.example:8443/a%2d", "http://H.example:8080/x", "https://h.example:443"]


@pytest.mark.parametrize("url", [u for u, *_ in ACCEPTED] + REFUSED + SIX_SPELLINGS + PORT_URLS
                         + ["https://fcm.googleapis.com./x", "https://a..b.push.apple.com/x",
                            "https://fcm.googleapis.com:8443/x", "http://fcm.googleapis.com/x"])
@pytest.mark.parametrize("allowed", [frozenset(), frozenset({"127.0.0.1", "localhost",
                                                             "h.example"})])
def test_the_quick_path_for_canonical_urls_judges_exactly_as_the_full_policy(
        url: str, allowed: frozenset[str]) -> None:
    """check_endpoint judges an already-canonical URL by its (cached) origin; the verdict
    and the refusal text must be the full policy's."""
    from pushcli.pushservices import _check_endpoint

    try:
        want: object = _check_endpoint(url, allowed)
    except EndpointRefused as exc:
        want = str(exc)
    try:
        got: object = check_endpoint(url, allowed)
    except EndpointRefused as exc:
        got = str(exc)
    assert got == want


@pytest.mark.parametrize(("url", "reason"), [
    ("https://fcm.googleapis.com/fcm/send/a\udc80", "lone surrogate"),
    ("https://fcm.googleapis.com/fcm/send/a%zz", "malformed percent-escape"),
    ("https://fcm.googleapis.com/fcm/send/a%2", "malformed percent-escape"),
])
def test_unstorable_or_ambiguous_spellings_are_refused(url: str, reason: str) -> None:
    with pytest.raises(EndpointRefused, match=reason):
        check_endpoint(url)


@pytest.mark.parametrize(("url", "service", "origin"), ACCEPTED)
def test_real_push_service_endpoints_are_accepted(url: str, service: str, origin: str) -> None:
    ep = check_endpoint(url)
    assert isinstance(ep, Endpoint)
    assert ep.service == service and ep.origin == origin and ep.url == CANONICAL.get(url, url)
    assert ep.host == ep.host.lower()


@pytest.mark.parametrize("url", REFUSED)
def test_hostile_endpoints_are_refused(url: str) -> None:
    with pytest.raises(EndpointRefused) as info:
        check_endpoint(url)
    message = str(info.value)
    assert message and "\n" not in message


@pytest.mark.parametrize("url", [None, 12, b"https://fcm.googleapis.com/x", ["x"], {"a": 1}])
def test_non_string_endpoints_are_refused(url: object) -> None:
    with pytest.raises(EndpointRefused, match="missing"):
        check_endpoint(url)


def test_length_limit_is_inclusive_of_4096() -> None:
    prefix = "https://fcm.googleapis.com/fcm/send/"
    assert check_endpoint(prefix + "a" * (4096 - len(prefix)))
    with pytest.raises(EndpointRefused, match="longer"):
        check_endpoint(prefix + "a" * (4097 - len(prefix)))


@pytest.mark.parametrize("url", REFUSED)
def test_refused_even_when_a_different_host_is_allowed(url: str) -> None:
    with pytest.raises(EndpointRefused):
        check_endpoint(url, frozenset({"emulator.test", "127.0.0.2"}))


# --- allowed hosts -----------------------------------------------------------------------


def test_loopback_http_only_when_listed() -> None:
    url = "http://127.0.0.1:8090/push/abc"
    with pytest.raises(EndpointRefused):
        check_endpoint(url)
    ep = check_endpoint(url, frozenset({"127.0.0.1"}))
    assert ep.service == "127.0.0.1" and ep.origin == "http://127.0.0.1:8090"
    with pytest.raises(EndpointRefused):
        check_endpoint("http://localhost:8090/push/abc", frozenset({"127.0.0.1"}))
    ep = check_endpoint("http://LocalHost:8090/push/abc", frozenset({"localhost"}))
    assert ep.host == "localhost" and ep.origin == "http://localhost:8090"
    ep = check_endpoint("http://[::1]:8090/push/abc", frozenset({"::1"}))
    assert ep.origin == "http://[::1]:8090"


def test_allowed_non_loopback_host_needs_https() -> None:
    allowed = frozenset({"push.internal.example"})
    ep = check_endpoint("https://push.internal.example:8443/x", allowed)
    assert ep.service == "push.internal.example"
    assert ep.origin == "https://push.internal.example:8443"
    with pytest.raises(EndpointRefused, match="https"):
        check_endpoint("http://push.internal.example/x", allowed)
    with pytest.raises(EndpointRefused, match="https"):
        check_endpoint("http://10.0.0.5/x", frozenset({"10.0.0.5"}))
    assert check_endpoint("https://10.0.0.5/x", frozenset({"10.0.0.5"})).service == "10.0.0.5"


def test_allowed_host_still_refuses_userinfo_fragment_and_schemes() -> None:
    allowed = frozenset({"127.0.0.1"})
    for url in ("http://a@127.0.0.1:1/x", "http://127.0.0.1:1/x#f", "ftp://127.0.0.1/x",
                "http://127.0.0.1:1\\@evil.com/x", "http://127.0.0.1.:1/x"):
        with pytest.raises(EndpointRefused):
            check_endpoint(url, allowed)


def test_allowed_hosts_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHCLI_ALLOW_HOSTS", " LocalHost ,, 127.0.0.1,[::1],emu.test. ")
    hosts = allowed_hosts_from_env(["Extra.Example"])
    assert hosts == frozenset({"localhost", "127.0.0.1", "::1", "emu.test", "extra.example"})
    monkeypatch.delenv("PUSHCLI_ALLOW_HOSTS")
    assert allowed_hosts_from_env() == frozenset()


def test_service_for_host_is_exact_for_fcm_and_subdomain_for_others() -> None:
    assert service_for_host("fcm.googleapis.com") == "fcm"
    assert service_for_host("x.fcm.googleapis.com") is None
    assert service_for_host("evilfcm.googleapis.com") is None
    assert service_for_host("updates.push.services.mozilla.com") == "mozilla"
    assert service_for_host("push.services.mozilla.com") is None
    assert service_for_host("evilpush.services.mozilla.com") is None
    assert service_for_host("web.push.apple.com") == "apple"
    assert service_for_host("wns2-par02p.notify.windows.com") == "wns"
    assert service_for_host("notify.windows.com.evil") is None


# --- addresses (resolve time) --------------------------------------------------------------

PRIVATE_ADDRESSES = [
    "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1", "127.0.0.1", "127.255.0.1",
    "::1", "169.254.169.254", "fe80::1", "fe80::1%eth0", "100.64.0.1", "100.127.255.255",
    "fc00::1", "fd00:ec2::254", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b:1::a00:1", "::7f00:1", "::a00:1",
    "::ffff:0:a00:1", "2002:a00:1::1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "fec0::1", "0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",
    "255.255.255.255", "240.0.0.1", "192.0.2.1", "198.18.0.1", "2001:db8::1", "[::1]",
    "localhost", "2130706433", "0x7f000001", "", "not an address", "10.0.0.1/8",
]
PUBLIC_ADDRESSES = [
    "8.8.8.8", "1.1.1.1", "142.250.74.10", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111",
    "2a00:1450:4007:80a::200a", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_private_and_special_addresses_are_not_public(address: str) -> None:
    assert is_public_address(address) is False


#: Special-purpose ranges some Python releases call global (3.11.7: 192.0.0.9, 192.31.196.1,
#: 3fff::1, 5f00::1, 100:0:0:1::1, 2620:4f:8000::1, 4000::1), and their IPv6 wrappings.
SPECIAL_PURPOSE = [
    "192.0.0.9", "192.0.0.10", "192.0.0.170", "192.31.196.1", "192.52.193.1", "192.88.99.1",
    "192.175.48.1", "198.51.100.7", "203.0.113.7", "0.1.2.3", "100::1", "100:0:0:1::1",
    "2001:1::1", "2001:3::1", "2001:20::1", "3fff::1", "5f00::1", "2620:4f:8000::1", "4000::1",
    "::ffff:192.0.0.9", "64:ff9b::c000:9", "2002:c000:9::1", "64:ff9b::c01f:c401",
]


@pytest.mark.parametrize("address", SPECIAL_PURPOSE)
def test_iana_special_purpose_ranges_are_not_public_on_any_python(address: str) -> None:
    assert is_public_address(address) is False


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses(address: str) -> None:
    assert is_public_address(address) is True


def test_address_allowed_for_push_service_names_only_when_public() -> None:
    allowed = frozenset({"localhost", "127.0.0.1"})
    # a push-service name answered with a private address is not contacted
    for address in ("10.0.0.1", "127.0.0.1", "::1", "169.254.169.254", "::ffff:192.168.1.1",
                    "64:ff9b::a00:1", "100.64.1.1", "fd00::1"):
        assert address_allowed("fcm.googleapis.com", address, allowed) is False
        assert address_allowed("web.push.apple.com", address, frozenset()) is False
    assert address_allowed("fcm.googleapis.com", "142.250.74.10", allowed) is True
    assert address_allowed("web.push.apple.com", "2a00:1450:4007:80a::200a", allowed) is True
    # explicitly allowed hosts keep working (that is how tests reach the emulator)
    assert address_allowed("localhost", "127.0.0.1", allowed) is True
    assert address_allowed("localhost", "::1", allowed) is True
    assert address_allowed("LocalHost.", "127.0.0.1", allowed) is True
    assert address_allowed("127.0.0.1", "127.0.0.1", allowed) is True
    # ... but an allow-list entry for one name does not cover another
    assert address_allowed("localtest.me", "127.0.0.1", allowed) is False
    assert address_allowed("localhost.evil.com", "127.0.0.1", allowed) is False
    assert address_allowed("fcm.googleapis.com", "garbage", allowed) is False


# --- the same policy through the CLI ----------------------------------------------------------

runner = CliRunner()

EVIL_ENDPOINTS = [
    "https://10.0.0.1/push", "https://[::ffff:10.0.0.1]/push", "https://2130706433/",
    "https://fcm.googleapis.com@evil.com/", "https://evilfcm.googleapis.com/x",
    "http://fcm.googleapis.com/fcm/send/x", "https://fcm.googleapis.com:8443/x",
    "https://evil.com\\.push.apple.com/x", "https://169.254.169.254/latest/meta-data/",
]


def _invoke(db: Path, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["--db", str(db), *args], env=env or {}, catch_exceptions=True)


@pytest.mark.parametrize("evil", EVIL_ENDPOINTS)
def test_strict_import_with_one_evil_endpoint_imports_nothing(tmp_path: Path, evil: str) -> None:
    db = tmp_path / "s.db"
    subs = [real_subscription() for _ in range(5)]
    subs.insert(2, real_subscription(evil))
    path = tmp_path / "subs.json"
    path.write_text(json.dumps(subs))
    result = _invoke(db, "subscribers", "import", str(path), "--strict", "--json")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1, result.output
    with Store.open(db) as store:
        assert store.count(status="all") == 0
    doc = json.loads(result.stdout)
    assert doc["committed"] is False and doc["rejected"] == 1 and doc["added"] == 0
    assert "[2]" in doc["errors"][0] and "endpoint" in doc["errors"][0]
    # without --strict the good ones are stored and the evil one is not
    result = _invoke(db, "subscribers", "import", str(path), "--json")
    assert result.exit_code == 1
    with Store.open(db) as store:
        assert store.count(status="all") == 5
        assert store.find_by_endpoint(evil) is None


def test_import_allow_host_does_not_open_other_hosts(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    path = tmp_path / "subs.ndjson"
    path.write_text("\n".join(json.dumps(s) for s in (
        real_subscription("http://127.0.0.1:9/push/a"),
        real_subscription("http://localhost:9/push/b"),
        real_subscription("http://127.0.0.1.evil.com:9/push/c"),
    )) + "\n")
    result = _invoke(db, "subscribers", "import", str(path), "--json",
                     "--allow-host", "127.0.0.1")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["added"] == 1


def test_send_blocks_evil_rows_already_in_the_store_without_contacting_them(
    tmp_path: Path,
) -> None:
    """Rows that bypassed import (older version, manual SQL) are blocked at send."""
    db = tmp_path / "s.db"
    key = generate_keys(tmp_path)
    with PushServiceEmulator(port=0, seed=3) as emu:
        good = emu.create_subscriptions(4, key.application_server_key)
        # evil rows whose URLs would all reach the emulator if contacted
        port = emu.port
        target = emu.create_subscriptions(6, key.application_server_key)
        paths = [s["endpoint"].split(str(port), 1)[1] for s in target]
        evil = [
            f"http://localhost:{port}{paths[0]}",  # loopback, not allowed
            f"http://2130706433:{port}{paths[1]}",  # decimal 127.0.0.1
            f"http://fcm.googleapis.com@127.0.0.1:{port}{paths[2]}",  # userinfo
            f"http://127.0.0.1:{port}{paths[3]}#x",  # fragment
            f"https://10.0.0.1{paths[4]}",
            f"http://[::ffff:127.0.0.1]:{port}{paths[5]}",
        ]
        with Store.open(db) as store:
            store.import_subscriptions(
                [("t", sub) for sub in _subs(good)])
            with store.engine.begin() as conn:
                now = time.time()
                for url, s in zip(evil, target, strict=True):
                    conn.execute(insert(subscriptions).values(
                        endpoint=url, p256dh=s["keys"]["p256dh"], auth=s["keys"]["auth"],
                        tags="[]", attributes="{}", status="active", created_at=now,
                        updated_at=now))
        campaign = tmp_path / "c.yml"
        campaign.write_text(
            "name: policy\nnotification:\n  title: Hi\n  body: There\n"
            "  url: https://shop.example.com/\nvapid:\n  subject: mailto:ops@shop.example.com\n")
        result = _invoke(db, "send", str(campaign), "--json", "--key",
                         str(tmp_path / "vapid_private.pem"),
                         env={"PUSHCLI_ALLOW_HOSTS": "127.0.0.1"})
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["sent"] == 4 and report["blocked"] == 6 and report["total"] == 10
        assert emu.stats()["total_requests"] == 4
        for s in target:
            assert emu.request_times(s["endpoint"]) == []
    with Store.open(db) as store, store.engine.connect() as conn:
        rows = conn.execute(select(subscriptions.c.endpoint, deliveries.c.outcome,
                                   deliveries.c.attempts, deliveries.c.reason).join(
            deliveries, deliveries.c.subscription_id == subscriptions.c.id)).all()
    by_endpoint = {r[0]: r for r in rows}
    for url in evil:
        _, outcome, attempts, reason = by_endpoint[url]
        assert outcome == "blocked" and attempts == 0 and reason


def _subs(records: list[dict]):
    from pushcli.subscriptions import make_subscription

    return [make_subscription(r, allowed_hosts=frozenset({"127.0.0.1"})) for r in records]


def test_every_whitespace_and_control_character_is_refused_anywhere_in_the_url() -> None:
    """Every code point ``str.isspace()`` calls whitespace, every C0 control and DEL, in the
    middle of an otherwise valid endpoint; and no other code point up to U+3000 (the last
    whitespace), nor a few beyond, trips that rule."""
    from pushcli.pushservices import EndpointRefused, check_endpoint

    base = "https://fcm.googleapis.com/fcm/send/"
    for cp in [*range(0x3001), 0xFEFF, 0x1F600, 0x10FFFF]:
        c = chr(cp)
        bad = c.isspace() or cp < 32 or cp == 127
        try:
            check_endpoint(base + "ab" + c + "cd")
        except EndpointRefused as exc:
            assert bad == ("whitespace or control" in str(exc)), (hex(cp), str(exc))
        else:
            assert not bad, hex(cp)
