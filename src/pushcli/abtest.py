"""A/B test arithmetic: the 95 % interval of a click rate and the winner decision.

Pure functions of counts (``messages.VariantResult``), so the decision a send makes
at ``decide_after`` and the figures a report prints come from one place, and tests
check them against published values without a store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pushcli.errors import InputError
from pushcli.messages import VariantResult

__all__ = ["Z95", "Decision", "decide", "two_proportion_z", "wilson_interval"]

#: Two-sided 95 % normal quantile.
Z95 = 1.96


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials`` (95 % with the default ``z``).

    Wilson rather than the textbook ``p ± z·sqrt(p(1-p)/n)``: that one collapses to a
    zero-width interval at 0 clicks and leaves [0, 1] for small samples, exactly the
    cases an early A/B test has. With no trials nothing is known: (0.0, 1.0).
    """
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise InputError(f"{successes} successes out of {trials} trials is not a proportion")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    # clamp float noise: at 0 or n successes one bound is exactly 0 or 1
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(a: VariantResult, b: VariantResult) -> float:
    """The pooled two-proportion z statistic of ``a``'s click rate minus ``b``'s.

    0.0 when it is undefined (a variant sent nobody, or the pooled rate is 0 or 1,
    where both rates are equal anyway).
    """
    if not a.sent or not b.sent:
        return 0.0
    pooled = (a.clicked + b.clicked) / (a.sent + b.sent)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.sent + 1 / b.sent))
    return (a.click_rate - b.click_rate) / se if se > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The variant ``winner:`` sends to the rest of the audience, and why (``reason`` is
    stored with it and shown in reports). ``significant``: the lead over the runner-up
    passes a two-sided two-proportion z-test at 95 %."""

    variant: str
    reason: str
    significant: bool


def _rate(r: VariantResult) -> str:
    return f"{r.variant} {r.click_rate * 100:.2f} % ({r.clicked}/{r.sent})"


def decide(results: Mapping[str, VariantResult]) -> Decision:
    """Pick the variant with the best click rate (ties: the earliest in ``results``' order,
    which is the campaign file's order).

    Significance is a pooled two-proportion z-test of the winner against the runner-up
    (|z| >= 1.96, two-sided 95 %), not overlapping Wilson intervals: non-overlap is a
    stricter test than the one its 95 % suggests, and would call real leads "not
    significant". When nobody clicked, the rates say nothing: the first variant is
    picked, and the reason says so. The winner is sent either way (the campaign asked
    for a decision at ``decide_after``); ``reason`` tells the operator how much it means.
    """
    if not results:
        raise InputError("no variants to decide between")
    ordered = list(results.values())
    rates = "click rates: " + ", ".join(_rate(r) for r in ordered)
    if not any(r.clicked for r in ordered):
        first = ordered[0]
        return Decision(first.variant, f"no clicks recorded in any variant ({rates}); "
                        f"picked the first variant, {first.variant}", False)
    best = ordered[0]
    for r in ordered[1:]:
        if r.click_rate > best.click_rate:
            best = r
    others = [r for r in ordered if r is not best]
    if not others:
        return Decision(best.variant, f"{rates}; the only variant", False)
    runner_up = others[0]
    for r in others[1:]:
        if r.click_rate > runner_up.click_rate:
            runner_up = r
    z = two_proportion_z(best, runner_up)
    significant = abs(z) >= Z95
    verdict = "significant" if significant else "not significant"
    lead = (best.click_rate - runner_up.click_rate) * 100
    return Decision(
        best.variant,
        f"{rates}; {best.variant} leads {runner_up.variant} by {lead:.2f} points, "
        f"{verdict} at 95 % (two-proportion z-test, z = {z:.2f})",
        significant)
