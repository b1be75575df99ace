"""What differs per push service: which hosts are real push services, the
endpoint policy every layer applies, and how a response becomes an outcome.

Everything here is pure (no I/O) so that import, send and doctor agree on one
answer for the same endpoint or the same HTTP response.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from pushcli.defaults import ALLOW_HOSTS_ENV

#: Host suffixes of the real push services (a leading dot means "any subdomain").
KNOWN_SERVICES: dict[str, tuple[str, ...]] = {
    "fcm": ("fcm.googleapis.com",),
    "mozilla": (".push.services.mozilla.com",),
    "apple": (".push.apple.com",),
    "wns": (".notify.windows.com",),
}

MAX_ENDPOINT_LENGTH = 4096

#: One DNS label in letters-digits-hyphen form (what push services hand out):
#: no empty labels, no IDN/Unicode, no percent-escapes or backslashes.
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: What ``str.isspace()`` calls whitespace (re's Unicode ``\s`` is the same set), C0 controls
#: and DEL: one C-speed scan instead of a Python loop per character (check_endpoint runs per
#: message at send, per row at import).
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")

#: IANA IPv4 Special-Purpose Address Registry (RFC 6890 and later), plus multicast and the
#: limited broadcast: no push service lives there. An explicit table, because what
#: ``ipaddress``' ``is_global``/``is_private`` say changes between Python patch releases
#: (3.11.7 calls 192.0.0.0/24 global). The three anycast AS112/AMT blocks are globally
#: reachable, but a push service's name never resolves into them either.
_SPECIAL_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (CGNAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (cloud metadata services)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, NAT64 discovery, ...)
    "192.0.2.0/24",  # TEST-NET-1
    "192.31.196.0/24",  # AS112-v4
    "192.52.193.0/24",  # AMT
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "192.175.48.0/24",  # AS112 direct delegation
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved
    "255.255.255.255/32",  # limited broadcast
))
#: IANA IPv6 Special-Purpose Address Registry, plus the deprecated forms ``ipaddress`` does
#: not know; anything outside global unicast 2000::/3 is refused as well.
_SPECIAL_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::/96",  # IPv4-compatible (deprecated)
    "::ffff:0:0/96",  # IPv4-mapped (unwrapped first)
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "100:0:0:1::/64",  # dummy prefix
    "2001::/23",  # IETF protocol assignments (Teredo 2001::/32, benchmarking, ORCHID, ...)
    "2001:db8::/32",  # documentation
    "2620:4f:8000::/48",  # AS112 direct delegation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing (SRv6) SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
))
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: unwrapped


class Outcome(StrEnum):
    """Final outcome of one (campaign, subscriber) delivery."""

    SENT = "sent"
    EXPIRED = "expired"
    REJECTED = "rejected"
    AUTH = "auth"
    BLOCKED = "blocked"
    FAILED = "failed"
    #: In flight when an earlier run stopped without recording it, and not resent
    #: (``on_uncertain: skip``): may or may not have arrived. Final: never resent,
    #: never retried by --retry-failed, never counted by prune.
    UNCERTAIN = "uncertain"
    #: Over ``audience.frequency_cap`` when it became due (send windows): never sent for
    #: this campaign. Final: not retried, never counted by prune.
    CAPPED = "capped"
    #: Still waiting for its send window when ``schedule.end`` passed. Final, like capped.
    MISSED = "missed"
    #: In the campaign's ``holdout`` (the A/B control group): never sent. Final: never
    #: retried by --retry-failed, never counted by prune; reports show the count.
    HOLDOUT = "holdout"


#: Outcomes ``send --retry-failed`` sends again: ``failed`` (temporary trouble,
#: or held back by a stopped push service) and ``blocked`` (the allow-list may
#: include the host by now; still refused ones are recorded ``blocked`` again).
RETRY_OUTCOMES = frozenset({Outcome.FAILED, Outcome.BLOCKED})


class Fault(StrEnum):
    """Whose fault an unsuccessful answer is; decides whether prune may count it.

    Only ``subscriber`` answers say something about that one subscription.
    ``held`` marks a subscriber the engine never asked about (its push service
    was stopped for auth failures or by the circuit breaker).
    """

    SUBSCRIBER = "subscriber"
    SENDER = "sender"
    SERVICE = "service"
    UNKNOWN = "unknown"
    HELD = "held"


class EndpointRefused(ValueError):
    """The endpoint is not one pushcli will ever contact; the message says why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A policy-checked endpoint: where it goes and which service runs it."""

    url: str
    host: str
    origin: str  # scheme://host[:port], the VAPID ``aud``
    service: str  # fcm | mozilla | apple | wns | the allowed host name


def allowed_hosts_from_env(extra: Iterable[str] = ()) -> frozenset[str]:
    """Hosts allowed besides the real push services: ``PUSHCLI_ALLOW_HOSTS`` plus ``extra``."""
    names = [h for h in os.environ.get(ALLOW_HOSTS_ENV, "").split(",")]
    names.extend(extra)
    return frozenset(_normalize_host(h) for h in names if h.strip())


def _normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def service_for_host(host: str) -> str | None:
    """Name of the known push service serving ``host``, or None."""
    for name, patterns in KNOWN_SERVICES.items():
        for pattern in patterns:
            if pattern.startswith("."):
                if host.endswith(pattern) and len(host) > len(pattern):
                    return name
            elif host == pattern:
                return name
    return None


# --- what a push service accepts from the sender (checked before anything is sent) -----

#: Top-level names that never belong to a public domain (RFC 2606/6761, mDNS, private use).
_NON_PUBLIC_TLDS = frozenset({"localhost", "local", "invalid", "test", "internal", "lan"})


def vapid_subject_problem(subject: object) -> str | None:
    """Why a push service would refuse this VAPID ``sub`` claim, or None if none would.

    The one subject rule: ``keys generate``, campaign loading, ``send``,
    ``send --dry-run`` and ``doctor`` all ask this function, so a subject that
    passes one of them passes all. Apple is the strictest service and answers
    403 BadJwtToken for every message (so for the whole campaign) when the
    subject is not a ``mailto:`` address or ``https:`` URL at a real-looking
    public domain: a localhost (or ``.localhost``) host, an IP address, a
    single-label name, spaces or angle brackets are all refused.
    """
    if not isinstance(subject, str) or not subject:
        return "is empty (use mailto:you@example.com or an https URL)"
    if _SPACE_OR_CONTROL.search(subject) or "<" in subject or ">" in subject:
        return "must not contain spaces or angle brackets (Apple refuses them)"
    if subject.startswith("mailto:"):
        local, at, host = subject[len("mailto:"):].rpartition("@")
        if not at or not local or any(c in local for c in "@,;?") or not host:
            return "mailto: subject must be one address, like mailto:ops@example.com"
    elif subject.startswith("https://"):
        try:
            parts = urlsplit(subject)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return "https subject is not a valid URL"
        host = parts.hostname or ""
        if not host:
            return "https subject has no host"
        if parts.username is not None or parts.password is not None:
            return "https subject must not contain user information"
    else:
        return "must start with mailto: or https:"
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "Apple's push service refuses a localhost subject (403 BadJwtToken)"
    labels = host.split(".")
    tld = labels[-1]
    if (len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels)
            or not tld.isalpha() or len(tld) < 2 or tld in _NON_PUBLIC_TLDS):
        return (f"{host} is not a public domain name "
                "(Apple refuses such a subject with 403 BadJwtToken)")
    return None


def topic_problem(service: str, topic: str | None) -> str | None:
    """Why ``service`` would reject every message carrying this ``Topic`` header, or None.

    Per-service limits beyond RFC 8030's (which the campaign loader checks):
    Apple answers 400 BadWebPushTopic to a topic whose length is 1 more than a
    multiple of 4 (it base64url-decodes it). Every recipient at that service
    would be rejected, so send and --dry-run refuse the campaign instead.
    """
    if topic is None:
        return None
    if service == "apple" and len(topic) % 4 == 1:
        return (f"Apple's push service rejects a topic of {len(topic)} characters "
                "(length 1 more than a multiple of 4: 400 BadWebPushTopic); "
                "add or remove a character")
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address.

    Decided by the explicit IANA special-purpose tables above (``_SPECIAL_V4``,
    ``_SPECIAL_V6``), never by ``ipaddress``' own flags, so every Python release
    gives the same answer. IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
    IPv6 forms are unwrapped first so they cannot smuggle a private IPv4 address.
    """
    if not isinstance(address, str):
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        else:
            return ip in _GLOBAL_UNICAST_V6 and not any(ip in net for net in _SPECIAL_V6)
    return not any(ip in net for net in _SPECIAL_V4)


def address_allowed(host: str, address: str, allowed_hosts: frozenset[str]) -> bool:
    """May a connection to ``host`` go to ``address`` (what its name resolved to)?

    For the resolver at send time: a host the operator allowed explicitly
    (``PUSHCLI_ALLOW_HOSTS`` / ``--allow-host``, how tests reach a loopback
    emulator) may resolve anywhere; any other host, i.e. a known push service,
    only to a public unicast address (``is_public_address``), so a DNS answer
    pointing into the private network is never contacted.
    """
    if isinstance(host, str) and _normalize_host(host) in allowed_hosts:
        return True
    return is_public_address(address)


def _is_ldh_host(host: str) -> bool:
    if len(host) > 253:
        return False
    return all(_LABEL_RE.match(label) for label in host.split("."))


#: RFC 3986 unreserved characters: a percent-escape of one of these means the character.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Characters kept as they are in a canonical path or query (unreserved, sub-delims, ":@/?").
_KEEP = _UNRESERVED | frozenset("!$&'()*+,;=:@/?")
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _normalize_escapes(text: str) -> str:
    """Percent-encoding in one canonical form (RFC 3986 6.2.2.2).

    Escapes of unreserved characters are decoded, every other escape gets
    uppercase hex, and characters a browser would escape (non-ASCII, quotes,
    brackets...) are escaped as UTF-8. Raises EndpointRefused on a stray ``%``.
    """
    if _ESCAPE_RE.search(text):
        raise EndpointRefused("endpoint has a malformed percent-escape")
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%":
            char = chr(int(text[i + 1:i + 3], 16))
            out.append(char if char in _UNRESERVED else "%" + text[i + 1:i + 3].upper())
            i += 3
            continue
        if c in _KEEP:
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8"))  # check_endpoint: no surrogates
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4: ``/a/./b/../c`` is ``/a/c``; the result always starts with ``/``."""
    if "." not in path:
        return path or "/"
    segments = path.split("/")[1:]  # the path of an absolute URL starts with "/"
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def check_endpoint(url: object, allowed_hosts: frozenset[str] = frozenset()) -> Endpoint:
    """The one endpoint policy, applied at import, at send and by doctor.

    A URL already in canonical form (what push services hand out, and what import
    stores) is judged by its origin alone, once per origin (``_origin_policy``): a
    send checks every subscriber's endpoint, and normalizing a 150-character path
    character by character was most of that cost. Anything else takes
    ``_check_endpoint``'s full path, as does a refused origin (same message).
    """
    if (isinstance(url, str) and len(url) <= MAX_ENDPOINT_LENGTH
            and _PLAINLY_CANONICAL.fullmatch(url)):
        base = _origin_policy(url[:url.index("/", 8)], allowed_hosts)
        if base is not None:
            return Endpoint(url=url, host=base.host, origin=base.origin, service=base.service)
    return _check_endpoint(url, allowed_hosts)


@functools.lru_cache(maxsize=1024)
def _origin_policy(origin: str, allowed_hosts: frozenset[str]) -> Endpoint | None:
    """The policy's verdict on a canonical origin (``scheme://host[:port]``), or None
    when it is refused (the caller then takes the full path for the exact reason)."""
    try:
        return _check_endpoint(origin + "/", allowed_hosts)
    except EndpointRefused:
        return None


def _check_endpoint(url: object, allowed_hosts: frozenset[str]) -> Endpoint:
    """``check_endpoint`` for any spelling: every check, then the canonical form.

    https only, to a known push-service host (plain ASCII letters, digits and
    hyphens; exact ``fcm.googleapis.com`` or a subdomain of the other services)
    on the default port, with no userinfo, fragment, backslash, whitespace or
    control characters. Host names are case-insensitive; a trailing-dot host
    (``fcm.googleapis.com.``) is refused. Hosts in ``allowed_hosts`` may use
    any port, and plain http when they are loopback. IP literals, and numeric
    host spellings (``2130706433``, ``0x7f.1``), are refused unless allowed
    explicitly. Raises EndpointRefused with a short reason.

    ``Endpoint.url`` is the canonical spelling (RFC 3986 6.2.2): lowercase
    scheme and host, no default port, no empty ``?``, dot segments resolved,
    percent-escapes normalized. Import stores it and send posts to it, so
    ``HTTPS://FCM.googleapis.com:443/fcm/send/./a%2d?`` and its other
    spellings are one subscription, one row and one message.
    """
    if not isinstance(url, str) or not url.strip():
        raise EndpointRefused("endpoint is missing")
    if len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(f"endpoint is longer than {MAX_ENDPOINT_LENGTH} characters")
    if url != url.strip() or _SPACE_OR_CONTROL.search(url):
        raise EndpointRefused("endpoint contains whitespace or control characters")
    if "\\" in url:
        raise EndpointRefused("endpoint must not contain a backslash")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell one ("\\udc80"); no database can store it
        raise EndpointRefused(
            "endpoint contains an invalid character (a lone surrogate such as \\udc80)"
        ) from None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"endpoint is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        raise EndpointRefused("endpoint must be an absolute https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EndpointRefused("endpoint must not contain user information")
    raw_host = parts.hostname or ""
    host = _normalize_host(raw_host)
    if not host:
        raise EndpointRefused("endpoint has no host")
    if raw_host.endswith("."):
        # Browsers never hand these out; the VAPID aud (origin without the dot)
        # would not match the Host the service sees, and a second spelling of
        # one endpoint would defeat de-duplication by endpoint.
        raise EndpointRefused(f"endpoint host must not end with a dot: {host}.")
    if "#" in url:
        raise EndpointRefused("endpoint must not contain a fragment")
    if host in allowed_hosts:
        if scheme == "http" and not _is_loopback(host):
            raise EndpointRefused(
                f"endpoint must be https (plain http only for loopback hosts): {host}"
            )
        service = host
    else:
        if scheme != "https":
            raise EndpointRefused(
                f"endpoint must be an absolute https URL (plain http only to a loopback host "
                f"allowed with {ALLOW_HOSTS_ENV}): {host}")
        service = service_for_host(host) if _is_ldh_host(host) else None
        if service is None:
            raise EndpointRefused(
                f"host {host} is not a known push service "
                f"(allow it with {ALLOW_HOSTS_ENV} or --allow-host)"
            )
        if port not in (None, 443):
            raise EndpointRefused(f"endpoint port {port} is not allowed for {host}")
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None and port != {"https": 443, "http": 80}[scheme]:
        netloc += f":{port}"
    path = _remove_dot_segments(_normalize_escapes(parts.path))
    query = _normalize_escapes(parts.query)
    origin = f"{scheme}://{netloc}"
    canonical = origin + path + (f"?{query}" if query else "")
    return Endpoint(url=canonical, host=host, origin=origin, service=service)


#: A URL already in canonical form: lowercase host, no default port, no percent-escape,
#: no dot segment, no empty query (what FCM, Mozilla and Apple hand out, and what
#: loopback emulators and sinks use: http, or a port other than the scheme's own).
_PLAINLY_CANONICAL = re.compile(
    r"(?:https://[a-z0-9.-]+(?::(?!443(?![0-9]))[1-9][0-9]{0,4})?"
    r"|http://[a-z0-9.-]+(?::(?!80(?![0-9]))[1-9][0-9]{0,4})?)"
    r"(?:/(?!\.\.?(?:[/?]|$))[A-Za-z0-9._~!$&'()*+,;=:@-]*)+"
    r"(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]+)?")


def canonical_endpoint(url: str) -> str:
    """The spelling ``check_endpoint`` gives ``url``, whatever its host: for lookups.

    ``--to`` and ``find_by_endpoint`` match stored rows by this form, so any
    spelling of an endpoint finds its subscriber. An endpoint the policy
    refuses for another reason than its host comes back unchanged.
    """
    if _PLAINLY_CANONICAL.fullmatch(url):
        return url  # the common case, much quicker: send scans every stored endpoint
    try:
        host = _normalize_host(urlsplit(url).hostname or "")
        return check_endpoint(url, frozenset({host})).url
    except (EndpointRefused, ValueError):
        return url


# --- responses -------------------------------------------------------------------------

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Retryable answers that mean "slow down" (406 only as WNS's throttling, see classify).
THROTTLING_STATUSES = frozenset({406, 429, 503})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one HTTP attempt means: a final outcome, or retry (after a delay).

    ``fault`` says whose problem it is (prune counts only ``subscriber`` ones,
    and ``unknown`` ones that did not hit most of a campaign); ``wrong_path``
    is FCM's "use the /wp/ form" 404, which is not an expiry.
    """

    outcome: Outcome | None  # None = retry
    reason: str = ""
    retry_after: float | None = None  # seconds, when the service asked
    fault: Fault | None = None  # None for sent
    wrong_path: bool = False
    #: "Slow down" (429, 503, WNS's throttling 406): the engine halves that origin's
    #: concurrency and its pacer learns a lower rate. Other retries (500, 502, 504) do not.
    throttled: bool = False


# --- whose fault: the per-service reason tables ------------------------------------------
#
# One table per way a push service names its reason. Reason names do not clash
# between services, so a response is looked up in every table that applies to
# its shape (JSON ``reason``, JSON ``errno``, WNS headers, FCM body text).

#: Apple (``{"reason": "..."}``; also the shape pushcli's emulator answers in).
APPLE_REASONS: dict[str, Fault] = {
    # about this one subscription
    "BadDeviceToken": Fault.SUBSCRIBER,
    "DeviceTokenNotForTopic": Fault.SUBSCRIBER,
    "ExpiredSubscription": Fault.SUBSCRIBER,
    "Unregistered": Fault.SUBSCRIBER,
    "BadPath": Fault.SUBSCRIBER,
    "NotFound": Fault.SUBSCRIBER,
    "DecryptionFailed": Fault.SUBSCRIBER,  # the subscriber's p256dh/auth do not work
    # about the request the sender built (same for every recipient)
    "BadWebPushTopic": Fault.SENDER,
    "BadTtl": Fault.SENDER,
    "InvalidTtl": Fault.SENDER,
    "BadUrgency": Fault.SENDER,
    "PayloadTooLarge": Fault.SENDER,
    "BadJwtToken": Fault.SENDER,
    "BadVapidPublicKey": Fault.SENDER,
    "BadAuthorizationHeader": Fault.SENDER,
    "MissingAuthorization": Fault.SENDER,
    "UnsupportedAuthScheme": Fault.SENDER,
    "BadExpirationDate": Fault.SENDER,
    "BadMessageId": Fault.SENDER,
    "BadPriority": Fault.SENDER,
    "BadTopic": Fault.SENDER,
    "MissingTopic": Fault.SENDER,
    "TopicDisallowed": Fault.SENDER,
    "MissingContentEncoding": Fault.SENDER,
    "UnsupportedEncoding": Fault.SENDER,
    "BadHost": Fault.SENDER,
    "Forbidden": Fault.SENDER,
    # the service's own trouble
    "TooManyRequests": Fault.SERVICE,
    "InternalServerError": Fault.SERVICE,
    "ServiceUnavailable": Fault.SERVICE,
    "Shutdown": Fault.SERVICE,
}

#: Mozilla autopush (``{"errno": N, ...}``).
AUTOPUSH_ERRNOS: dict[int, Fault] = {
    102: Fault.SUBSCRIBER,  # corrupt / invalid endpoint token
    103: Fault.SUBSCRIBER,  # gone (expired)
    105: Fault.SUBSCRIBER,  # gone (unsubscribed)
    106: Fault.SUBSCRIBER,  # gone (bridge says unregistered)
    101: Fault.SENDER,  # missing crypto keys / headers
    104: Fault.SENDER,  # payload too large
    109: Fault.SENDER,  # VAPID problem
    110: Fault.SENDER,  # bad encryption headers
    111: Fault.SENDER,  # missing or invalid TTL
    113: Fault.SENDER,  # bad Topic
    201: Fault.SERVICE,
    202: Fault.SERVICE,
    203: Fault.SERVICE,
}

#: Microsoft WNS: the reason is only in ``X-WNS-ERROR-DESCRIPTION`` (lower-cased
#: substring -> fault, first match wins).
WNS_DESCRIPTIONS: tuple[tuple[str, Fault], ...] = (
    ("channel", Fault.SUBSCRIBER),  # "The channel URI is not valid", "channel expired"
    ("header", Fault.SENDER),
    ("payload", Fault.SENDER),
    ("size", Fault.SENDER),
    ("token", Fault.SENDER),
)

#: FCM answers some ``/fcm/send/<token>`` pushes with 404 and this text: a wrong
#: path (use ``/wp/<token>``), not an expired subscription.
FCM_WRONG_PATH_TEXT = "a valid push subscription endpoint should be specified in the url"
FCM_SEND_PATH = "/fcm/send/"
FCM_WP_PATH = "/wp/"


def fcm_wp_endpoint(url: str) -> str | None:
    """The ``/wp/`` form of an FCM ``/fcm/send/<token>`` endpoint (same origin), or None."""
    parts = urlsplit(url)
    if FCM_SEND_PATH not in parts.path:
        return None
    path = parts.path.replace(FCM_SEND_PATH, FCM_WP_PATH, 1)
    return parts._replace(path=path).geturl()


def _status_fault(status: int) -> Fault:
    if status in (404, 410):
        return Fault.SUBSCRIBER
    if status in (401, 403):
        return Fault.SENDER
    if status in RETRYABLE_STATUSES or status == 406 or status >= 500:
        return Fault.SERVICE
    return Fault.UNKNOWN


def fault_of(status: int, headers: Mapping[str, str], body: bytes = b"") -> Fault:
    """Whose fault a non-success answer is, from the service's own reason where it
    names one (the tables above), else from the status alone (400/413 ``unknown``)."""
    description = (headers.get("X-WNS-ERROR-DESCRIPTION") or "").lower()
    if description:
        for needle, fault in WNS_DESCRIPTIONS:
            if needle in description:
                return fault
    doc: object = None
    if body[:1] == b"{":
        try:
            doc = json.loads(body[:4096])
        except ValueError:
            doc = None
    if isinstance(doc, dict):
        errno = doc.get("errno")
        if isinstance(errno, int) and errno in AUTOPUSH_ERRNOS:
            return AUTOPUSH_ERRNOS[errno]
        reason = doc.get("reason")
        if isinstance(reason, str) and reason in APPLE_REASONS:
            return APPLE_REASONS[reason]
    return _status_fault(status)


def is_fcm_wrong_path(status: int, body: bytes) -> bool:
    """FCM's 404 "use https://fcm.googleapis.com/wp/<token>" answer."""
    return status == 404 and FCM_WRONG_PATH_TEXT in body[:1024].decode(
        "utf-8", "replace").lower()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify(status: int, headers: Mapping[str, str], body: bytes = b"") -> Verdict:
    """Map one push-service response to a verdict (the only place that does)."""
    if status in (200, 201, 202):
        return Verdict(Outcome.SENT)
    reason = _reason(status, headers, body)
    fault = fault_of(status, headers, body)
    if is_fcm_wrong_path(status, body):
        # Not an expiry: the engine resends once to the /wp/ form.
        return Verdict(Outcome.REJECTED, reason, fault=Fault.SENDER, wrong_path=True)
    if status in (404, 410):
        return Verdict(Outcome.EXPIRED, reason, fault=Fault.SUBSCRIBER)
    if status in (400, 413):
        return Verdict(Outcome.REJECTED, reason, fault=fault)
    if status in (401, 403):
        return Verdict(Outcome.AUTH, reason, fault=Fault.SENDER)
    if status in RETRYABLE_STATUSES or (
        status == 406 and (headers.get("X-WNS-STATUS", "").lower() == "appthrottled"
                           or "Retry-After" in headers)
    ):
        return Verdict(None, reason, parse_retry_after(headers.get("Retry-After")),
                       fault=Fault.SERVICE, throttled=status in THROTTLING_STATUSES)
    if 300 <= status < 400:
        return Verdict(Outcome.REJECTED, f"HTTP {status} redirect not followed",
                       fault=Fault.UNKNOWN)
    if 500 <= status < 600:
        return Verdict(None, reason, fault=Fault.SERVICE)
    return Verdict(Outcome.REJECTED, reason, fault=fault)


def _reason(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """A short human reason: the service's own words where it gives any."""
    text = headers.get("X-WNS-ERROR-DESCRIPTION") or ""
    if not text and body:
        text = body[:300].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")
