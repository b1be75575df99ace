"""Send benchmark: `pushcli send` against a local nginx HTTPS sink that answers 201.

Prints messages/s, wall time and the sender's peak RSS, and how many VAPID
signatures it made. nginx (Debian's nginx-light) serves TLS with a self-signed
certificate that the sender trusts through SSL_CERT_FILE, as a real run trusts
the system store. Subscriptions carry real P-256 keys, so every message is
really encrypted.

    .venv/bin/python bench/send_bench.py --subscribers 100000

Unless ``--peer none``, Node web-push 3.6.7 (``npm ci``; ``bench/node_peer.js``)
then sends the same payload shape to the same subscriptions and sink, 64
requests in flight over a keep-alive agent, and the ratio of the two
whole-process rates (start-up included) is printed.

``--latency-ms N`` makes the sink answer N ms late (nginx's echo module,
``echo_sleep``), as a push service tens of milliseconds away does: there the
number of requests in flight, not CPU, decides the rate. The issue's row:

    .venv/bin/python bench/send_bench.py --subscribers 30000 --latency-ms 60
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/send_bench.py`: the harness is in tests/
    sys.path.insert(0, str(ROOT))

from pushcli.encoding import b64url_encode  # noqa: E402
from pushcli.keys import generate_keys  # noqa: E402
from tests.support import echo_201, nginx_sink, p256dh_keys  # noqa: E402


def write_subscriptions(path: Path, n: int, port: int) -> None:
    """n rows with real keys (2,000 key pairs cycled: key generation is not what we measure)."""
    keys = p256dh_keys(min(n, 2000))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["endpoint", "p256dh", "auth", "tags"])
        for i in range(n):
            w.writerow([f"https://127.0.0.1:{port}/push/{i:08d}", keys[i % len(keys)],
                        b64url_encode(os.urandom(16)), "news"])


PAYLOAD = {"web_push": 8030, "notification": {
    "title": "Benchmark",
    "body": "A message of ordinary length for a campaign notification body.",
    "navigate": "https://shop.example.com/bench?utm_source=push&utm_medium=webpush"
                "&utm_campaign=bench",
    "icon": "https://shop.example.com/icon.png"}}


def write_node_job(path: Path, subs: Path, private_pem: Path) -> None:
    """The Node peer's input: the same subscriptions and VAPID key, a payload of the same shape."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_pem.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with subs.open(newline="") as fh:
        rows = [{"endpoint": r["endpoint"], "keys": {"p256dh": r["p256dh"], "auth": r["auth"]}}
                for r in csv.DictReader(fh)]
    path.write_text(json.dumps({
        "vapid": {"subject": "mailto:bench@shop.example.com",
                  "publicKey": b64url_encode(key.public_key().public_bytes(
                      Encoding.X962, PublicFormat.UncompressedPoint)),
                  "privateKey": b64url_encode(key.private_numbers().private_value.to_bytes(
                      32, "big"))},
        "ttl": 3600, "topic": "bench", "payload": json.dumps(PAYLOAD),
        "subscriptions": rows}))


def run_node_peer(job: Path, cert: Path, concurrency: int, cwd: Path) -> tuple[float, dict]:
    """Node web-push 3.6.7 (npm ci) on the same subscriptions: wall seconds and its summary."""
    root = Path(__file__).resolve().parent.parent
    node = shutil.which("node")
    if node is None or not (root / "node_modules" / "web-push").is_dir():
        sys.exit("the Node peer needs node and `npm ci` in the checkout (or pass --peer none)")
    t, proc = run([node, str(root / "bench" / "node_peer.js"), str(job), str(concurrency)],
                  dict(os.environ, NODE_EXTRA_CA_CERTS=str(cert)), cwd)
    if proc.returncode != 0:
        sys.exit(f"node peer exited {proc.returncode}: {proc.stderr[-2000:]}")
    return t, json.loads(proc.stdout)


def run(cmd: list[str], env: dict[str, str],
        cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def sink_cpu(pid: int) -> float:
    """CPU seconds nginx (master and workers) has used so far."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (a sender tree, once it has exited)."""
    t = os.times()
    return t.children_user + t.children_system


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path
                 ) -> tuple[float, subprocess.CompletedProcess, int, int,
                            list[tuple[str, int]]]:
    """Run and sample the RSS of the whole process tree (the sender and its children).

    Returns (seconds, result, peak RSS of the largest process, peak RSS summed over
    the tree, each process's peak as (parent or child, RSS)), in bytes, sampled every
    0.2 s.
    """
    import psutil

    t = time.perf_counter()
    popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak_one = peak_sum = 0
    per_process: dict[int, tuple[str, int]] = {}
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
                        rss = p.memory_info().rss
                        sizes.append(rss)
                        role = "parent" if p.pid == popen.pid else "child"
                        per_process[p.pid] = (role, max(per_process.get(p.pid, ("", 0))[1],
                                                        rss))
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
    return (time.perf_counter() - t, result, peak_one, peak_sum,
            sorted(per_process.values(), reverse=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="pin pushcli's requests in flight (default: adaptive, up to 1,000)")
    ap.add_argument("--latency-ms", type=int, default=0, choices=[0, 20, 60, 150],
                    help="the sink answers this late (a push service this far away)")
    ap.add_argument("--http2", action="store_true",
                    help="the sink offers HTTP/2 by ALPN, as push services do (default: "
                    "HTTP/1.1 only); Node web-push speaks HTTP/1.1 either way")
    ap.add_argument("--workers", type=int, default=None, help="sender processes (--workers)")
    ap.add_argument("--pg", action="store_true",
                    help="use a throwaway PostgreSQL server instead of SQLite")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--peer", choices=["node", "none"], default="node",
                    help="also send with Node web-push 3.6.7 (same subscriptions, sink and run) "
                    "and print the ratio")
    ap.add_argument("--peer-concurrency", type=int, default=64,
                    help="requests the Node peer keeps in flight")
    ap.add_argument("--compare-loops", action="store_true",
                    help="first also send with PUSHCLI_EVENT_LOOP=uvloop (another campaign, "
                    "same store) to measure what uvloop gives")
    ap.add_argument("--probe-report", action="store_true",
                    help="run `pushcli report` every 5 s during the measured send and print "
                    "its slowest answer (slows the send it measures)")
    ap.add_argument("--wrap", metavar="COMMAND",
                    help="run the measured send under this command, e.g. \"py-spy record "
                    "--subprocesses --format raw -o prof.txt --\" or \"strace -f -c -o "
                    "calls.txt\" (slows the send)")
    ap.add_argument("--paired", action="store_true",
                    help="first send the same audience four times, without, with, with and "
                    "without the intent log (each its own campaign, same store), to measure "
                    "what the intent writes cost")
    ap.add_argument("--figures", metavar="FILE", type=Path,
                    help="also write the run's figures to FILE as JSON (bench/goals.py reads "
                    "them)")
    args = ap.parse_args()
    if args.pg:
        from tests.support import fresh_database, postgres_server

        with postgres_server() as admin:
            bench(args, fresh_database(admin))
    else:
        bench(args, None)


def bench(args: argparse.Namespace, db_url: str | None) -> None:
    """One benchmark run against the SQLite file in the work folder or ``db_url``."""
    # pip compiles an installed wheel's modules; an editable checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would compile pushcli's ~80 modules from source in every
    # process (~0.16 s CPU each here), a cost no installed pushcli pays
    import compileall

    import pushcli

    compileall.compile_dir(Path(pushcli.__file__).parent, quiet=1)
    work = Path(tempfile.mkdtemp(prefix="pushcli-send-bench-"))
    # the sink: 201 at once, or after --latency-ms (echo module) like a distant service
    answer = echo_201(args.latency_ms) if args.latency_ms else "return 201;"
    with contextlib.ExitStack() as stack:
        stack.callback(cleanup, work, args.keep)
        try:
            sink = stack.enter_context(nginx_sink(work, {"/": answer}, http2=args.http2))
        except RuntimeError as e:
            sys.exit(str(e))
        port, cert = sink.port, sink.cert

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
        intent_cost: list[tuple[bool, float, float]] = []  # (with intent, rate, CPU us/msg)
        if args.paired:
            # ABBA (without, with, with, without), each on its own campaign in this store and
            # without report probes: a later send meets a bigger ledger and another load,
            # so a fixed order would book that drift as the intent log's cost
            for k, with_intent in enumerate((False, True, True, False)):
                (work / f"pair{k}.yml").write_text(
                    (work / "campaign.yml").read_text().replace("name: bench\n",
                                                               f"name: bench-pair{k}\n"))
                pair_cmd = [c if c != str(work / "campaign.yml") else str(work / f"pair{k}.yml")
                            for c in cmd]
                pair_env = env if with_intent else dict(env, PUSHCLI_BENCH_NO_INTENT="1")
                cpu0 = os.times()
                _, bproc, *_ = run_measured(pair_cmd, pair_env, work)
                cpu1 = os.times()
                if bproc.returncode != 0:
                    sys.exit(f"paired send exited {bproc.returncode}: {bproc.stderr[-2000:]}")
                b = json.loads(bproc.stdout)
                cpu = (cpu1.children_user - cpu0.children_user
                       + cpu1.children_system - cpu0.children_system)
                intent_cost.append((with_intent, b["sent"] / b["run"]["duration_s"],
                                    1e6 * cpu / max(b["sent"], 1)))
        uv_loop: tuple[float, dict] | None = None
        if args.compare_loops:  # run first, so the default-loop send below is the one reported
            (work / "uvloop.yml").write_text(
                (work / "campaign.yml").read_text().replace("name: bench\n",
                                                           "name: bench-uvloop\n"))
            loop_cmd = [str(work / "uvloop.yml") if c == str(work / "campaign.yml") else c
                        for c in cmd]
            t_loop, lproc, *_ = run_measured(loop_cmd, dict(env, PUSHCLI_EVENT_LOOP="uvloop"),
                                               work)
            if lproc.returncode != 0:
                sys.exit(f"uvloop send exited {lproc.returncode}: {lproc.stderr[-2000:]}")
            uv_loop = t_loop, json.loads(lproc.stdout)
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

        # off by default: each probe is a whole pushcli process (~1 s CPU on this machine),
        # a load the Node peer's run does not carry (it cost ~15 % of the 100k rate)
        prober = threading.Thread(target=probe_report if args.probe_report else lambda: None,
                                  daemon=True)
        prober.start()
        measured = cmd
        if args.wrap:  # a profiler or tracer around the send; its figures are then not the point
            measured = [*shlex.split(args.wrap), *cmd]
        cpu0, sink0 = children_cpu(), sink_cpu(sink.pid)
        t_send, proc, peak_one, peak_sum, breakdown = run_measured(measured, env, work)
        cpu_ours, sink_ours = children_cpu() - cpu0, sink_cpu(sink.pid) - sink0
        stop_probe.set()
        prober.join()
        if proc.returncode != 0:
            sys.exit(f"send exited {proc.returncode}: {proc.stderr[-2000:]}")
        report = json.loads("\n".join(line for line in proc.stdout.splitlines()
                                      if line.startswith(("{", " ", "}"))))
        run_info = report["run"]
        peer: tuple[float, dict] | None = None
        if args.peer == "node":
            write_node_job(work / "node-job.json", subs, Path(info.private_key or ""))
            cpu0, sink0 = children_cpu(), sink_cpu(sink.pid)
            peer = run_node_peer(work / "node-job.json", cert, args.peer_concurrency, work)
            cpu_node, sink_node = children_cpu() - cpu0, sink_cpu(sink.pid) - sink0
        # each figure once: printed below, and written with --figures
        sent = max(report["sent"], 1)
        wall_rate, engine_rate = report["sent"] / t_send, report["sent"] / run_info["duration_s"]
        cpu_us, sink_us = 1e6 * cpu_ours / sent, 1e6 * sink_ours / sent
        node_rate = node_cpu_us = None
        if peer is not None:
            node_rate = peer[1]["sent"] / peer[0]
            node_cpu_us = 1e6 * cpu_node / max(peer[1]["sent"], 1)
        print(f"store              {'PostgreSQL' if db_url else 'SQLite'}, "
              f"{args.workers or 'auto'} sender process(es)")
        print(f"subscribers        {args.subscribers:,}")
        print(f"sink               {args.latency_ms} ms away, "
              f"{'HTTP/2 and HTTP/1.1 (ALPN)' if args.http2 else 'HTTP/1.1 only'}")
        print(f"import             {t_import:.1f} s ({args.subscribers / t_import:,.0f} rows/s)")
        print(f"send wall time     {t_send:.1f} s (process start to exit)")
        print(f"send engine time   {run_info['duration_s']:.1f} s")
        print(f"messages/s         {engine_rate:,.0f} (engine), {wall_rate:,.0f} (wall)")
        print(f"sent / failed      {report['sent']:,} / {report['failed']:,}")
        print(f"CPU per message    {cpu_us:,.0f} us pushcli (whole tree, start-up "
              f"included), {sink_us:,.0f} us the nginx sink; both cores' "
              f"ceiling at that cost {2 * sent / (cpu_ours + sink_ours):,.0f}/s")
        if intent_cost:
            def mean(with_intent: bool, i: int) -> float:
                vals = [r[i] for r in intent_cost if r[0] is with_intent]
                return sum(vals) / len(vals)

            runs = ", ".join(f"{'with' if w else 'without'} {r:,.0f}/s {c:,.0f} us"
                             for w, r, c in intent_cost)
            print(f"intent log, ABBA   {runs} (engine rate, sender-tree CPU per message)")
            print(f"intent log cost    {100 * (1 - mean(True, 1) / mean(False, 1)):+.1f} % "
                  f"rate, {100 * (mean(True, 2) / mean(False, 2) - 1):+.1f} % CPU per message")
        if uv_loop is not None:
            t_loop, lrep = uv_loop
            print(f"uvloop             {lrep['sent'] / lrep['run']['duration_s']:,.0f} messages/s "
                  f"(engine), {lrep['sent'] / t_loop:,.0f} (wall), run first; "
                  f"{(lrep['sent'] / t_loop) / wall_rate:.2f}x the default "
                  "loop's wall rate")
        if peer is not None and node_rate is not None:
            nrep = peer[1]
            print(f"node web-push      {node_rate:,.0f} messages/s (wall, whole process, "
                  f"{args.peer_concurrency} in flight, keep-alive), sent / failed "
                  f"{nrep['sent']:,} / {nrep['failed']:,}"
                  + (f" (first error: {nrep['first_error']})" if nrep["failed"] else ""))
            print(f"node CPU / message {node_cpu_us:,.0f} us node, "
                  f"{1e6 * sink_node / max(nrep['sent'], 1):,.0f} us the nginx sink")
            print(f"pushcli vs node    {wall_rate / node_rate:.2f}x (whole process, start-up "
                  "included, same subscriptions and sink, this run)")
        for service, fig in (run_info.get("by_service") or {}).items():
            print(f"transport          {service}: {fig['concurrency_reached']:,} in flight at "
                  f"most ({'pinned' if args.concurrency else 'adaptive'}), latency p50 "
                  f"{fig['latency_p50_ms']} ms, p95 {fig['latency_p95_ms']} ms")
        print(f"VAPID signatures   {run_info['vapid_signatures']}")
        print(f"peak RSS           {peak_one / 2**20:.0f} MB largest process, "
              f"{peak_sum / 2**20:.0f} MB whole sender tree")
        if breakdown:
            print("RSS by process     " + ", ".join(f"{role} {rss / 2**20:.0f} MB"
                                                   for role, rss in breakdown))
        if latencies:
            print(f"report during send {len(latencies)} runs, slowest {max(latencies):.2f} s "
                  "(process start included)")
        print(f"load average       {os.getloadavg()[0]:.2f} (2 cores; other work on the machine)")
        if args.figures:
            services = run_info.get("by_service") or {}
            args.figures.write_text(json.dumps({
                "subscribers": args.subscribers, "latency_ms": args.latency_ms,
                "http2": args.http2, "sent": report["sent"], "failed": report["failed"],
                "wall_rate": wall_rate, "engine_rate": engine_rate,
                "cpu_us": cpu_us, "sink_us": sink_us,
                "node_rate": node_rate, "node_cpu_us": node_cpu_us,
                "ratio": wall_rate / node_rate if node_rate else None,
                "in_flight": max((f["concurrency_reached"] for f in services.values()),
                                 default=0),
                "tree_mb": peak_sum / 2**20, "largest_mb": peak_one / 2**20,
                "load": os.getloadavg()[0]}, indent=1))


def cleanup(work: Path, keep: bool) -> None:
    """Remove the work folder unless --keep (then say where it is)."""
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
