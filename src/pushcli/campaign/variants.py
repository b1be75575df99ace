"""A/B tests: which arm of a campaign each subscriber is in, and UTM tags on its links.

Assignment is a pure function of (campaign name, subscriber id) through BLAKE2b,
never Python's ``hash`` (salted per process), so re-runs, ``--workers`` processes
and shared PostgreSQL senders on other hosts all put a subscriber in the same
arm without asking each other. Three independent draws come from one digest:
the holdout, then (with ``winner:``) the test group, then the variant by weight.
Drawing them independently keeps each share exact whatever the others are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from pushcli.campaign.model import Campaign, percent

__all__ = ["Arm", "Assigner", "utm_params", "with_utm"]

_PERSON = b"pushcli-arm-v1"  # BLAKE2b personalization: these draws and no other hash
_SCALE = 1 << 64


@dataclass(frozen=True, slots=True)
class Arm:
    """What one subscriber gets from a campaign.

    ``variant`` is the variant's name (None: the campaign has no variants, or the
    subscriber gets nothing now), ``index`` its number in tokens
    (``Campaign.variant_index``). ``holdout``: the control group, never sent.
    ``waiting``: outside the test group of a ``winner:`` test whose winner is not
    decided yet; a later run sends it the winner.
    """

    variant: str | None
    index: int
    holdout: bool = False
    waiting: bool = False

    @property
    def sendable(self) -> bool:
        return not (self.holdout or self.waiting)


HOLDOUT = Arm(None, 0, holdout=True)
WAITING = Arm(None, 0, waiting=True)


@dataclass(frozen=True)
class Assigner:
    """The assignment rule of one campaign (picklable: sender processes get a copy).

    ``holdout`` and ``test_share`` are fractions (0..1); ``test_share`` is None
    without ``winner:`` (everyone outside the holdout is in the test).
    ``winner`` is the decided variant, sent to everyone outside test and holdout.
    """

    campaign: str
    names: tuple[str, ...] = ()
    weights: tuple[int, ...] = ()
    holdout: float = 0.0
    test_share: float | None = None
    winner: str | None = None

    @classmethod
    def for_campaign(cls, campaign: Campaign, winner: str | None = None) -> Assigner | None:
        """The campaign's rule, or None when it has neither variants nor a holdout (then
        every subscriber gets the one notification: the send path skips assignment)."""
        if not campaign.variants and not campaign.holdout:
            return None
        if winner is not None:
            campaign.variant_index(winner)  # KeyError for a name the campaign does not have
        return cls(campaign=campaign.name, names=campaign.variant_names(),
                   weights=tuple(v.weight for v in campaign.variants or ()),
                   holdout=percent(campaign.holdout) if campaign.holdout else 0.0,
                   test_share=(percent(campaign.winner.test_share)
                               if campaign.winner is not None else None),
                   winner=winner)

    @property
    def excludes_some(self) -> bool:
        """Whether anyone is held out or waits for the winner (else everyone is sent)."""
        return self.holdout > 0 or (self.test_share is not None and self.winner is None)

    def draws(self, subscriber_id: int) -> tuple[float, float, int]:
        """Three independent uniform draws in [0, 1) for (holdout, test group) and one
        integer in [0, 2**64) for the variant: the whole source of randomness."""
        digest = hashlib.blake2b(f"{self.campaign}\x00{subscriber_id}".encode(),
                                 digest_size=24, person=_PERSON).digest()
        return (int.from_bytes(digest[0:8]) / _SCALE, int.from_bytes(digest[8:16]) / _SCALE,
                int.from_bytes(digest[16:24]))

    def assign(self, subscriber_id: int) -> Arm:
        """Holdout first, then test group vs the rest (with ``winner:``), then a variant
        by weight within the test group. The same answer every time for this rule."""
        u_holdout, u_test, r = self.draws(subscriber_id)
        if u_holdout < self.holdout:
            return HOLDOUT
        if not self.names:
            return Arm(None, 0)
        if self.test_share is not None and u_test >= self.test_share:
            if self.winner is None:
                return WAITING
            return Arm(self.winner, self.names.index(self.winner) + 1)
        point = (r * sum(self.weights)) >> 64  # floor(u * total), exact in integers
        for index, weight in enumerate(self.weights):
            if point < weight:
                return Arm(self.names[index], index + 1)
            point -= weight
        raise AssertionError("weights are positive")  # pragma: no cover

    def variant_of(self, subscriber_id: int) -> str | None:
        """The variant name the ledger records for this subscriber (None: none)."""
        return self.assign(subscriber_id).variant


def utm_params(campaign: str, variant: str | None) -> tuple[tuple[str, str], ...]:
    """The UTM parameters of a campaign's links; ``utm_content`` only with variants."""
    params = [("utm_source", "pushcli"), ("utm_medium", "web_push"), ("utm_campaign", campaign)]
    if variant is not None:
        params.append(("utm_content", variant))
    return tuple(params)


def with_utm(url: str, params: tuple[tuple[str, str], ...]) -> str:
    """``url`` with ``params`` appended to its query, keeping its own query (as written)
    and fragment, and never replacing a ``utm_*`` key the URL already has.

    UTM tags are the only tracking that works with Declarative Web Push, where no
    service worker runs: the site's analytics read them on arrival.
    """
    query = urlsplit(url).query
    have = {key.lower() for key, _ in parse_qsl(query, keep_blank_values=True)}
    extra = [(k, v) for k, v in params if k not in have]
    if not extra:
        return url
    # spliced as text, not re-assembled by urlunsplit, so the rest stays byte for byte
    base, hash_mark, fragment = url.partition("#")
    joint = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
    return f"{base}{joint}{urlencode(extra)}{hash_mark}{fragment}"
