"""Politeness run: `pushcli send` at its defaults against a sink that allows a fixed rate.

The sink (aiohttp, plain HTTP on loopback, answering ``--latency-ms`` late like
a push service that far away) takes at most ``--limit`` messages per second
(a token bucket holding one second's worth: a quota per
second, as FCM's is per minute) and answers every
request above that with ``429 Too Many Requests`` and ``Retry-After: 1``, as
FCM does over its quota. pushcli must converge to the limit without offering
more than 10 % above it, and lose nothing: every subscriber accepted exactly
once. Prints the rates the sink saw against the limit.

    .venv/bin/python bench/politeness.py --limit 1000 --subscribers 20000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/politeness.py`: the harness is in tests/
    sys.path.insert(0, str(ROOT))

from pushcli.encoding import b64url_encode  # noqa: E402
from pushcli.keys import generate_keys  # noqa: E402
from tests.support import p256dh_keys  # noqa: E402


class RateLimitedSink:
    """Accepts ``limit`` requests per second (token bucket), 429 + Retry-After above it."""

    def __init__(self, limit: float, latency: float) -> None:
        self.limit = limit
        self.latency = latency
        self.tokens = limit
        self.refilled = time.monotonic()
        self.accepted: Counter[str] = Counter()  # per subscription path: exactly once?
        self.arrivals: list[tuple[float, bool]] = []  # (time, accepted)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        self.tokens = min(self.limit, self.tokens + (now - self.refilled) * self.limit)
        self.refilled = now
        ok = self.tokens >= 1
        if ok:
            self.tokens -= 1
            self.accepted[request.path] += 1
        self.arrivals.append((now, ok))
        if self.latency:
            await asyncio.sleep(self.latency)
        if ok:
            return web.Response(status=201, headers={"Location": "/m/1"})
        return web.Response(status=429, headers={"Retry-After": "1"},
                            text='{"reason":"TooManyRequests"}',
                            content_type="application/json")

    def start(self) -> tuple[int, threading.Event]:
        """Serve in a thread; returns the port and an event that stops it."""
        stop = threading.Event()
        ready: list[int] = []
        started = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
            await site.start()
            ready.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)
            await runner.cleanup()

        threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
        started.wait(10)
        return ready[0], stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=float, default=1000, help="messages/s the sink accepts")
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument("--latency-ms", type=int, default=60)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--figures", metavar="FILE", type=Path,
                    help="also write the run's figures to FILE as JSON (bench/goals.py reads "
                    "them)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pushcli-politeness-"))
    sink = RateLimitedSink(args.limit, args.latency_ms / 1000)
    port, stop = sink.start()
    try:
        info = generate_keys(work)
        keys = p256dh_keys(min(args.subscribers, 500))
        subs = work / "subs.csv"
        with subs.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["endpoint", "p256dh", "auth"])
            for i in range(args.subscribers):
                w.writerow([f"http://127.0.0.1:{port}/push/{i:08d}", keys[i % len(keys)],
                            b64url_encode(os.urandom(16))])
        (work / "campaign.yml").write_text(
            "name: polite\nnotification:\n  title: Hi\n  body: A polite message.\n"
            "  url: https://shop.example.com/\n"
            "vapid:\n  subject: mailto:bench@shop.example.com\n")
        env = dict(os.environ, PUSHCLI_DB=str(work / "bench.db"),
                   PUSHCLI_ALLOW_HOSTS="127.0.0.1",
                   PUSHCLI_VAPID_PRIVATE_KEY=str(info.private_key), NO_COLOR="1")
        py = sys.executable
        imp = subprocess.run([py, "-m", "pushcli", "subscribers", "import", str(subs), "-q"],
                             env=env, cwd=work, capture_output=True, text=True)
        if imp.returncode != 0:
            sys.exit(f"import failed: {imp.stderr}")
        t = time.perf_counter()
        proc = subprocess.run([py, "-m", "pushcli", "send", str(work / "campaign.yml"),
                               "--json", "-q", "--timeout", "30"],
                              env=env, cwd=work, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode not in (0, 1):
            sys.exit(f"send exited {proc.returncode}: {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout)
    finally:
        stop.set()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    arrivals = sink.arrivals
    first, last = arrivals[0][0], arrivals[-1][0]
    span = max(last - first, 1e-9)
    took = [at for at, ok in arrivals if ok]
    throttled = sum(1 for _, ok in arrivals if not ok)
    # the steady part: from the first 429 on (before it pushcli had not met the limit yet)
    first_429 = next((at for at, ok in arrivals if not ok), first)
    steady = [(at, ok) for at, ok in arrivals if at >= first_429]
    steady_span = max(last - first_429, 1e-9)
    per_second = Counter(int(at - first) for at in took)
    offered_steady = len(steady) / steady_span
    accepted_steady = sum(1 for _, ok in steady if ok) / steady_span
    print(f"limit              {args.limit:,.0f} messages/s (token bucket, 1 s burst), "
          f"sink {args.latency_ms} ms away, 429 + Retry-After: 1 above it")
    print(f"subscribers        {args.subscribers:,}; pushcli at its defaults (adaptive)")
    print(f"accepted           {len(took):,} in {span:.1f} s: {len(took) / span:,.0f}/s overall, "
          f"{accepted_steady:,.0f}/s from the first 429 on "
          f"({100 * accepted_steady / args.limit:.0f} % of the limit)")
    print(f"offered            {len(arrivals) / span:,.0f}/s overall, {offered_steady:,.0f}/s "
          f"from the first 429 on ({100 * (offered_steady / args.limit - 1):+.1f} % vs the "
          "limit; goal <= +10 %)")
    print(f"answered 429       {throttled:,} ({100 * throttled / len(arrivals):.1f} % of "
          f"{len(arrivals):,} requests)")
    print(f"busiest second     {max(per_second.values()):,} accepted")
    lost = args.subscribers - len(sink.accepted)
    twice = sum(1 for n in sink.accepted.values() if n > 1)
    print(f"lost / duplicated  {lost} / {twice} (report: sent {report['sent']:,}, "
          f"failed {report['failed']:,}); wall {wall:.1f} s")
    for service, fig in (report.get("run", {}).get("by_service") or {}).items():
        print(f"transport          {service}: {fig['concurrency_reached']:,} in flight at most, "
              f"latency p50 {fig['latency_p50_ms']} ms, p95 {fig['latency_p95_ms']} ms")
    if args.figures:
        args.figures.write_text(json.dumps({
            "limit": args.limit, "subscribers": args.subscribers,
            "offered_vs_limit_pct": 100 * (offered_steady / args.limit - 1),
            "accepted_steady": accepted_steady, "throttled": throttled,
            "requests": len(arrivals), "lost": lost, "duplicated": twice,
            "load": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
