"""Per-message CPU of three send-path steps, before vs after (issue 12), in one run.

Each pair runs in the same process, old and new alternating ``--repeat`` times
(``timeit``, the best of each kept) so a change in the machine's load hits both:

- the engagement token: ``tokens.make_token`` (HMAC keyed per message) vs a
  ``TokenSigner`` keyed once;
- the A/B arm with a holdout and a decided ``winner:`` (90 % sendable): drawn in the store's filter
  and again in the job builder, vs drawn once (``abrun.sendable`` keeping it);
- the libcurl handle set up per message: six ``setopt`` calls vs ``_Handle.prepare``
  (URL and body; the rest only when they change). No network: only the setup.

    .venv/bin/python bench/send_path_micro.py
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from types import SimpleNamespace

import pycurl

from pushcli.abrun import sendable
from pushcli.campaign.variants import Arm, Assigner
from pushcli.tokens import TokenSigner, make_token
from pushcli.transport import _Handle

SECRET = bytes(range(32))
HEADERS = ["TTL: 86400", "Content-Encoding: aes128gcm", "Urgency: normal",
           "Content-Type: application/octet-stream",
           "Authorization: vapid t=" + "x" * 300 + ", k=" + "B" * 87]
URL = "https://fcm.googleapis.com/fcm/send/" + "a" * 152
PIN = (1e12, "fcm.googleapis.com:443:142.250.1.1")
BODY = b"x" * 300


def token_pair() -> tuple[Callable[[], object], Callable[[], object]]:
    signer = TokenSigner(SECRET)
    return (lambda: make_token(SECRET, 7, 1, 123456), lambda: signer.token(7, 1, 123456))


def arm_pair(subscribers: int) -> tuple[Callable[[], object], Callable[[], object]]:
    rule = Assigner("spring-sale", ("a", "b"), (1, 1), holdout=0.1, test_share=0.2, winner="a")
    subs = [SimpleNamespace(id=i) for i in range(1000, 1000 + subscribers)]

    def old() -> None:
        match = sendable(lambda s: True, rule)
        for s in [s for s in subs if match(s)]:  # type: ignore[misc]
            rule.assign(s.id)

    def new() -> None:
        kept: dict[int, Arm] = {}
        match = sendable(lambda s: True, rule, kept)
        for s in [s for s in subs if match(s)]:  # type: ignore[misc]
            _ = kept.pop(s.id, None) or rule.assign(s.id)
    return old, new


def curl_pair() -> tuple[Callable[[], object], Callable[[], object]]:
    before = pycurl.Curl()
    handle = _Handle(pycurl.Curl())

    def keep(text: bytearray, chunk: bytes) -> None:
        text.extend(chunk)

    def old() -> None:
        head: list[bytes] = []
        text = bytearray()
        before.setopt(pycurl.URL, URL)
        before.setopt(pycurl.RESOLVE, [PIN[1]])
        before.setopt(pycurl.HTTPHEADER, HEADERS)
        before.setopt(pycurl.POSTFIELDS, BODY)
        before.setopt(pycurl.HEADERFUNCTION, head.append)
        before.setopt(pycurl.WRITEFUNCTION, lambda chunk: keep(text, chunk))
    return old, lambda: handle.prepare(URL, BODY, HEADERS, PIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=50_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings per side (best kept)")
    args = parser.parse_args()
    arm_subs = 2000
    cases = [("token", token_pair(), 1), ("A/B arm, filter + job builder",
                                          arm_pair(arm_subs), arm_subs),
             ("libcurl handle setup", curl_pair(), 1)]
    for name, (old, new), per_call in cases:
        number = max(1, args.number // per_call)
        best = [float("inf"), float("inf")]
        for _ in range(args.repeat):  # alternating, so load changes hit both sides
            for side, fn in enumerate((old, new)):
                best[side] = min(best[side], timeit.timeit(fn, number=number))
        t_old, t_new = (t / number / per_call * 1e6 for t in best)
        print(f"{name:32s} old {t_old:7.3f} us  new {t_new:7.3f} us  "
              f"saved {t_old - t_new:6.3f} us/message ({t_old / t_new:.2f}x)")


if __name__ == "__main__":
    main()
