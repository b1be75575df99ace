"""What differs per push service: which hosts are real push services, the
endpoint policy every layer applies, and how a response becomes an outcome.

Everything here is pure (no I/O) so that import, send and doctor agree on one
answer for the same endpoint or the same HTTP response.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

#: Host suffixes of the real push services (a leading dot means "any subdomain").
KNOWN_SERVICES: dict[str, tuple[str, ...]] = {
    "fcm": ("fcm.googleapis.com",),
    "mozilla": (".push.services.mozilla.com",),
    "apple": (".push.apple.com",),
    "wns": (".notify.windows.com",),
}

MAX_ENDPOINT_LENGTH = 4096
ALLOW_HOSTS_ENV = "PUSHCLI_ALLOW_HOSTS"

#: One DNS label in letters-digits-hyphen form (what push services hand out):
#: no empty labels, no IDN/Unicode, no percent-escapes or backslashes.
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

#: IPv6 ranges Python's ``is_global`` (3.11) still calls global but that must
#: never be contacted: IPv4-compatible (::a.b.c.d, deprecated), IPv4-translated
#: (::ffff:0:a.b.c.d), local-use NAT64 (RFC 8215), deprecated site-local.
_NOT_PUBLIC_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "fec0::/10",
))
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Outcome(StrEnum):
    """Final outcome of one (campaign, subscriber) delivery."""

    SENT = "sent"
    EXPIRED = "expired"
    REJECTED = "rejected"
    AUTH = "auth"
    BLOCKED = "blocked"
    FAILED = "failed"


#: Outcomes that need no further attempt in a re-run (``failed`` is retried
#: only with ``--retry-failed``).
SUCCESS_OUTCOMES = frozenset({Outcome.SENT, Outcome.EXPIRED})


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


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address.

    Rejects private, loopback, link-local, CGNAT (100.64/10), unique-local,
    multicast and reserved ranges, and unwraps IPv4-mapped and NAT64
    (64:ff9b::/96) IPv6 forms so they cannot smuggle a private IPv4 address.
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
        elif ip.teredo is not None or any(ip in net for net in _NOT_PUBLIC_V6):
            return False
    if ip in _CGNAT:
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


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


def check_endpoint(url: object, allowed_hosts: frozenset[str] = frozenset()) -> Endpoint:
    """The one endpoint policy, applied at import, at send and by doctor.

    https only, to a known push-service host (plain ASCII letters, digits and
    hyphens; exact ``fcm.googleapis.com`` or a subdomain of the other services)
    on the default port, with no userinfo, fragment, backslash, whitespace or
    control characters. Host names are case-insensitive; a trailing-dot host
    (``fcm.googleapis.com.``) is refused. Hosts in ``allowed_hosts`` may use
    any port, and plain http when they are loopback. IP literals, and numeric
    host spellings (``2130706433``, ``0x7f.1``), are refused unless allowed
    explicitly. Raises EndpointRefused with a short reason.
    """
    if not isinstance(url, str) or not url.strip():
        raise EndpointRefused("endpoint is missing")
    if len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRefused(f"endpoint is longer than {MAX_ENDPOINT_LENGTH} characters")
    if url != url.strip() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise EndpointRefused("endpoint contains whitespace or control characters")
    if "\\" in url:
        raise EndpointRefused("endpoint must not contain a backslash")
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
    if port is not None and not (scheme == "https" and port == 443):
        netloc += f":{port}"
    return Endpoint(url=url, host=host, origin=f"{scheme}://{netloc}", service=service)


# --- responses -------------------------------------------------------------------------

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one HTTP attempt means: a final outcome, or retry (after a delay)."""

    outcome: Outcome | None  # None = retry
    reason: str = ""
    retry_after: float | None = None  # seconds, when the service asked


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
    if status in (404, 410):
        return Verdict(Outcome.EXPIRED, reason)
    if status in (400, 413):
        return Verdict(Outcome.REJECTED, reason)
    if status in (401, 403):
        return Verdict(Outcome.AUTH, reason)
    if status in RETRYABLE_STATUSES or (
        status == 406 and (headers.get("X-WNS-STATUS", "").lower() == "appthrottled"
                           or "Retry-After" in headers)
    ):
        return Verdict(None, reason, parse_retry_after(headers.get("Retry-After")))
    if 300 <= status < 400:
        return Verdict(Outcome.REJECTED, f"HTTP {status} redirect not followed")
    if 500 <= status < 600:
        return Verdict(None, reason)
    return Verdict(Outcome.REJECTED, reason)


def _reason(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """A short human reason: the service's own words where it gives any."""
    text = headers.get("X-WNS-ERROR-DESCRIPTION") or ""
    if not text and body:
        text = body[:300].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")
