"""The push-service emulator: state, the aiohttp application, and its runners.

See the package docstring (``pushcli.testing``) for the HTTP surface.  The
state lives behind one ``threading.Lock`` because the server runs on its own
event loop thread while tests and ``pushcli demo`` read and steer it from the
main thread; the lock is only held for dictionary bookkeeping, never across
the decrypt, a sleep or network I/O.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import ipaddress
import json
import random
import re
import secrets
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.testing.vapid import (
    VapidError,
    VapidVerifier,
    load_public_key,
    normalize_origin,
)

#: RFC 8291: one aes128gcm record of at most 4096 bytes is what services accept.
MAX_BODY = 4096
#: FCM's TTL ceiling (28 days); larger values are accepted and echoed capped.
MAX_TTL = 2_419_200
URGENCIES = frozenset({"very-low", "low", "normal", "high"})
#: ``wrong_path``: FCM's 404 "use /wp/<token>" answer, only to pushes on a
#: ``/fcm/send/<id>`` path (the same subscription's ``/wp/<id>`` form works).
FAULT_ACTIONS = frozenset({"slow", "drop", "drop_after_accept", "wrong_path"})
FCM_WRONG_PATH_BODY = ("A valid push subscription endpoint should be specified in the URL "
                       "as such: {base}/wp/{id}")
#: Sizes of the request log kept for "when did requests arrive" assertions.
REQUEST_LOG_LIMIT = 1_000_000
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")

FaultAction = int | Literal["slow", "drop", "drop_after_accept", "wrong_path"]


def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is a loopback name or address.

    The emulator accepts anything that knows a subscription URL and exposes
    an unauthenticated control API, so it must never listen beyond this
    machine.
    """
    if host.lower() == "localhost":
        return
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"refusing to bind to {host!r}: only loopback hosts are allowed") from None
    if not addr.is_loopback:
        raise ValueError(f"refusing to bind to {host!r}: only loopback hosts are allowed")


@dataclass(slots=True)
class Message:
    """One accepted push as the user agent would receive it."""

    id: str
    payload: bytes
    ttl: int
    urgency: str | None
    topic: str | None
    content_type: str | None
    received_at: float

    def as_json(self) -> dict[str, Any]:
        """JSON-friendly form for the control API (payload as UTF-8 text)."""
        return {
            "id": self.id,
            "payload": self.payload.decode("utf-8", errors="replace"),
            "size": len(self.payload),
            "ttl": self.ttl,
            "urgency": self.urgency,
            "topic": self.topic,
            "contentType": self.content_type,
            "receivedAt": self.received_at,
        }


@dataclass(slots=True)
class Subscription:
    """User-agent side of one subscription: its keys and what it received."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    p256dh: str
    auth: bytes
    auth_b64: str
    application_server_key: bytes
    expired: bool = False
    requests: int = 0
    accepted: int = 0
    request_times: list[float] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``, exactly what a browser hands a site."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": self.auth_b64},
        }


@dataclass(slots=True)
class FaultRule:
    """A scripted misbehaviour: which requests it hits and how it answers.

    ``client_hash`` limits it to one subscription, ``rate`` to a random
    fraction of matching requests (seeded RNG, so runs are reproducible);
    ``times`` is how many more requests it applies to (None = permanent).
    """

    id: int
    action: FaultAction
    client_hash: str | None = None
    rate: float | None = None
    retry_after: float | None = None
    retry_after_http_date: bool = False
    delay: float = 0.0
    times: int | None = None
    reason: str = "InjectedFault"  # the JSON ``reason`` answered (e.g. BadWebPushTopic)

    def as_json(self) -> dict[str, Any]:
        """Control-API form of the rule."""
        return {
            "id": self.id,
            "status": self.action,
            "clientHash": self.client_hash,
            "rate": self.rate,
            "retry_after": self.retry_after,
            "retry_after_http_date": self.retry_after_http_date,
            "delay": self.delay,
            "times": self.times,
            "reason": self.reason,
        }


class _Drop(Exception):
    """Internal: the handler wants the connection closed without an answer."""


def _json_error(status: int, reason: str, detail: str = "", **headers: str) -> web.Response:
    body = {"code": status, "reason": reason, "detail": detail or reason}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers or None,
    )


def _parse_fault(spec: dict[str, Any], rule_id: int) -> FaultRule:
    """Validate a fault spec from the control API or ``add_fault``."""
    raw = spec.get("status", spec.get("action"))
    action: FaultAction
    if isinstance(raw, str) and raw in FAULT_ACTIONS:
        action = cast(FaultAction, raw)
    else:
        try:
            action = int(cast(Any, raw))
        except (TypeError, ValueError):
            raise ValueError(
                f"status must be an HTTP status or one of {sorted(FAULT_ACTIONS)}, not {raw!r}"
            ) from None
        if not 200 <= action <= 599:
            raise ValueError(f"status {action} is not an HTTP status")
    client_hash = spec.get("clientHash", spec.get("client_hash"))
    if client_hash is not None and not isinstance(client_hash, str):
        raise ValueError("clientHash must be a string")
    rate = spec.get("rate")
    if rate is not None:
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
    retry_after = spec.get("retry_after", spec.get("retryAfter"))
    if retry_after is not None:
        retry_after = float(retry_after)
    elif action in (429, 406):
        retry_after = 1.0  # throttling answers always carry Retry-After
    delay = float(spec.get("delay") or 0.0)
    if delay < 0:
        raise ValueError("delay must be >= 0")
    if action == "slow" and not delay:
        delay = 5.0
    times = spec.get("times")
    if times is not None:
        times = int(times)
        if times < 1:
            raise ValueError("times must be >= 1 or null")
    reason = spec.get("reason") or "InjectedFault"
    if not isinstance(reason, str) or not _ID_RE.match(reason) or len(reason) > 64:
        raise ValueError("reason must be a short word like BadWebPushTopic")
    return FaultRule(
        id=rule_id,
        reason=reason,
        action=action,
        client_hash=client_hash,
        rate=rate,
        retry_after=retry_after,
        retry_after_http_date=bool(spec.get("retry_after_http_date", False)),
        delay=delay,
        times=times,
    )


class PushServiceState:
    """Everything the emulator knows; safe to use from any thread."""

    def __init__(self, seed: int | None = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._verifier = VapidVerifier()
        self._reset_locked()

    def _reset_locked(self) -> None:
        self.subs: dict[str, Subscription] = {}
        self.by_endpoint: dict[str, str] = {}
        self.faults: list[FaultRule] = []
        self.rng = random.Random(self._seed)
        self.by_status: collections.Counter[str] = collections.Counter()
        self.total_requests = 0
        self.total_accepted = 0
        self.log: collections.deque[tuple[float, str, str]] = collections.deque(
            maxlen=REQUEST_LOG_LIMIT
        )
        self._next_fault = 1
        self._next_message = 1

    def reset(self) -> None:
        """Forget subscriptions, messages, faults and tallies; reseed the RNG."""
        with self._lock:
            self._reset_locked()

    # -- subscriptions -------------------------------------------------------

    def create(self, n: int, application_server_key: str, base_url: str) -> list[Subscription]:
        """Create ``n`` subscriptions bound to ``application_server_key``.

        Like a browser, refuses a key that is not a P-256 point.  Key
        generation is ~50 µs, so thousands take well under a second.
        """
        if n < 1:
            raise ValueError("count must be >= 1")
        try:
            raw_key = b64_decode(application_server_key)
            load_public_key(raw_key)
        except ValueError as exc:
            raise ValueError(f"applicationServerKey {exc}") from None
        base = base_url.rstrip("/")
        curve = ec.SECP256R1()
        made: list[Subscription] = []
        for _ in range(n):
            sub_id = secrets.token_urlsafe(16)
            key = ec.generate_private_key(curve)
            point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            auth = secrets.token_bytes(16)
            made.append(
                Subscription(
                    id=sub_id,
                    endpoint=f"{base}/push/{sub_id}",
                    private_key=key,
                    p256dh=b64url_encode(point),
                    auth=auth,
                    auth_b64=b64url_encode(auth),
                    application_server_key=raw_key,
                )
            )
        with self._lock:
            for sub in made:
                self.subs[sub.id] = sub
                self.by_endpoint[sub.endpoint] = sub.id
        return made

    def resolve(self, sub_id_or_endpoint: str) -> Subscription:
        """Subscription by id or endpoint URL; KeyError when unknown."""
        with self._lock:
            sub_id = self.by_endpoint.get(sub_id_or_endpoint, sub_id_or_endpoint)
            if "/push/" in sub_id:
                sub_id = sub_id.rsplit("/push/", 1)[1]
            sub = self.subs.get(sub_id)
        if sub is None:
            raise KeyError(f"unknown subscription {sub_id_or_endpoint!r}")
        return sub

    def expire(self, sub_id_or_endpoint: str) -> None:
        """Every later push to this subscription answers 410 Gone."""
        sub = self.resolve(sub_id_or_endpoint)
        with self._lock:
            sub.expired = True

    # -- faults --------------------------------------------------------------

    def add_fault(self, spec: dict[str, Any]) -> FaultRule:
        """Validate and append a fault rule; rules are tried in insertion order."""
        with self._lock:
            rule = _parse_fault(spec, self._next_fault)
            self._next_fault += 1
            self.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self.faults.clear()

    def _match_fault_locked(self, sub_id: str, path: str = "") -> FaultRule | None:
        for rule in self.faults:
            if rule.client_hash is not None and rule.client_hash != sub_id:
                continue
            if rule.action == "wrong_path" and "/fcm/send/" not in path:
                continue
            if rule.rate is not None and self.rng.random() >= rule.rate:
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    self.faults.remove(rule)
            return rule
        return None

    # -- tally ---------------------------------------------------------------

    def record(self, sub_id: str, status: int | str, when: float) -> None:
        """Count one answered (or dropped) push request."""
        key = str(status)
        with self._lock:
            self.by_status[key] += 1
            self.log.append((when, sub_id, key))

    def stats(self, per_subscription: bool = False, include_log: bool = False) -> dict[str, Any]:
        """Global tally; optionally per-subscription counts and the request log."""
        with self._lock:
            out: dict[str, Any] = {
                "total_requests": self.total_requests,
                "accepted": self.total_accepted,
                "by_status": dict(self.by_status),
                "subscriptions": len(self.subs),
                "expired_subscriptions": sum(1 for s in self.subs.values() if s.expired),
                "faults": [r.as_json() for r in self.faults],
            }
            if per_subscription:
                out["per_subscription"] = {
                    s.id: {
                        "requests": s.requests,
                        "accepted": s.accepted,
                        "request_times": list(s.request_times),
                        "expired": s.expired,
                    }
                    for s in self.subs.values()
                    if s.requests
                }
            if include_log:
                out["log"] = [{"time": t, "id": i, "status": st} for t, i, st in self.log]
        return out

    # -- the push endpoint ---------------------------------------------------

    async def handle_push(self, request: web.Request) -> web.StreamResponse:
        """``POST /push/<id>``: RFC 8030 delivery with RFC 8291/8292 checks."""
        now = time.time()
        sub_id = request.match_info["id"]
        rule: FaultRule | None = None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        with self._lock:
            self.total_requests += 1
            sub = self.subs.get(sub_id)
            if sub is not None:
                sub.requests += 1
                sub.request_times.append(now)
                rule = None if sub.expired else self._match_fault_locked(sub_id, request.path)
        if sub is None:
            self.record(sub_id, 404, now)
            return _json_error(404, "NotFound", "no such subscription")
        if sub.expired:
            self.record(sub_id, 410, now)
            return _json_error(410, "Unregistered", "subscription has expired or unsubscribed")

        accept_then_drop = False
        if rule is not None:
            if rule.action == "drop":
                self.record(sub_id, "drop", now)
                raise _Drop()
            if rule.action == "wrong_path":
                self.record(sub_id, 404, now)
                base = f"{request.scheme}://{request.host}"
                return web.Response(status=404, content_type="text/plain",
                                    text=FCM_WRONG_PATH_BODY.format(base=base, id=sub_id))
            if rule.action == "slow":
                await asyncio.sleep(rule.delay)
            elif rule.action == "drop_after_accept":
                accept_then_drop = True
            else:
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                return self._fault_response(sub_id, rule, now)

        response, message = self._accept(request, sub, body, now)
        if message is not None:
            with self._lock:
                sub.messages.append(message)
                sub.accepted += 1
                self.total_accepted += 1
            if accept_then_drop:
                self.record(sub_id, "drop_after_accept", now)
                raise _Drop()
        self.record(sub_id, response.status, now)
        return response

    def _fault_response(self, sub_id: str, rule: FaultRule, now: float) -> web.Response:
        status = int(rule.action)
        headers: dict[str, str] = {}
        if rule.retry_after is not None and rule.retry_after >= 0:
            if rule.retry_after_http_date:
                headers["Retry-After"] = email.utils.formatdate(
                    time.time() + rule.retry_after, usegmt=True
                )
            else:
                headers["Retry-After"] = str(max(0, round(rule.retry_after)))
        if status == 406:
            headers["X-WNS-STATUS"] = "appthrottled"
        self.record(sub_id, status, now)
        return _json_error(status, rule.reason, f"fault rule {rule.id}", **headers)

    def _accept(
        self, request: web.Request, sub: Subscription, body: bytes | None, now: float
    ) -> tuple[web.Response, Message | None]:
        """Validate headers, VAPID and encryption; build the answer and message."""
        h = request.headers
        ttl_raw = h.get("TTL")
        if ttl_raw is None or not ttl_raw.strip().isdigit():
            return _json_error(400, "InvalidTtl", "TTL header must be a non-negative integer"), None
        ttl = min(int(ttl_raw), MAX_TTL)
        urgency = h.get("Urgency")
        if urgency is not None and urgency not in URGENCIES:
            return _json_error(
                400, "BadUrgency", f"Urgency must be one of {sorted(URGENCIES)}"
            ), None
        topic = h.get("Topic")
        if topic is not None and not _TOPIC_RE.match(topic):
            return _json_error(400, "BadWebPushTopic", "Topic must be <= 32 base64url chars"), None
        if body is None or len(body) > MAX_BODY:
            return _json_error(413, "PayloadTooLarge", f"body exceeds {MAX_BODY} bytes"), None
        encoding = h.get("Content-Encoding")
        if body and encoding is None:
            return _json_error(400, "MissingContentEncoding", "Content-Encoding required"), None
        if body and encoding is not None and encoding.strip().lower() != "aes128gcm":
            return _json_error(
                415, "UnsupportedEncoding", "Content-Encoding must be aes128gcm"
            ), None

        scheme = request.scheme
        host = request.host
        try:
            url = request.url
            origin = normalize_origin(scheme, url.raw_host or "", url.port)
        except ValueError:
            return _json_error(400, "BadHost", "unparseable Host header"), None
        try:
            self._verifier.verify(
                h.get("Authorization"),
                expected_key=sub.application_server_key,
                origin=origin,
                now=now,
            )
        except VapidError as exc:
            return _json_error(exc.status, exc.reason, exc.detail), None

        if body:
            try:
                payload = http_ece.decrypt(
                    body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
                )
            except Exception as exc:  # http_ece raises several unrelated types
                return _json_error(400, "DecryptionFailed", f"cannot decrypt body: {exc}"), None
        else:
            payload = b""
        with self._lock:
            msg_id = f"m{self._next_message}"
            self._next_message += 1
        message = Message(
            id=msg_id,
            payload=payload,
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            content_type=h.get("Content-Type"),
            received_at=now,
        )
        headers = {"Location": f"{scheme}://{host}/m/{msg_id}", "TTL": str(ttl)}
        return web.Response(status=201, headers=headers), message


# -- control API ---------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be JSON"}), content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return data


#: Subscriptions one /subscribe call may create: each is a P-256 key pair (~50 µs) and a
#: few hundred bytes; a million in one request would stall the emulator for a minute.
MAX_CREATE = 100_000
_PUSH_PATHS = ("/push/", "/fcm/send/", "/wp/")


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(
    state: PushServiceState, base_url: Callable[[], str] | None = None
) -> web.Application:
    """The aiohttp application: push endpoint plus the JSON control API.

    ``base_url`` overrides the endpoint prefix handed out by ``/subscribe``;
    by default it is the origin the control client addressed.
    """

    @web.middleware
    async def drop_middleware(
        request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Drop:
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Nothing can be written any more; tell aiohttp the peer is gone.
            raise asyncio.CancelledError() from None

    @web.middleware
    async def json_only_middleware(
        request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        # A web page can POST text/plain or a form to 127.0.0.1 without a CORS preflight,
        # but not application/json: requiring it keeps pages in a browser on this
        # machine from driving the control API (reset, faults, expire).
        if (request.method == "POST" and not request.path.startswith(_PUSH_PATHS)
                and request.content_type != "application/json"):
            return _bad("the control API takes Content-Type: application/json", 415)
        return await handler(request)

    def origin(request: web.Request) -> str:
        # Never the request's Host header: whoever sends the control request would
        # otherwise choose where senders deliver (and their auth secrets go).
        if base_url is not None:
            return base_url()
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if not sockname:
            raise web.HTTPInternalServerError(text="no local address")
        return f"{request.scheme}://{_url_host(str(sockname[0]))}:{sockname[1]}"

    async def status(request: web.Request) -> web.Response:
        st = state.stats()
        return web.json_response(
            {"ok": True, "subscriptions": st["subscriptions"], "requests": st["total_requests"]}
        )

    async def subscribe(request: web.Request) -> web.Response:
        data = await _json_body(request)
        key = data.get("applicationServerKey")
        if not isinstance(key, str):
            return _bad("applicationServerKey (base64url VAPID public key) is required")
        uvo = data.get("userVisibleOnly", True)
        if uvo not in (True, "true"):
            # Chrome refuses silent push subscriptions; so do we.
            return _bad("userVisibleOnly must be true")
        try:
            count = int(data.get("count", 1))
            if count > MAX_CREATE:
                return _bad(f"count must be at most {MAX_CREATE}")
            subs = state.create(count, key, origin(request))
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        items = [{**s.to_json(), "clientHash": s.id} for s in subs]
        return web.json_response({"data": items[0] if count == 1 else items})

    def lookup(data: dict[str, Any], request: web.Request) -> Subscription | web.Response:
        ident = request.match_info.get("id") or data.get("clientHash") or data.get("endpoint")
        if not isinstance(ident, str):
            return _bad("clientHash is required")
        try:
            return state.resolve(ident)
        except KeyError:
            return _bad(f"unknown subscription {ident!r}", 404)

    async def get_notifications(request: web.Request) -> web.Response:
        data = await _json_body(request)
        sub = lookup(data, request)
        if isinstance(sub, web.Response):
            return sub
        with state._lock:
            msgs = list(sub.messages)
        return web.json_response(
            {
                "data": {
                    "messages": [m.payload.decode("utf-8", errors="replace") for m in msgs],
                    "details": [m.as_json() for m in msgs],
                }
            }
        )

    async def expire(request: web.Request) -> web.Response:
        data = await _json_body(request)
        sub = lookup(data, request)
        if isinstance(sub, web.Response):
            return sub
        state.expire(sub.id)
        return web.json_response({"data": {"clientHash": sub.id, "expired": True}})

    async def faults(request: web.Request) -> web.Response:
        data = await _json_body(request)
        target = data.get("clientHash") or data.get("endpoint")
        if isinstance(target, str):
            try:
                data["clientHash"] = state.resolve(target).id
            except KeyError:
                return _bad(f"unknown subscription {target!r}", 404)
        try:
            rule = state.add_fault(data)
        except ValueError as exc:
            return _bad(str(exc))
        return web.json_response({"data": rule.as_json()})

    async def faults_clear(request: web.Request) -> web.Response:
        state.clear_faults()
        return web.json_response({"data": {"cleared": True}})

    async def stats(request: web.Request) -> web.Response:
        data = await _json_body(request) if request.method == "POST" else {}
        per_sub = bool(data.get("per_subscription") or request.query.get("per_subscription"))
        log = bool(data.get("log") or request.query.get("log"))
        return web.json_response({"data": state.stats(per_sub, log)})

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"data": {"reset": True}})

    app = web.Application(middlewares=[drop_middleware, json_only_middleware],
                          client_max_size=256 * 1024)
    app.router.add_post("/push/{id}", state.handle_push)
    # FCM's two path forms of one subscription (see the ``wrong_path`` fault).
    app.router.add_post("/fcm/send/{id}", state.handle_push)
    app.router.add_post("/wp/{id}", state.handle_push)
    for path, handler in (
        ("/status", status),
        ("/stats", stats),
    ):
        app.router.add_post(path, handler)
        app.router.add_get(path, handler)
    app.router.add_post("/subscribe", subscribe)
    app.router.add_post("/get-notifications", get_notifications)
    app.router.add_post("/expire-subscription/{id}", expire)
    app.router.add_post("/expire-subscription", expire)
    app.router.add_post("/faults", faults)
    app.router.add_post("/faults/clear", faults_clear)
    app.router.add_post("/reset", reset)
    return app


def _ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise ValueError("ssl_key given without ssl_cert")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class PushServiceEmulator:
    """A loopback push service that speaks RFC 8030/8291/8292 for real.

    Use ``start()``/``stop()`` (background thread with its own event loop, so
    synchronous code and other event loops can talk to it) or
    ``await astart()``/``await astop()`` to run it on the caller's loop.
    Both forms work as (async) context managers.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_cert: str | None = None,
        ssl_key: str | None = None,
        seed: int | None = 0,
    ) -> None:
        check_loopback(host)
        self.host = host
        self.port = port
        self._ssl = _ssl_context(ssl_cert, ssl_key)
        self.state = PushServiceState(seed)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; valid once started."""
        if self._runner is None:
            raise RuntimeError("emulator is not running")
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    async def astart(self) -> PushServiceEmulator:
        """Start serving on the running event loop."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        scheme = "https" if self._ssl else "http"
        # endpoints name the host and port this emulator was started with, never a Host header
        app = build_app(self.state,
                        base_url=lambda: f"{scheme}://{_url_host(self.host)}:{self.port}")
        # Short shutdown timeout: a "slow" fault may be sleeping in a handler and
        # tests should not wait for it to finish on stop().
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        # "localhost" could resolve to two addresses bound to different
        # ephemeral ports; bind the IPv4 loopback and keep the name in URLs.
        bind = "127.0.0.1" if self.host.lower() == "localhost" else self.host.strip("[]")
        site = web.TCPSite(runner, bind, self.port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self._runner = runner
        return self

    async def astop(self) -> None:
        """Stop serving (on the loop that started it)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def start(self) -> PushServiceEmulator:
        """Serve from a daemon thread with its own event loop; returns self."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.astop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="pushcli-emulator", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop the background server and wait for its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def __enter__(self) -> PushServiceEmulator:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> PushServiceEmulator:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # -- steering and inspection ---------------------------------------------

    def create_subscriptions(
        self, n: int, application_server_key: str, *, base_url: str | None = None
    ) -> list[dict[str, Any]]:
        """``n`` fresh subscriptions as ``PushSubscription.toJSON()`` dicts.

        ``base_url`` changes the endpoint origin, e.g. ``http://localhost:PORT``
        next to ``http://127.0.0.1:PORT`` to exercise per-host logic against
        one emulator.  Use ``id_for(endpoint)`` for the id (clientHash).
        """
        subs = self.state.create(n, application_server_key, base_url or self.url)
        return [s.to_json() for s in subs]

    def create_subscription(
        self, application_server_key: str, *, base_url: str | None = None
    ) -> dict[str, Any]:
        """One subscription (see ``create_subscriptions``)."""
        return self.create_subscriptions(1, application_server_key, base_url=base_url)[0]

    def id_for(self, endpoint: str) -> str:
        """The subscription id (web-push-testing's clientHash) of an endpoint."""
        return self.state.resolve(endpoint).id

    def messages(self, sub: str) -> list[bytes]:
        """Decrypted payloads received by ``sub`` (id or endpoint), oldest first."""
        s = self.state.resolve(sub)
        with self.state._lock:
            return [m.payload for m in s.messages]

    def message_records(self, sub: str) -> list[Message]:
        """Accepted messages with their TTL/Urgency/Topic/Content-Type and time."""
        s = self.state.resolve(sub)
        with self.state._lock:
            return list(s.messages)

    def wait_for_messages(self, sub: str, count: int, timeout: float = 5.0) -> list[bytes]:
        """Block until ``sub`` holds at least ``count`` messages; return them.

        For callers whose sender runs concurrently (``pushcli demo``, a
        subprocess under test).  Raises TimeoutError with what did arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages(sub)
            if len(got) >= count:
                return got
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(got)} of {count} messages arrived within {timeout}s")
            time.sleep(0.01)

    def request_times(self, sub: str) -> list[float]:
        """``time.time()`` of every push request to ``sub``, accepted or not."""
        s = self.state.resolve(sub)
        with self.state._lock:
            return list(s.request_times)

    def request_log(self) -> list[tuple[float, str, str]]:
        """``(time, subscription id, status)`` for every push request, in order.

        Status is the HTTP code as a string, or ``drop``/``drop_after_accept``.
        """
        with self.state._lock:
            return list(self.state.log)

    def expire(self, sub: str) -> None:
        """Make ``sub`` (id or endpoint) answer 410 Gone from now on."""
        self.state.expire(sub)

    def add_fault(
        self,
        status: FaultAction,
        *,
        client_hash: str | None = None,
        rate: float | None = None,
        retry_after: float | None = None,
        retry_after_http_date: bool = False,
        delay: float = 0.0,
        times: int | None = None,
        reason: str | None = None,
    ) -> FaultRule:
        """Script a failure; see the package docstring for the semantics.

        ``client_hash`` also accepts an endpoint URL.
        """
        if client_hash is not None and not _ID_RE.match(client_hash):
            client_hash = self.id_for(client_hash)
        return self.state.add_fault(
            {
                "status": status,
                "clientHash": client_hash,
                "rate": rate,
                "retry_after": retry_after,
                "retry_after_http_date": retry_after_http_date,
                "delay": delay,
                "times": times,
                "reason": reason,
            }
        )

    def clear_faults(self) -> None:
        """Remove all fault rules."""
        self.state.clear_faults()

    def stats(self, per_subscription: bool = False) -> dict[str, Any]:
        """Totals: requests, accepted, counts by status, optionally per subscription."""
        return self.state.stats(per_subscription)

    def reset(self) -> None:
        """Forget everything (subscriptions included); reseed fault randomness."""
        self.state.reset()


async def serve(
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    ssl_cert: str | None = None,
    ssl_key: str | None = None,
    seed: int | None = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run an emulator on the current loop until cancelled, SIGINT or SIGTERM
    (``pushcli testing serve``).

    ``on_ready`` receives the base URL once the socket is bound, so a caller
    using port 0 learns the real port. The signals are handled on the loop (in
    the main thread), not left to KeyboardInterrupt: a server started in the
    background by a script inherits SIGINT ignored, and SIGTERM is what
    service managers send.
    """
    emu = PushServiceEmulator(host, port, ssl_cert, ssl_key, seed)
    await emu.astart()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        if on_ready is not None:
            on_ready(emu.url)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await emu.astop()


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    ssl_cert: str | None = None,
    ssl_key: str | None = None,
    seed: int | None = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Blocking ``serve``; returns quietly on Ctrl-C."""
    check_loopback(host)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(host, port, ssl_cert=ssl_cert, ssl_key=ssl_key, seed=seed, on_ready=on_ready)
        )


__all__: Iterable[str] = [
    "FaultRule",
    "Message",
    "PushServiceEmulator",
    "PushServiceState",
    "Subscription",
    "build_app",
    "check_loopback",
    "serve",
    "serve_forever",
]
