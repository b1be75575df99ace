"""Benchmark `pushcli subscribers import` on a large CSV of realistic subscriptions.

Why a script and not a test: the figures (rows/s, peak RSS) depend on the machine
and are for people to compare between changes, not for CI to assert on.

The rows carry REAL P-256 public keys because import validates that every
p256dh is a point on the curve; a benchmark with fake keys would measure a
different (rejecting) code path. Generating a million key pairs would take
minutes, so a pool of real key pairs is cycled; endpoints stay unique so every
row is an insert, as in a first import of a large list.

Usage:
    .venv/bin/python bench/import_bench.py                  # 1,000,000 rows
    .venv/bin/python bench/import_bench.py --rows 100000 --keep
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/import_bench.py`: the harness is in tests/
    sys.path.insert(0, str(ROOT))

from tests.support import p256dh_keys  # noqa: E402

#: Targets the import must meet on the reference 2-core machine.
TARGET_SECONDS = 60.0
TARGET_RSS_MB = 200.0

FIRST_NAMES = ("Ana", "Bo", "Chloé", "Dmitri", "Eun-ji", "Farah", "Gus", "Hélène", "Ivo", "Jun")
TAG_SETS = ("", "news", "news;promo", "vip", "promo;vip", "beta;news")


def b64url(raw: bytes) -> str:
    """Unpadded base64url, the form browsers give in PushSubscription.toJSON()."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def write_csv(path: Path, rows: int, key_pool: int, seed: int) -> None:
    """Write the CSV with plain string joins: no cell needs quoting, and csv.writer
    would make generation, not import, dominate the wall time of a run."""
    rng = random.Random(seed)
    keys = p256dh_keys(key_pool)  # genuine P-256 points: import checks the curve
    run = os.urandom(6).hex()  # endpoints unique across runs sharing a kept db
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("endpoint,p256dh,auth,tags,first_name\n")
        chunk: list[str] = []
        for i in range(rows):
            chunk.append(
                f"https://fcm.googleapis.com/fcm/send/{run}-{i:09d}:{rng.getrandbits(64):016x},"
                f"{keys[i % key_pool]},{b64url(rng.randbytes(16))},"
                f"{TAG_SETS[i % len(TAG_SETS)]},{FIRST_NAMES[i % len(FIRST_NAMES)]}\n"
            )
            if len(chunk) >= 10_000:
                fh.writelines(chunk)
                chunk.clear()
        fh.writelines(chunk)


def run_import(
    csv_path: Path, db: Path
) -> tuple[float, float, float, subprocess.CompletedProcess[str]]:
    """Run the import as users do (a fresh interpreter) and return wall seconds,
    CPU seconds, the child's peak RSS in MB, and the finished process.

    RUSAGE_CHILDREN's ru_maxrss is the peak of the largest waited-for child; this
    script starts no other child, so it is exactly the import's peak (KiB on Linux).
    CPU seconds are reported too because wall time on a shared 2-core machine
    moves with whatever else runs; CPU time moves much less.
    """
    env = dict(os.environ, NO_COLOR="1")
    env.pop("PUSHCLI_DB", None)
    cmd = [sys.executable, "-m", "pushcli", "--db", str(db), "subscribers", "import",
           str(csv_path), "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to import")
    parser.add_argument("--key-pool", type=int, default=2000,
                        help="distinct real P-256 key pairs, cycled over the rows")
    parser.add_argument("--seed", type=int, default=1, help="seed for auth secrets and ids")
    parser.add_argument("--keep", action="store_true",
                        help="keep the CSV and the database (path printed)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="pushcli-import-bench-"))
    try:
        csv_path, db = workdir / "rows.csv", workdir / "bench.db"
        t0 = time.perf_counter()
        write_csv(csv_path, args.rows, args.key_pool, args.seed)
        gen = time.perf_counter() - t0
        size_mb = csv_path.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MB, {args.key_pool} real keys) "
              f"in {gen:.1f} s", flush=True)

        seconds, cpu, peak_mb, proc = run_import(csv_path, db)
        print(f"import: {seconds:.1f} s wall ({cpu:.1f} s CPU), {args.rows / seconds:,.0f} rows/s, "
              f"peak RSS {peak_mb:.0f} MB (exit {proc.returncode})")
        print(f"load average during the run: {os.getloadavg()[0]:.2f} (2 cores here)")
        print(f"targets: time < {TARGET_SECONDS:.0f} s "
              f"{'OK' if seconds < TARGET_SECONDS else 'MISSED'}; "
              f"peak RSS < {TARGET_RSS_MB:.0f} MB "
              f"{'OK' if peak_mb < TARGET_RSS_MB else 'MISSED'}")
        try:
            summary = json.loads(proc.stdout)
            summary["errors"] = summary.get("errors", [])[:5]
            print(json.dumps(summary, indent=2))
        except json.JSONDecodeError:
            print(f"no JSON summary; stdout: {proc.stdout[:500]!r}")
        if proc.stderr:
            print(f"stderr: {proc.stderr[-2000:]}", file=sys.stderr)
        if args.keep:
            print(f"kept: {csv_path} {db}")
        return 0 if proc.returncode == 0 else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
