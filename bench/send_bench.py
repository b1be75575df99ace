"""Send benchmark: `pushcli send` against a local nginx HTTPS sink that answers 201.

Prints messages/s, wall time and the sender's peak RSS, and how many VAPID
signatures it made. nginx (Debian's nginx-light) serves TLS with a self-signed
certificate that the sender trusts through SSL_CERT_FILE, as a real run trusts
the system store. Subscriptions carry real P-256 keys, so every message is
really encrypted.

    .venv/bin/python bench/send_bench.py --subscribers 100000
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushcli.encoding import b64url_encode
from pushcli.keys import generate_keys
from pushcli.testing import make_self_signed_cert

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 201; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("nginx not found: apt-get install nginx-light (scripts/install-deps.sh does)")


def write_subscriptions(path: Path, n: int, port: int) -> None:
    """n rows with real keys (2,000 key pairs cycled: key generation is not what we measure)."""
    keys = []
    for _ in range(min(n, 2000)):
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        keys.append(b64url_encode(point))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["endpoint", "p256dh", "auth", "tags"])
        for i in range(n):
            w.writerow([f"https://127.0.0.1:{port}/push/{i:08d}", keys[i % len(keys)],
                        b64url_encode(os.urandom(16)), "news"])


def run(cmd: list[str], env: dict[str, str],
        cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path
                 ) -> tuple[float, subprocess.CompletedProcess, int, int]:
    """Run and sample the RSS of the whole process tree (sender + worker processes).

    Returns (seconds, result, peak RSS of the largest process, peak RSS summed over
    the tree), both in bytes, sampled every 0.2 s.
    """
    import psutil

    t = time.perf_counter()
    popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak_one = peak_sum = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_one, peak_sum
        root = psutil.Process(popen.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                sizes = []
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):  # exited between calls
                        sizes.append(p.memory_info().rss)
                if sizes:
                    peak_one = max(peak_one, max(sizes))
                    peak_sum = max(peak_sum, sum(sizes))
            except psutil.NoSuchProcess:
                break  # the sender itself has exited
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = popen.communicate()
    done.set()
    sampler.join()
    result = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    return time.perf_counter() - t, result, peak_one, peak_sum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="sender processes (--workers)")
    ap.add_argument("--pg", action="store_true",
                    help="use a throwaway PostgreSQL server instead of SQLite")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.pg:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from pg import fresh_database, postgres_server

        with postgres_server() as admin:
            bench(args, fresh_database(admin))
    else:
        bench(args, None)


def bench(args: argparse.Namespace, db_url: str | None) -> None:
    """One benchmark run against the SQLite file in the work folder or ``db_url``."""

    work = Path(tempfile.mkdtemp(prefix="pushcli-send-bench-"))
    port = free_port()
    cert, key = make_self_signed_cert(work)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, port=port, cert=cert, key=key))
    nginx = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit(f"nginx did not start: {nginx.stderr.read().decode() if nginx.stderr else ''}")

        info = generate_keys(work)
        subs = work / "subs.csv"
        write_subscriptions(subs, args.subscribers, port)
        (work / "campaign.yml").write_text(
            "name: bench\n"
            "notification:\n"
            "  title: Benchmark\n"
            "  body: A message of ordinary length for a campaign notification body.\n"
            "  url: https://shop.example.com/bench\n"
            "  icon: https://shop.example.com/icon.png\n"
            "delivery:\n  ttl: 3600\n  topic: bench\n"
            "vapid:\n  subject: mailto:bench@shop.example.com\n")
        env = dict(os.environ, PUSHCLI_DB=db_url or str(work / "bench.db"),
                   PUSHCLI_ALLOW_HOSTS="127.0.0.1", SSL_CERT_FILE=cert,
                   PUSHCLI_VAPID_PRIVATE_KEY=str(info.private_key), NO_COLOR="1")
        py = sys.executable
        t_import, proc = run([py, "-m", "pushcli", "subscribers", "import", str(subs), "-q"],
                             env, work)
        if proc.returncode != 0:
            sys.exit(f"import failed: {proc.stderr}")
        cmd = [py, "-m", "pushcli", "send", str(work / "campaign.yml"), "--json", "-q"]
        if args.concurrency:
            cmd += ["--concurrency", str(args.concurrency)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        latencies: list[float] = []
        stop_probe = threading.Event()

        def probe_report() -> None:
            """`pushcli report` while the send runs: the store must stay responsive."""
            while not stop_probe.wait(5.0):
                t = time.perf_counter()
                r = subprocess.run([py, "-m", "pushcli", "report", "bench", "--json"], env=env,
                                   cwd=work, capture_output=True, text=True)
                if r.returncode == 0:
                    latencies.append(time.perf_counter() - t)

        prober = threading.Thread(target=probe_report, daemon=True)
        prober.start()
        t_send, proc, peak_one, peak_sum = run_measured(cmd, env, work)
        stop_probe.set()
        prober.join()
        if proc.returncode != 0:
            sys.exit(f"send exited {proc.returncode}: {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout)
        run_info = report["run"]
        print(f"store              {'PostgreSQL' if db_url else 'SQLite'}, "
              f"{args.workers or 'auto'} sender process(es)")
        print(f"subscribers        {args.subscribers:,}")
        print(f"import             {t_import:.1f} s ({args.subscribers / t_import:,.0f} rows/s)")
        print(f"send wall time     {t_send:.1f} s (process start to exit)")
        print(f"send engine time   {run_info['duration_s']:.1f} s")
        print(f"messages/s         {report['sent'] / run_info['duration_s']:,.0f} (engine), "
              f"{report['sent'] / t_send:,.0f} (wall)")
        print(f"sent / failed      {report['sent']:,} / {report['failed']:,}")
        print(f"VAPID signatures   {run_info['vapid_signatures']}")
        print(f"peak RSS           {peak_one / 2**20:.0f} MB largest process, "
              f"{peak_sum / 2**20:.0f} MB whole sender tree")
        if latencies:
            print(f"report during send {len(latencies)} runs, slowest {max(latencies):.2f} s "
                  "(process start included)")
        print(f"load average       {os.getloadavg()[0]:.2f} (2 cores; other work on the machine)")
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
