"""Fault matrix at scale: 20,000 subscribers, every fault kind, then --retry-failed.

Runs the same checks as tests/e2e/test_fault_matrix.py and prints the figures
as JSON. Usage: python stress/fault_matrix.py [N] [--concurrency C | --adaptive]
(pinned at 64 in flight unless told; --adaptive sends with pushcli's defaults, the
adaptive limit shrinking on the 429s, 503s and timeouts).
"""

from __future__ import annotations

import argparse
import json
import time

from _env import e2e_env

from tests.scenarios import run_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n", type=int, nargs="?", default=20_000)
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--concurrency", type=int, default=64)
    pin.add_argument("--adaptive", action="store_true",
                     help="no --concurrency: the adaptive limit, up to its default ceiling")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    with e2e_env() as env:
        pinned = None if args.adaptive else args.concurrency
        result = run_matrix(env, args.n, seed=args.seed, concurrency=pinned,
                            max_unscripted=args.n // 100)
        figures = result.figures()
        figures["emulator"] = env.emu.stats()["by_status"]
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
