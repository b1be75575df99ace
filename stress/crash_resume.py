"""kill -9 the sender at >= 10 different moments; each time check the store and
re-run to completion. Prints one line of figures per kill, then totals.

Every duplicate is counted: after each kill, duplicates at the push service <=
possible_duplicates (the re-run's report) <= duplicates + the intent window; with
--skip (``--on-uncertain skip`` on the re-run) there are no duplicates at all.

Usage: python stress/crash_resume.py [--runs 12] [--subscribers 1500] [--workers 1] [--skip]
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict

from _env import e2e_env

from tests.scenarios import CONCURRENCY, FLUSH_WINDOW, crash_cycle, intent_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--subscribers", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--skip", action="store_true",
                        help="re-run with --on-uncertain skip (no duplicates, some uncertain)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    extra = ("--workers", str(args.workers))
    rows = []
    for run in range(args.runs):
        # spread kill times from "before the first request" to "nearly done"
        kill_after = round(0.3 + (run + rng.random()) * 4.0 / args.runs, 3)
        with e2e_env(seed=run) as env:
            subs = env.subscribe(args.subscribers)
            env.import_subs(subs)
            fig = crash_cycle(env, subs, env.campaign(f"crash{run}"), kill_after,
                              concurrency=CONCURRENCY, extra=extra, skip=args.skip)
        rows.append(asdict(fig))
        print(json.dumps({"run": run, **rows[-1]}), flush=True)
    dup = [r["duplicates"] for r in rows]
    print(json.dumps({
        "runs": len(rows), "subscribers": args.subscribers, "workers": args.workers,
        "integrity_ok": True, "all_reached": True,
        "on_uncertain": "skip" if args.skip else "resend",
        "duplicates_total": sum(dup), "duplicates_max": max(dup),
        "possible_duplicates_total": sum(r["possible_duplicates"] for r in rows),
        "over_count_max": max(r["possible_duplicates"] - r["duplicates"] for r in rows),
        "uncertain_total": sum(r["uncertain"] for r in rows),
        "every_duplicate_counted": all(
            r["duplicates"] <= r["possible_duplicates"] for r in rows) or args.skip,
        "intent_window": intent_window(CONCURRENCY),
        "lost_outcomes_max": max(r["lost_outcomes"] for r in rows),
        "bound": CONCURRENCY + FLUSH_WINDOW,
    }))


if __name__ == "__main__":
    main()
