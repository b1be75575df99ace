"""HTTP client comparison for the send path: which client should carry Web Push POSTs?

Against a local nginx HTTPS sink (HTTP/2 and HTTP/1.1 offered through ALPN, a
self-signed certificate trusted explicitly) that answers 201 after 0 or 60 ms
(``echo_sleep``, Debian's libnginx-mod-http-echo), every client POSTs the same
pre-encrypted ~200-byte aes128gcm bodies with push-like headers N times at a
given number of requests in flight. Each case runs in its own process, so the
CPU figure (user + system of that process, all its threads) is the client's
alone and excludes imports. Encryption is not measured here: it costs the same
whatever carries the bytes.

Clients: aiohttp (HTTP/1.1, one connection per request in flight, pool limit =
concurrency), pycurl's multi interface (libcurl + nghttp2, HTTP/2 streams
multiplexed, PIPEWAIT) in its own select loop, ``pushcli-h2`` (the same libcurl
driven from the asyncio loop by ``pushcli.transport``, as the engine uses it),
httpx with h2, niquests (HTTP/2, multiplexed). httpx is the ``bench`` extra
(``pip install -e '.[bench]'``). niquests needs its own virtualenv: its
dependency urllib3-future replaces ``urllib3`` in the environment it is
installed into (a .pth file rewrites it at every start), which would change
what ``requests``/pywebpush run on. ``python3 -m venv .venv-niquests &&
.venv-niquests/bin/pip install niquests``, then ``--niquests-python
.venv-niquests/bin/python`` (the niquests case imports nothing from pushcli).

    .venv/bin/python bench/http_clients.py --requests 20000
    .venv/bin/python bench/http_clients.py --latency-ms 60 --clients aiohttp,pycurl-h2

Prints one row per (latency, client, concurrency): requests/s, CPU seconds per
1,000 requests, and the ratio of both to aiohttp at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIENTS = ("aiohttp", "pycurl-h2", "pushcli-h2", "httpx-h2", "niquests-h2")
SLOW = ("httpx-h2", "niquests-h2")
BODIES = 256


def _headers() -> dict[str, str]:
    """What pushcli sends with every message (a VAPID header of realistic length)."""
    return {
        "TTL": "3600",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "Topic": "bench",
        "Authorization": "vapid t=" + "x" * 260 + ", k=" + "B" * 87,
    }


def _bodies() -> list[bytes]:
    """Real aes128gcm bodies (~200 bytes) made once; the clients only carry them."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from pushcli.engine import encrypt

    payload = (b'{"title":"Benchmark","body":"A message of ordinary length for a campaign '
               b'notification body."}')
    out = []
    for _ in range(BODIES):
        ua = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        out.append(encrypt(payload, ua, os.urandom(16)))
    return out


# --- one case, in a child process ------------------------------------------------------------


async def _aiohttp(url: str, n: int, conc: int, cert: str, bodies: list[bytes]) -> int:
    import aiohttp

    ctx = ssl.create_default_context(cafile=cert)
    headers = _headers()
    ok = 0
    left = iter(range(n))
    connector = aiohttp.TCPConnector(limit=conc, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     skip_auto_headers=("User-Agent",),
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def worker() -> None:
            nonlocal ok
            for i in left:
                async with session.post(f"{url}{i}", data=bodies[i % BODIES], headers=headers,
                                        allow_redirects=False) as resp:
                    ok += resp.status == 201
        await asyncio.gather(*(worker() for _ in range(conc)))
    return ok


async def _httpx(url: str, n: int, conc: int, cert: str, bodies: list[bytes]) -> int:
    import httpx

    ctx = ssl.create_default_context(cafile=cert)
    headers = _headers()
    ok = 0
    left = iter(range(n))
    limits = httpx.Limits(max_connections=max(1, conc // 100 + 1), max_keepalive_connections=None)
    async with httpx.AsyncClient(http2=True, verify=ctx, limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal ok
            for i in left:
                resp = await client.post(f"{url}{i}", content=bodies[i % BODIES], headers=headers)
                ok += resp.status_code == 201 and resp.http_version == "HTTP/2"
        await asyncio.gather(*(worker() for _ in range(conc)))
    return ok


async def _niquests(url: str, n: int, conc: int, cert: str, bodies: list[bytes]) -> int:
    """Multiplexed mode: requests return lazy responses, ``gather`` resolves a window."""
    import niquests

    headers = _headers()
    ok = 0
    # verify per request: niquests 3.21 ignored ``AsyncSession(verify=...)`` here
    async with niquests.AsyncSession(multiplexed=True, disable_http3=True,
                                     pool_maxsize=max(1, conc // 100 + 1)) as session:
        for start in range(0, n, conc):
            window = [await session.post(f"{url}{i}", data=bodies[i % BODIES], headers=headers,
                                         allow_redirects=False, verify=cert)
                      for i in range(start, min(n, start + conc))]
            await session.gather(*window)
            ok += sum(r.status_code == 201 and r.http_version == 20 for r in window)
    return ok


async def _pushcli(url: str, n: int, conc: int, cert: str, bodies: list[bytes]) -> int:
    """pushcli's own transport (libcurl multi on the asyncio loop), as the engine drives it."""
    os.environ["SSL_CERT_FILE"] = cert
    from pushcli.transport import CurlTransport

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    headers = _headers()
    ok = 0
    left = iter(range(n))
    transport = CurlTransport(resolve, timeout=30, connect_timeout=10)

    async def worker() -> None:
        nonlocal ok
        for i in left:
            answer = await transport.post(f"{url}{i}", bodies[i % BODIES], headers)
            ok += answer.status == 201 and answer.http2
    try:
        await asyncio.gather(*(worker() for _ in range(conc)))
    finally:
        transport.close()
    return ok


def _pycurl(url: str, n: int, conc: int, cert: str, bodies: list[bytes]) -> int:
    """libcurl multi, driven by its own select loop (the optimistic case for pycurl)."""
    import pycurl

    multi = pycurl.CurlMulti()
    multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
    header_list = [f"{k}: {v}" for k, v in _headers().items()]
    free = []
    for _ in range(conc):
        c = pycurl.Curl()
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        c.setopt(pycurl.PIPEWAIT, 1)
        c.setopt(pycurl.CAINFO, cert)
        c.setopt(pycurl.HTTPHEADER, header_list)
        c.setopt(pycurl.WRITEFUNCTION, lambda _data: None)
        c.setopt(pycurl.TIMEOUT, 30)
        c.setopt(pycurl.FOLLOWLOCATION, 0)
        free.append(c)
    submitted = done = ok = 0
    while done < n:
        while free and submitted < n:
            c = free.pop()
            c.setopt(pycurl.URL, f"{url}{submitted}")
            c.setopt(pycurl.POSTFIELDS, bodies[submitted % BODIES])
            multi.add_handle(c)
            submitted += 1
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            queued, finished, failed = multi.info_read()
            for c in finished:
                ok += (c.getinfo(pycurl.RESPONSE_CODE) == 201
                       and c.getinfo(pycurl.INFO_HTTP_VERSION) == pycurl.CURL_HTTP_VERSION_2_0)
            for c in finished + [f[0] for f in failed]:
                multi.remove_handle(c)
                free.append(c)
                done += 1
            if not queued:
                break
        if done < n:
            multi.select(1.0)
    return ok


def child(args: argparse.Namespace) -> None:
    bodies = json.loads(Path(args.bodies).read_text())
    bodies = [bytes.fromhex(b) for b in bodies]
    url = args.url
    t0, c0 = time.perf_counter(), time.process_time()
    if args.child == "aiohttp":
        ok = asyncio.run(_aiohttp(url, args.requests, args.concurrency, args.cert, bodies))
    elif args.child == "pushcli-h2":
        ok = asyncio.run(_pushcli(url, args.requests, args.concurrency, args.cert, bodies))
    elif args.child == "httpx-h2":
        ok = asyncio.run(_httpx(url, args.requests, args.concurrency, args.cert, bodies))
    elif args.child == "niquests-h2":
        ok = asyncio.run(_niquests(url, args.requests, args.concurrency, args.cert, bodies))
    else:
        ok = _pycurl(url, args.requests, args.concurrency, args.cert, bodies)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"ok": ok, "wall": wall, "cpu": cpu}))


# --- the parent: nginx, the matrix, the table -------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--slow-requests", type=int, default=4000,
                   help="httpx-h2 and niquests-h2 are ~10x slower: fewer requests for them "
                        "(all figures are per request)")
    p.add_argument("--latency-ms", default="0,60", help="comma list of 0 and/or 60")
    p.add_argument("--concurrency", default="64,256,1000", help="comma list")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help="comma list of " + ", ".join(CLIENTS))
    p.add_argument("--niquests-python", default=os.environ.get("NIQUESTS_PYTHON"),
                   help="interpreter of a separate virtualenv with niquests (see above)")
    p.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.concurrency = int(args.concurrency)
        child(args)
        return
    if str(ROOT) not in sys.path:  # the harness is in tests/ (not imported by the children)
        sys.path.insert(0, str(ROOT))
    from tests.support import echo_201, nginx_sink

    work = Path(tempfile.mkdtemp(prefix="pushcli-http-clients-"))
    (work / "bodies.json").write_text(json.dumps([b.hex() for b in _bodies()]))
    size = len(bytes.fromhex(json.loads((work / "bodies.json").read_text())[0]))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        try:
            sink = stack.enter_context(nginx_sink(
                work, {"/d0/": echo_201(0), "/d60/": echo_201(60)}, http2=True))
        except RuntimeError as e:
            sys.exit(str(e))
        print(f"{args.requests} POSTs of {size}-byte bodies per case; nginx 1 worker, HTTPS, "
              f"ALPN h2+http/1.1; load average before: {os.getloadavg()[0]:.2f}")
        print(f"{'latency':>7} {'client':<12} {'in flight':>9} {'req/s':>8} "
              f"{'CPU s/1k':>8} {'vs aiohttp':>18}  ok")
        for latency in (int(x) for x in args.latency_ms.split(",")):
            for conc in (int(x) for x in args.concurrency.split(",")):
                base: tuple[float, float] | None = None
                for client in args.clients.split(","):
                    python = sys.executable
                    if client == "niquests-h2":
                        if not args.niquests_python:
                            print(f"{latency:>5}ms {client:<12} {conc:>9}  skipped: needs "
                                  "--niquests-python (a separate virtualenv)")
                            continue
                        python = args.niquests_python
                    n = min(args.requests, args.slow_requests) if client in SLOW \
                        else args.requests
                    cmd = [python, __file__, "--child", client, "--requests", str(n),
                           "--concurrency", str(conc), "--cert", sink.cert,
                           "--bodies", str(work / "bodies.json"),
                           "--url", f"{sink.url()}/d{latency}/push/"]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        line = (proc.stderr.strip().splitlines() or ["?"])[-1]
                        print(f"{latency:>5}ms {client:<12} {conc:>9}  failed: {line[:120]}")
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    rate = n / r["wall"]
                    cpu_k = r["cpu"] / n * 1000
                    if client == "aiohttp":
                        base = (rate, cpu_k)
                    vs = (f"{rate / base[0]:.2f}x rate {cpu_k / base[1]:.2f}x CPU"
                          if base else "")
                    print(f"{latency:>5}ms {client:<12} {conc:>9} {rate:>8.0f} {cpu_k:>8.3f} "
                          f"{vs:>18}  {r['ok']}/{n}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
