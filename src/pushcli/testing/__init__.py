"""A real loopback Web Push service for tests, benchmarks, ``pushcli demo`` and CI.

Why: mocking the HTTP layer proves nothing about encryption or VAPID.  This
emulator is the network edge instead: it creates subscriptions with genuine
user-agent keys, checks every push the way FCM/autopush/Apple do (RFC 8030
headers, RFC 8292 VAPID, RFC 8291 aes128gcm) and decrypts the body, so a
message that arrives here would arrive at a browser.  Fault rules reproduce
what real services answer under stress (410, 429 + Retry-After, WNS 406,
5xx, timeouts, dropped connections) deterministically.

It only binds to loopback (``ValueError`` otherwise): the control API has no
authentication.

Python API::

    from pushcli.testing import PushServiceEmulator, make_self_signed_cert

    with PushServiceEmulator(port=0, seed=0) as emu:      # background thread
        subs = emu.create_subscriptions(100, vapid_public_key_b64url)
        ...                                               # send to subs[i]["endpoint"]
        emu.messages(subs[0]["endpoint"])                 # [b'{"title": ...}']
        emu.add_fault(429, client_hash=emu.id_for(subs[1]["endpoint"]),
                      retry_after=2, times=1)
        emu.stats()

``await emu.astart()`` / ``await emu.astop()`` (or ``async with``) run it on
the caller's event loop instead.  ``serve()`` / ``serve_forever()`` run it
standalone (``pushcli testing serve``).

Push endpoint — ``POST /push/<id>``
    Checks, in order: unknown id -> 404; expired -> 410; fault rules; ``TTL``
    non-negative integer (else 400; echoed capped at 28 days); ``Urgency`` in
    very-low/low/normal/high (else 400); ``Topic`` <= 32 base64url chars
    (else 400); body <= 4096 bytes (else 413); non-empty body needs
    ``Content-Encoding: aes128gcm`` (missing -> 400, other -> 415);
    ``Authorization: vapid t=<JWT>, k=<key>``: missing/malformed, bad ES256
    signature, ``exp`` past or > 24 h ahead (60 s skew), ``aud`` not the
    origin the client addressed (scheme + Host header), ``sub`` not
    ``mailto:``/``https:`` (or Apple-rejected: spaces/angle brackets,
    localhost) -> 401; valid token but ``k`` is not the subscription's
    applicationServerKey -> 403; undecryptable body -> 400.  Success: 201
    with ``Location`` and ``TTL``; the decrypted payload is stored.  Error
    bodies are JSON ``{"code", "reason", "detail"}``.

Control API — JSON bodies, JSON answers (POST with ``Content-Type:
application/json``, else 415, so a web page cannot drive it; ``/status`` and
``/stats`` also answer GET).  Modelled on the npm package web-push-testing:

``/status``
    ``{"ok": true, "subscriptions": N, "requests": N}``
``/subscribe`` ``{"applicationServerKey": b64url, "count": 1, "userVisibleOnly": true}``
    ``{"data": {endpoint, expirationTime, keys, clientHash}}`` when count is
    1, ``{"data": [ ... ]}`` (a list, always) when count > 1 (at most 100,000).
    Endpoints use the host and port the emulator was started with, never the
    request's Host header.  ``userVisibleOnly`` may be
    true or "true"; false is refused like Chrome does.
``/get-notifications`` ``{"clientHash": id}`` (or ``"endpoint"``)
    ``{"data": {"messages": [utf-8 payload strings], "details": [{id, payload,
    size, ttl, urgency, topic, contentType, receivedAt}]}}``
``/expire-subscription/<id>`` (or ``/expire-subscription`` with clientHash)
    ``{"data": {"clientHash": id, "expired": true}}``; pushes answer 410 after.
``/faults`` ``{"clientHash": id | null, "rate": 0.0-1.0 | null, "status": S,
"retry_after": seconds, "retry_after_http_date": false, "delay": seconds,
"times": K | null, "reason": R}``
    Adds a rule; answers ``{"data": rule}``.  ``S`` is an HTTP status (answered
    without storing the message -- 201 thus mimics Apple accepting pushes to
    dead endpoints; 429 and 406 default to ``Retry-After: 1``,
    406 adds ``X-WNS-STATUS: appthrottled``; a negative retry_after omits the
    header) or ``"slow"`` (sleep ``delay`` seconds, default 5, then process
    normally), ``"drop"`` (abort the connection, nothing stored) or
    ``"drop_after_accept"`` (store the message, then abort) or ``"wrong_path"``
    (FCM's 404 "use .../wp/<id>", only to pushes on a ``/fcm/send/<id>`` path;
    the same subscription is also served at ``/fcm/send/<id>`` and ``/wp/<id>``).
    ``R`` is the JSON ``reason`` of a status answer (default ``InjectedFault``;
    e.g. ``BadWebPushTopic``).  Rules are
    tried in insertion order; the first whose clientHash matches and whose
    rate draw (seeded RNG) succeeds applies.  ``times`` makes it one-shot /
    K-shot; null is permanent.  ``delay`` on a status rule delays that answer.
    ``clientHash`` may also be given as ``endpoint``; an unknown one is a 404.
``/faults/clear``
    removes every rule.
``/stats`` ``{"per_subscription": false, "log": false}``
    ``{"data": {"total_requests", "accepted", "by_status": {"201": n, "drop": n,
    ...}, "subscriptions", "expired_subscriptions", "faults", ["per_subscription":
    {id: {requests, accepted, request_times, expired}}] (only subscriptions
    that received requests), ["log": [{time, id, status}]]}}``.  GET takes
    ``?per_subscription=1&log=1``.
``/reset``
    forgets subscriptions, messages, faults and tallies.

HTTPS: pass ``ssl_cert``/``ssl_key``; ``make_self_signed_cert(dir)`` makes a
pair valid for localhost/127.0.0.1/::1.  Trust it with ``SSL_CERT_FILE`` or
``ssl.create_default_context(cafile=cert)`` (``requests``-based clients such
as ``pywebpush.webpush`` need ``REQUESTS_CA_BUNDLE`` instead).
"""

from __future__ import annotations

from pushcli.testing.certs import make_self_signed_cert
from pushcli.testing.emulator import (
    FaultRule,
    Message,
    PushServiceEmulator,
    PushServiceState,
    Subscription,
    build_app,
    check_loopback,
    serve,
    serve_forever,
)
from pushcli.testing.vapid import VapidError, VapidVerifier

__all__ = [
    "FaultRule",
    "Message",
    "PushServiceEmulator",
    "PushServiceState",
    "Subscription",
    "VapidError",
    "VapidVerifier",
    "build_app",
    "check_loopback",
    "make_self_signed_cert",
    "serve",
    "serve_forever",
]
