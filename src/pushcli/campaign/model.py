"""The campaign model: pydantic models, the validators behind them, audience matching.

Validators raise ``_fail`` errors whose text is shown verbatim and whose
location the loader maps back to ``file:line: field``; a model never sees YAML.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pushcli.campaign.sandbox import PLACEHOLDER_RE, has_placeholder, template_problem
from pushcli.messages import CONCURRENCY_RANGE
from pushcli.pushservices import KNOWN_SERVICES, vapid_subject_problem
from pushcli.schedule import (
    DEFAULT_SPAN,
    FrequencyCap,
    Schedule,
    parse_clock,
    parse_duration,
    parse_range,
    zone,
)

__all__ = [
    "MISSING",
    "Action",
    "Audience",
    "Campaign",
    "Delivery",
    "FrequencyCapSpec",
    "HttpsUrl",
    "LocaleOverride",
    "NonEmpty",
    "Notification",
    "ScheduleSpec",
    "TemplateText",
    "TemplateUrl",
    "TitleText",
    "Tracking",
    "VapidSettings",
    "Variant",
    "WinnerSpec",
    "is_https_url",
    "percent",
    "norm_locale",
]

MAX_ACTIONS = 4
MAX_TTL = 2_419_200  # 28 days: the largest TTL FCM accepts, Mozilla caps at 30 days
MAX_URL_LEN = 2048
MAX_VARIANTS = 8
MAX_WEIGHT = 1_000_000

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>\"\\]")
_PERCENT_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3})?)\s*%")

#: An attribute a subscriber does not have (distinct from None, which CSV/JSON can hold).
MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()


def norm_locale(tag: str) -> str:
    """``fr_CA.UTF-8`` -> ``fr-ca``: browsers and CSV exports disagree on case and separator."""
    return tag.split(".", 1)[0].split("@", 1)[0].strip().replace("_", "-").lower()


def _check_template(source: str) -> None:
    problem = template_problem(source)
    if problem is not None:
        raise _fail(problem)


# --------------------------------------------------------------------------- validators


def _fail(message: str, *sub: str | int) -> PydanticCustomError:
    """A pydantic error whose text is ours verbatim; ``sub`` extends its location.

    The message goes through the context rather than the template so braces in
    it (template snippets) are not taken as format fields.
    """
    return PydanticCustomError("pushcli", "{msg}", {"msg": message, "sub": list(sub)})


def is_https_url(value: str) -> bool:
    if len(value) > MAX_URL_LEN or _URL_FORBIDDEN.search(value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def _https_url(value: str) -> str:
    """Static URL fields (icon, image, actions) are not templates."""
    if has_placeholder(value):
        raise _fail("placeholders are only allowed in title, body and url")
    if not is_https_url(value):
        raise _fail("must be an absolute https URL")
    return value


def _template_url(value: str) -> str:
    """A templated URL can only be checked fully after rendering; check what we can now."""
    if not has_placeholder(value):
        if not is_https_url(value):
            raise _fail("must be an absolute https URL")
        return value
    _check_template(value)
    prefix = value[: PLACEHOLDER_RE.search(value).start()].lower()  # type: ignore[union-attr]
    if prefix and not (prefix.startswith("https://") or "https://".startswith(prefix)):
        raise _fail("must be an absolute https URL")
    return value


def _template(value: str) -> str:
    _check_template(value)
    return value


def _nonempty(value: str) -> str:
    if not value.strip():
        raise _fail("must not be empty")
    return value


def _nonempty_template(value: str) -> str:
    return _template(_nonempty(value))


def _in_range(lo: int, hi: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise _fail(f"must be between {lo} and {hi}{unit}")
        return value

    return AfterValidator(check)


def _non_negative(value: int) -> int:
    if value < 0:
        raise _fail("must be 0 or more")
    return value


def _positive_finite(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise _fail("must be a number greater than 0")
    return value


def _service_rates(value: dict[str, float]) -> dict[str, float]:
    for name in value:
        if name not in KNOWN_SERVICES:
            raise _fail(f"unknown push service {name!r} (one of: "
                        f"{', '.join(sorted(KNOWN_SERVICES))})")
    return value


def _topic(value: str) -> str:
    if not value:
        raise _fail("must not be empty")
    if len(value) > 32:
        raise _fail(f"must be at most 32 characters (has {len(value)})")
    if not _TOPIC_RE.fullmatch(value):
        raise _fail("must use only the base64url characters A-Z a-z 0-9 - _")
    return value


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _fail(
            "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


#: ``notification.data`` keys pushcli writes into every payload (``render``): a campaign's own
#: value there would be silently replaced, so it is refused where it is written.
RESERVED_DATA_KEYS = ("pushcli_token", "pushcli_events")


def _json_data(value: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise _fail("must be plain JSON (no NaN or infinity)") from None
    for key in RESERVED_DATA_KEYS:
        if key in value:
            raise _fail("is set by pushcli in every payload (the engagement token and "
                        "where events go); use another key", key)
    return value


def _subject(value: str) -> str:
    """The one VAPID subject rule (``pushservices.vapid_subject_problem``), at load time."""
    problem = vapid_subject_problem(value)
    if problem is not None:
        raise _fail(problem)
    return value


def _scalar_values(value: Any) -> Any:
    """YAML would happily give us lists or nulls; attribute equality needs scalars."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None or not isinstance(item, str | int | float | bool):
                raise _fail("must be a string, number or true/false", key)
    return value


def _parsed(parse: Any) -> AfterValidator:
    """Check a text field with one of schedule's parsers; the text is kept as written
    (so the stored spec round-trips) and parsed again where it is used."""
    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return value

    return AfterValidator(check)


def _instant(value: Any) -> Any:
    """An ISO 8601 moment with its UTC offset (``2026-12-01T08:00:00+01:00`` or ``...Z``)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _fail(f"{value[:40]!r} is not a date and time like "
                        "2026-12-01T08:00:00+01:00") from None
    else:
        raise _fail("must be a date and time like 2026-12-01T08:00:00+01:00")
    if moment.utcoffset() is None:
        raise _fail("needs a UTC offset (2026-12-01T08:00:00+01:00, or Z for UTC)")
    return moment


def _zone_name(value: str) -> str:
    if zone(value) is None:
        raise _fail(f"unknown time zone {value[:64]!r} (an IANA name such as 'Europe/Paris')")
    return value


def _clock_text(value: Any) -> Any:
    """YAML reads an unquoted 10:30 as the number 630 (base 60): ask for quotes."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise _fail('write the time in quotes, e.g. "10:30"')
    return value


def percent(text: str) -> float:
    """``"10%"`` -> 0.1. ValueError says what is wrong (the model keeps the text as written)."""
    m = _PERCENT_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text[:20]!r} is not a percentage like '10%'")
    return float(m.group(1)) / 100


def _percent_in(lo: int, hi: int) -> AfterValidator:
    def check(value: str) -> str:
        try:
            share = percent(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        if not lo / 100 <= share <= hi / 100:
            raise _fail(f"must be between {lo}% and {hi}%")
        return value

    return AfterValidator(check)


Instant = Annotated[datetime, BeforeValidator(_instant)]
Duration = Annotated[str, _parsed(parse_duration)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
TemplateUrl = Annotated[str, AfterValidator(_template_url)]
TemplateText = Annotated[str, AfterValidator(_template)]
TitleText = Annotated[str, AfterValidator(_nonempty_template)]
NonEmpty = Annotated[str, AfterValidator(_nonempty)]

_FROZEN = ConfigDict(frozen=True, extra="forbid", strict=True)


# --------------------------------------------------------------------------- models


class Action(BaseModel):
    """A notification button; browsers show two, the spec allows a few more."""

    model_config = _FROZEN

    action: NonEmpty
    title: NonEmpty
    url: HttpsUrl | None = None
    icon: HttpsUrl | None = None


class Notification(BaseModel):
    """What the user sees; title, body and url are Jinja templates."""

    model_config = _FROZEN

    title: TitleText
    body: TemplateText
    url: TemplateUrl
    icon: HttpsUrl | None = None
    image: HttpsUrl | None = None
    badge: HttpsUrl | None = None
    tag: NonEmpty | None = None
    renotify: bool | None = None
    require_interaction: bool | None = None
    silent: bool | None = None
    lang: NonEmpty | None = None
    dir: Literal["auto", "ltr", "rtl"] | None = None
    actions: list[Action] = []
    data: Annotated[dict[str, Any], AfterValidator(_json_data)] | None = None
    app_badge: Annotated[int, AfterValidator(_non_negative)] | None = None

    @field_validator("actions")
    @classmethod
    def _few_actions(cls, value: list[Action]) -> list[Action]:
        if len(value) > MAX_ACTIONS:
            raise _fail(f"at most {MAX_ACTIONS} actions are allowed (has {len(value)})")
        seen: set[str] = set()
        for index, action in enumerate(value):
            if action.action in seen:
                raise _fail(f"duplicate action '{action.action}'", index, "action")
            seen.add(action.action)
        return value

    @model_validator(mode="after")
    def _renotify_needs_tag(self) -> Notification:
        # renotify only means something when a tag replaces an earlier notification;
        # Chrome throws a TypeError in showNotification() without one.
        if self.renotify and self.tag is None:
            raise _fail("requires a tag", "renotify")
        return self


def _fits_column(value: str) -> str:
    """The ledger keeps a variant's name in ``deliveries.variant`` (64 characters)."""
    if len(value) > 64:
        raise _fail(f"must be at most 64 characters (has {len(value)})")
    return value


def _optional(name: str) -> tuple[Any, None]:
    """Notification field ``name``, with its validators, made optional (default None)."""
    info = Notification.model_fields[name]
    kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return (kind | None, None)


#: ``variants[].notification``: any fields of ``notification``, replacing the base ones.
#: Derived from ``Notification`` so the two never disagree on a field or its rules; the
#: rules that tie fields together run on the merged notification (``Campaign``).
NotificationOverride: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "NotificationOverride", __config__=_FROZEN,
    **{name: _optional(name) for name in Notification.model_fields})


class Variant(BaseModel):
    """One arm of an A/B test: a name, a share of the test audience, what it changes."""

    model_config = _FROZEN

    name: Annotated[str, AfterValidator(_name), AfterValidator(_fits_column)]
    weight: Annotated[int, _in_range(1, MAX_WEIGHT)]
    notification: NotificationOverride = NotificationOverride()  # type: ignore[valid-type]

    def overrides(self) -> dict[str, Any]:
        """The notification fields this variant sets (as validated objects)."""
        return {k: getattr(self.notification, k) for k in self.notification.model_fields_set}


class Tracking(BaseModel):
    """UTM parameters on links (default on) and where service workers post events."""

    model_config = _FROZEN

    utm: bool = True
    events_url: HttpsUrl | None = None


class WinnerSpec(BaseModel):
    """``winner``: send the test share first, then the best variant to the rest."""

    model_config = _FROZEN

    test_share: Annotated[str, _percent_in(1, 90)] = "20%"
    decide_after: Duration
    metric: Literal["click_rate"] = "click_rate"

    @field_validator("decide_after")
    @classmethod
    def _after(cls, value: str) -> str:
        if not timedelta(minutes=1) <= parse_duration(value) <= timedelta(days=30):
            raise _fail("must be between 1m and 30d")
        return value


class LocaleOverride(BaseModel):
    """Only the text and link vary by language; everything else is shared."""

    model_config = _FROZEN

    title: TitleText | None = None
    body: TemplateText | None = None
    url: TemplateUrl | None = None


def _same(want: Any, got: Any) -> bool:
    """Equality across the type gap between YAML values and CSV/JSON attributes."""
    if type(want) is type(got):
        return bool(want == got)
    if isinstance(want, bool) or isinstance(got, bool):
        return _text(want).lower() == _text(got).lower()
    want_num = isinstance(want, int | float)
    got_num = isinstance(got, int | float)
    if want_num and got_num:
        return bool(want == got)
    if want_num != got_num and isinstance(want if got_num else got, str):
        text = (want if got_num else got).strip()
        number = want if want_num else got
        try:
            return float(text) == number
        except ValueError:
            return False
    return _text(want) == _text(got)


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class FrequencyCapSpec(BaseModel):
    """``audience.frequency_cap``: at most ``max`` messages sent (any campaign) in ``within``."""

    model_config = _FROZEN

    max: Annotated[int, _in_range(1, 1000)]
    within: Duration

    @field_validator("within")
    @classmethod
    def _period(cls, value: str) -> str:
        if not timedelta(hours=1) <= parse_duration(value) <= timedelta(days=366):
            raise _fail("must be between 1h and 366d")
        return value

    def cap(self) -> FrequencyCap:
        return FrequencyCap(self.max, parse_duration(self.within))


class Audience(BaseModel):
    """Who receives the campaign; ``matches`` runs once per subscriber, so it is precomputed."""

    model_config = _FROZEN

    tags: list[NonEmpty] = []
    exclude_tags: list[NonEmpty] = []
    where: Annotated[dict[str, str | int | float | bool], BeforeValidator(_scalar_values)] = {}
    frequency_cap: FrequencyCapSpec | None = None

    _any_of: frozenset[str] = PrivateAttr(default=frozenset())
    _none_of: frozenset[str] = PrivateAttr(default=frozenset())
    _where: tuple[tuple[str, Any], ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        self._any_of = frozenset(self.tags)
        self._none_of = frozenset(self.exclude_tags)
        self._where = tuple(self.where.items())

    def matches(self, tags: Iterable[str], attributes: Mapping[str, Any]) -> bool:
        """Any of ``tags`` (none listed = everyone), none of ``exclude_tags``, all of ``where``."""
        if self._any_of or self._none_of:
            have = tags if isinstance(tags, set | frozenset) else set(tags)
            if self._any_of and self._any_of.isdisjoint(have):
                return False
            if self._none_of and not self._none_of.isdisjoint(have):
                return False
        missing = MISSING
        for key, want in self._where:
            got = attributes.get(key, missing)
            if got is missing or not _same(want, got):
                return False
        return True


class Delivery(BaseModel):
    """Push-service headers and pacing; defaults suit a one-day campaign."""

    model_config = _FROZEN

    ttl: Annotated[int, _in_range(0, MAX_TTL, " seconds")] = 86400
    urgency: Literal["very-low", "low", "normal", "high"] | None = None
    topic: Annotated[str, AfterValidator(_topic)] | None = None
    #: Requests in flight per push-service origin at most: the adaptive limit's ceiling.
    concurrency: Annotated[int, _in_range(*CONCURRENCY_RANGE)] = 1000
    rate_limit: Annotated[float, AfterValidator(_positive_finite)] | None = None
    #: Messages per second per push service (e.g. ``fcm: 10000``, FCM's default quota).
    rate_limits: Annotated[dict[str, Annotated[float, AfterValidator(_positive_finite)]],
                           AfterValidator(_service_rates)] = {}
    #: Subscribers an earlier run left in flight (kill -9, power cut, failed ledger):
    #: ``resend`` (counted as possible duplicates) or ``skip`` (recorded ``uncertain``).
    on_uncertain: Literal["resend", "skip"] = "resend"


class ScheduleSpec(BaseModel):
    """``schedule``: when each subscriber may be sent (the rules are in ``pushcli.schedule``)."""

    model_config = _FROZEN

    start: Instant | None = None
    end: Instant | None = None
    local_time: Annotated[str, BeforeValidator(_clock_text), _parsed(parse_clock)] | None = None
    window: Duration = "1h"
    timezone: Annotated[str, AfterValidator(_zone_name)] = "UTC"
    quiet_hours: Annotated[str, BeforeValidator(_clock_text), _parsed(parse_range)] | None = None

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not timedelta(minutes=1) <= parse_duration(value) <= timedelta(hours=23):
            raise _fail("must be between 1m and 23h")
        return value

    @model_validator(mode="after")
    def _end_after_start(self) -> ScheduleSpec:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise _fail("must be after schedule.start", "end")
        return self

    def resolve(self, first_run: datetime) -> Schedule:
        """The schedule's values: ``start`` defaults to the campaign's first run (so it
        stays put across cron runs), ``end`` to 48 h after start."""
        start = (self.start or first_run).astimezone(UTC)
        end = self.end.astimezone(UTC) if self.end is not None else start + DEFAULT_SPAN
        return Schedule(start=start, end=end,
                        local_time=parse_clock(self.local_time) if self.local_time else None,
                        window=parse_duration(self.window), timezone=self.timezone,
                        quiet_hours=parse_range(self.quiet_hours) if self.quiet_hours else None)


class VapidSettings(BaseModel):
    """Per-campaign key and contact; a relative key path means next to the campaign file."""

    model_config = _FROZEN

    private_key: NonEmpty | None = None
    subject: Annotated[str, AfterValidator(_subject)] | None = None

    @field_validator("private_key")
    @classmethod
    def _resolve_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        if value is None or base is None:
            return value
        return str((Path(base) / Path(value).expanduser()).resolve())


class Campaign(BaseModel):
    """One campaign file, validated."""

    model_config = _FROZEN

    name: Annotated[str, AfterValidator(_name)]
    notification: Notification
    locales: dict[str, LocaleOverride] = {}
    audience: Audience = Audience()
    delivery: Delivery = Delivery()
    schedule: ScheduleSpec | None = None
    vapid: VapidSettings = VapidSettings()
    variants: list[Variant] | None = None
    holdout: Annotated[str, _percent_in(0, 50)] | None = None
    tracking: Tracking = Tracking()
    winner: WinnerSpec | None = None
    source: str | None = None
    # Line of each dotted field in ``source``, so a template that fails for one subscriber
    # mid-send is reported as ``file:line: field`` like every load-time error.
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    def line_of(self, field_name: str) -> int | None:
        """The line ``field_name`` (dotted, e.g. ``locales.fr.title``) is on, when known."""
        return self._lines.get(field_name)

    def variant_index(self, name: str | None) -> int:
        """The number tokens carry for variant ``name``: 0 without variants (or for None),
        i+1 for the i-th entry of ``variants``."""
        if name is None or not self.variants:
            return 0
        for i, variant in enumerate(self.variants):
            if variant.name == name:
                return i + 1
        raise KeyError(name)

    def variant_names(self) -> tuple[str, ...]:
        """The variants' names in file order (empty without ``variants``)."""
        return tuple(v.name for v in self.variants or ())

    def notification_for(self, variant: str | None) -> Notification:
        """The base notification with ``variant``'s overrides applied (None: the base)."""
        if variant is None:
            return self.notification
        index = self.variant_index(variant) - 1
        return _merged(self.notification, self.variants[index])  # type: ignore[index]

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[Variant] | None, info: ValidationInfo
                  ) -> list[Variant] | None:
        if value is None:
            return value
        if not 2 <= len(value) <= MAX_VARIANTS:
            raise _fail(f"must list 2 to {MAX_VARIANTS} variants (has {len(value)})")
        seen: set[str] = set()
        for index, variant in enumerate(value):
            if variant.name in seen:
                raise _fail(f"duplicate variant name '{variant.name}'", index, "name")
            seen.add(variant.name)
        base = info.data.get("notification")
        if base is not None:  # the rules that tie fields together, on each merged result
            for index, variant in enumerate(value):
                try:
                    _merged(base, variant)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    sub = [*error["loc"], *(error.get("ctx") or {}).get("sub", [])]
                    raise _fail(error["msg"], index, "notification", *sub) from None
        return value

    @model_validator(mode="after")
    def _winner_needs_variants(self) -> Campaign:
        if self.winner is not None and not self.variants:
            raise _fail("needs variants (at least two) to pick a winner from", "winner")
        return self

    @field_validator("locales")
    @classmethod
    def _locale_keys(cls, value: dict[str, LocaleOverride]) -> dict[str, LocaleOverride]:
        seen: dict[str, str] = {}
        for key in value:
            if not _LOCALE_RE.fullmatch(key):
                raise _fail("is not a language tag like 'fr' or 'de-AT'", key)
            norm = norm_locale(key)
            if norm in seen:
                raise _fail(f"is the same locale as '{seen[norm]}'", key)
            seen[norm] = key
        return value



def _merged(base: Notification, variant: Variant) -> Notification:
    """``base`` with ``variant``'s fields, validated again as a whole (renotify needs a tag,
    at most four actions...): ValidationError when the combination is invalid."""
    return Notification.model_validate({**{k: getattr(base, k) for k in base.model_fields_set},
                                        **variant.overrides()})
