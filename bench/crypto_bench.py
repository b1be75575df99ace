"""Encryptions per second: ``http_ece.encrypt`` vs ``pushcli.ece.encrypt``, in one run.

``pushcli.ece`` is measured twice: with its ephemeral key and ECDH on the
system's libcrypto (what a send uses on Linux) and on ``cryptography`` alone
(what it falls back to elsewhere). All make a fresh ephemeral P-256 key and salt
per message, as a send does, for distinct subscribers (no key reuse), and the
rounds alternate so that a change in the machine's load hits all alike. Prints
the rates and the ratios to ``http_ece``.

    .venv/bin/python bench/crypto_bench.py --messages 20000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli import ece

PAYLOAD = (b'{"title": "Benchmark", "body": "A message of ordinary length for a campaign '
           b'notification body.", "url": "https://shop.example.com/bench?utm_source=push"}')


def http_ece_encrypt(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """What pushcli's engine did before: http_ece with a fresh key and salt."""
    return http_ece.encrypt(payload, salt=os.urandom(16),
                            private_key=ec.generate_private_key(ec.SECP256R1()),
                            dh=p256dh, auth_secret=auth, version="aes128gcm")


def rate(fn: Callable[[bytes, bytes, bytes], bytes], subs: list[tuple[bytes, bytes]]) -> float:
    t = time.perf_counter()
    for p256dh, auth in subs:
        fn(PAYLOAD, p256dh, auth)
    return len(subs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000, help="per implementation")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    per_round = max(1, args.messages // args.rounds)
    subs = [(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
                Encoding.X962, PublicFormat.UncompressedPoint), os.urandom(16))
            for _ in range(per_round)]
    native = ece.libcrypto_ecdh()

    def on_cryptography(payload: bytes, p256dh: bytes, auth: bytes) -> bytes:
        ece._native[:] = [None]
        try:
            return ece.encrypt(payload, p256dh, auth)
        finally:
            ece._native[:] = [native]

    rates: dict[str, list[float]] = {"http_ece.encrypt": [], "pushcli.ece": [],
                                     "  on cryptography": []}
    fns = dict(zip(rates, (http_ece_encrypt, ece.encrypt, on_cryptography), strict=True))
    rate(ece.encrypt, subs[:200])  # warm-up
    for _ in range(args.rounds):
        for name, fn in fns.items():
            rates[name].append(rate(fn, subs))
    med = {name: sorted(v)[len(v) // 2] for name, v in rates.items()}
    print(f"messages           {per_round * args.rounds:,} each, {args.rounds} alternating rounds, "
          f"{len(PAYLOAD)}-byte payload, one core")
    print(f"libcrypto ECDH     {'yes' if native is not None else 'no (cryptography only)'}")
    base = med["http_ece.encrypt"]
    for name, value in med.items():
        print(f"{name:<18} {value:,.0f} encryptions/s ({1e6 / value:.0f} us each; median round)"
              f", {value / base:.2f}x http_ece")
    print(f"load average       {os.getloadavg()[0]:.2f} (2 cores; other work on the machine)")


if __name__ == "__main__":
    main()
