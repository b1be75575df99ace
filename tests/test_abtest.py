"""A/B test arithmetic: Wilson intervals against published figures, winner decisions."""

from __future__ import annotations

import pytest

from pushcli.abtest import decide, two_proportion_z, wilson_interval
from pushcli.errors import InputError
from pushcli.messages import VariantResult


@pytest.mark.parametrize(("successes", "trials", "low", "high"), [
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (score interval)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
])
def test_wilson_interval_matches_published_values(successes, trials, low, high) -> None:
    lo, hi = wilson_interval(successes, trials)
    assert lo == pytest.approx(low, abs=6e-5)
    assert hi == pytest.approx(high, abs=6e-5)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing sent: nothing known
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(29, 29)[1] == 1.0
    narrow, wide = wilson_interval(100, 1000), wilson_interval(10, 100)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert wilson_interval(5, 10, z=2.576)[0] < wilson_interval(5, 10)[0]  # 99 % is wider
    with pytest.raises(InputError):
        wilson_interval(11, 10)


def test_two_proportion_z() -> None:
    a, b = VariantResult("a", sent=1000, clicked=42), VariantResult("b", sent=1000, clicked=31)
    # pooled 0.0365: se = sqrt(0.0365 * 0.9635 * 2 / 1000) = 0.0083866
    assert two_proportion_z(a, b) == pytest.approx(0.011 / 0.0083866, rel=1e-4)
    assert two_proportion_z(b, a) == pytest.approx(-two_proportion_z(a, b))
    assert two_proportion_z(a, VariantResult("c")) == 0.0  # nobody sent c
    assert two_proportion_z(VariantResult("x", sent=5), VariantResult("y", sent=9)) == 0.0


def results(*rows: tuple[str, int, int]) -> dict[str, VariantResult]:
    return {name: VariantResult(name, sent=sent, clicked=clicked) for name, sent, clicked in rows}


def test_decide_best_click_rate_and_significance() -> None:
    d = decide(results(("a", 1000, 31), ("b", 1000, 42)))
    assert (d.variant, d.significant) == ("b", False)
    assert "a 3.10 % (31/1000)" in d.reason and "b 4.20 % (42/1000)" in d.reason
    assert "b leads a by 1.10 points, not significant at 95 %" in d.reason
    assert "z = 1.31" in d.reason

    d = decide(results(("a", 5000, 150), ("b", 5000, 210), ("c", 5000, 100)))
    assert (d.variant, d.significant) == ("b", True)
    assert "b leads a by 1.20 points, significant at 95 %" in d.reason  # vs the runner-up


def test_decide_ties_go_to_the_earlier_variant_in_the_given_order() -> None:
    assert decide(results(("b", 100, 5), ("a", 100, 5))).variant == "b"
    assert decide(results(("a", 100, 5), ("b", 100, 5))).variant == "a"
    assert decide(results(("x", 200, 10), ("y", 100, 5), ("z", 100, 7))).variant == "z"


def test_decide_without_clicks_picks_the_first_and_says_so() -> None:
    d = decide(results(("control", 400, 0), ("new", 400, 0)))
    assert (d.variant, d.significant) == ("control", False)
    assert "no clicks recorded" in d.reason and "picked the first variant, control" in d.reason


def test_decide_edge_cases() -> None:
    assert decide(results(("solo", 10, 1))).reason.endswith("the only variant")
    assert decide(results(("a", 0, 0), ("b", 10, 1))).variant == "b"  # a sent nobody
    with pytest.raises(InputError):
        decide({})
