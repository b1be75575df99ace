"""Rendering: one Declarative Web Push payload per subscriber, and its size check.

Rendering happens once per subscriber in the send loop, so it is built around a
cache keyed by (variant, locale, values of the placeholders actually used): a
campaign without placeholders costs one dict lookup per subscriber, plus one
``bytes.replace`` that puts the subscriber's engagement token where the cached
payload holds a fixed-length sentinel.

Every payload carries ``notification.data.pushcli_token`` (and, with
``tracking.events_url``, ``notification.data.pushcli_events``): always, since a
token costs the browser nothing and a campaign sent without one could never be
measured afterwards. Links get UTM parameters unless ``tracking.utm: false``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.meta
from jinja2.exceptions import SecurityError, UndefinedError

from pushcli.campaign.model import MISSING, Campaign, is_https_url, norm_locale
from pushcli.campaign.sandbox import MAX_PLAINTEXT, new_environment
from pushcli.campaign.variants import utm_params, with_utm
from pushcli.errors import InputError, PayloadTooLarge
from pushcli.tokens import MAX_TOKEN_LEN

__all__ = ["TOKEN_SENTINEL", "RenderError", "Renderer", "check_payload_size", "resolve_locale"]

#: Stands for the subscriber's token in cached payloads: as long as the longest token
#: (so the size check reserves its room) and JSON-safe, replaced once per subscriber.
TOKEN_SENTINEL = ("@pushcli-token@" * 7)[:MAX_TOKEN_LEN]
_SENTINEL = TOKEN_SENTINEL.encode("ascii")

_CACHE_LIMIT = 50_000  # personalised variants kept per locale; beyond that we re-render
_UNDEFINED_RE = re.compile(r"^'([^']+)' is undefined$")


class RenderError(InputError):
    """A template could not be rendered for one subscriber (missing attribute, bad URL)."""


def _resolve(index: Mapping[str, str], locale: str | None) -> str | None:
    if not locale:
        return None
    parts = norm_locale(locale).split("-")
    while parts:
        found = index.get("-".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def resolve_locale(campaign: Campaign, locale: str | None) -> str | None:
    """Best locale key of ``campaign`` for a subscriber: exact, then shorter, then default.

    Browsers and CSV exports disagree on case and ``_`` vs ``-`` (``fr_CA``,
    ``fr-ca``), so both are normalised; ``fr_CA.UTF-8`` works too.
    """
    return _resolve({norm_locale(k): k for k in campaign.locales}, locale)


def _longest_field(payload: bytes, names: Mapping[str, str] | None) -> tuple[str, int] | None:
    try:
        doc = json.loads(payload)
        notification = doc["notification"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(notification, dict):
        return None
    names = names or {}
    best: tuple[str, int] | None = None

    def consider(name: str, size: int) -> None:
        nonlocal best
        if best is None or size > best[1]:
            best = (name, size)

    for key, value in notification.items():
        if key == "actions" and isinstance(value, list):
            for index, action in enumerate(value):
                if not isinstance(action, dict):
                    continue
                for akey, avalue in action.items():
                    if isinstance(avalue, str):
                        aname = "url" if akey == "navigate" else akey
                        consider(f"notification.actions[{index}].{aname}", len(avalue.encode()))
        elif key == "data":
            size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
            consider("notification.data", size)
        elif isinstance(value, str):
            default = "notification.url" if key == "navigate" else f"notification.{key}"
            consider(names.get(key, default), len(value.encode()))
    return best


def _check_size(payload: bytes, context: str, names: Mapping[str, str] | None) -> None:
    size = len(payload)
    if size <= MAX_PLAINTEXT:
        return
    message = f"{context}: payload is {size} bytes, limit {MAX_PLAINTEXT}"
    longest = _longest_field(payload, names)
    if longest is not None:
        message += f"; shorten {longest[0]} (the longest field, {longest[1]} bytes)"
    raise PayloadTooLarge(message)


def check_payload_size(payload: bytes, *, context: str) -> None:
    """Refuse a payload that cannot fit one aes128gcm record, naming what to shorten.

    http_ece would happily produce a second record that push services reject
    with 413, one subscriber at a time; checking here fails the whole campaign
    before the first send.
    """
    _check_size(payload, context, None)


@dataclass
class _Variant:
    """Everything about one (A/B variant, locale) that does not depend on the subscriber."""

    arm: str | None
    locale: str | None
    templates: tuple[tuple[str, str, jinja2.Template], ...]  # (payload key, field, template)
    names: tuple[str, ...]
    static: dict[str, Any]
    app_badge: int | None
    field_names: dict[str, str]
    context: str
    utm: tuple[tuple[str, str], ...]  # empty with tracking.utm false
    cache: dict[tuple[Any, ...], bytes] = field(default_factory=dict)


def _key_part(value: Any) -> Any:
    # 1, 1.0 and True are equal and hash alike but render differently.
    if type(value) is str:
        return value
    try:
        hash(value)
    except TypeError:
        return (type(value), repr(value))
    return (type(value), value)


class Renderer:
    """Renders the Declarative Web Push payload (bytes, compact UTF-8 JSON) for one subscriber.

    Templates are compiled once; payloads are cached per variant key, and the
    size check runs once per cached payload, so the per-subscriber cost of a
    campaign without placeholders is a dict lookup (and the token splice).
    ``arms`` are the A/B variants' names, or ``(None,)`` without ``variants``;
    ``variant=None`` renders the base notification.
    """

    def __init__(self, campaign: Campaign) -> None:
        self._campaign = campaign
        self._env = new_environment()
        self._compiled: dict[str, jinja2.Template] = {}
        self._index = {norm_locale(k): k for k in campaign.locales}
        self.arms: tuple[str | None, ...] = campaign.variant_names() or (None,)
        self._variants: dict[tuple[str | None, str | None], _Variant] = {}
        self._by_arm: dict[str | None, dict[str | None, _Variant]] = {}
        names: set[str] = set()
        for arm in self.arms:
            for variant in self._arm(arm).values():
                names.update(variant.names)
        self.placeholders: frozenset[str] = frozenset(names)

    def _arm(self, arm: str | None) -> dict[str | None, _Variant]:
        """The locale -> _Variant map of one A/B arm, built on first use."""
        by_locale = self._by_arm.get(arm)
        if by_locale is None:
            if arm is not None:
                self._campaign.variant_index(arm)  # KeyError for an unknown variant
            for key in (None, *self._campaign.locales):
                self._variants[arm, key] = self._build(arm, key)
            by_locale = self._by_arm[arm] = {None: self._variants[arm, None]}
        return by_locale

    def _compile(self, source: str) -> tuple[jinja2.Template, set[str]]:
        ast = self._env.parse(source)
        names = jinja2.meta.find_undeclared_variables(ast) - set(self._env.globals)
        template = self._compiled.get(source)
        if template is None:
            template = self._compiled[source] = self._env.from_string(source)
        return template, names

    def _build(self, arm: str | None, locale: str | None) -> _Variant:
        # A variant's fields win over the locale's (a variant tests one wording); the
        # fields it leaves alone follow the locale, and personalization applies to both.
        campaign = self._campaign
        n = campaign.notification_for(arm)
        index = campaign.variant_index(arm)
        own = campaign.variants[index - 1].overrides() if index else {}  # type: ignore[index]
        override = campaign.locales.get(locale) if locale else None
        templates = []
        names: set[str] = set()
        field_names: dict[str, str] = {}
        localized = False
        for member, attr in (("title", "title"), ("body", "body"), ("navigate", "url")):
            source = getattr(n, attr)
            where = (f"variants[{index - 1}].notification.{attr}" if attr in own
                     else f"notification.{attr}")
            if attr not in own and override is not None and getattr(override, attr) is not None:
                source = getattr(override, attr)
                where = f"locales.{locale}.{attr}"
                localized = localized or attr != "url"
            template, used = self._compile(source)
            names |= used
            templates.append((member, where, template))
            field_names[member] = where
        lang = n.lang
        if localized:
            lang = locale.replace("_", "-") if locale else lang  # the text is in that language now
        utm = utm_params(campaign.name, arm) if campaign.tracking.utm else ()
        static: dict[str, Any] = {}
        for key, value in (
            ("lang", lang),
            ("dir", n.dir),
            ("tag", n.tag),
            ("icon", n.icon),
            ("image", n.image),
            ("badge", n.badge),
            ("silent", n.silent),
            ("renotify", n.renotify),
            ("require_interaction", n.require_interaction),
        ):
            if value is not None:
                static[key] = value
        if n.actions:
            actions = []
            for action in n.actions:
                item: dict[str, Any] = {"action": action.action, "title": action.title}
                if action.url is not None:
                    item["navigate"] = with_utm(action.url, utm) if utm else action.url
                if action.icon is not None:
                    item["icon"] = action.icon
                actions.append(item)
            static["actions"] = actions
        data = dict(n.data or {})
        data["pushcli_token"] = TOKEN_SENTINEL
        if campaign.tracking.events_url is not None:
            data["pushcli_events"] = campaign.tracking.events_url
        static["data"] = data
        context = f"campaign {campaign.name}"
        if arm is not None or locale:
            context += " (" + ", ".join(
                ([f"variant {arm}"] if arm is not None else [])
                + ([f"locale {locale}"] if locale else [])) + ")"
        return _Variant(
            arm=arm,
            locale=locale,
            templates=tuple(templates),
            names=tuple(sorted(names)),
            static=static,
            app_badge=n.app_badge,
            field_names=field_names,
            context=context,
            utm=utm,
        )

    def _variant(self, locale: str | None, arm: str | None = None) -> _Variant:
        by_locale = self._by_arm.get(arm) or self._arm(arm)
        variant = by_locale.get(locale)
        if variant is None:
            variant = self._variants[arm, _resolve(self._index, locale)]
            if len(by_locale) < _CACHE_LIMIT:
                by_locale[locale] = variant
        return variant

    def variant_key(self, locale: str | None, attributes: Mapping[str, Any],
                    arm: str | None = None) -> tuple[Any, ...]:
        """Two subscribers with equal keys get byte-identical payloads (but for the token)."""
        variant = self._variant(locale, arm)
        return (arm, variant.locale, self._values(variant, attributes))

    @staticmethod
    def _values(variant: _Variant, attributes: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(_key_part(attributes.get(name, MISSING)) for name in variant.names)

    def render(self, locale: str | None, attributes: Mapping[str, Any],
               arm: str | None = None, *, token: str | None = None) -> bytes:
        """The payload for one subscriber of A/B variant ``arm`` (None: the base
        notification), with its ``token`` (``tokens.make_token``) in place of
        ``TOKEN_SENTINEL``; without one the sentinel stays (size checks, dry runs).
        Raises RenderError or PayloadTooLarge, the latter with the sentinel's room
        reserved, so a payload that passes here fits with any token."""
        variant = self._by_arm[arm].get(locale) if arm in self._by_arm else None
        if variant is None:
            variant = self._variant(locale, arm)
        key = self._values(variant, attributes) if variant.names else ()
        payload = variant.cache.get(key)
        if payload is None:
            payload = self._render(variant, attributes)
            if len(variant.cache) < _CACHE_LIMIT:
                variant.cache[key] = payload
        if token is not None:
            # the last occurrence: data.pushcli_token comes after title, body and URL, the
            # only fields a subscriber's attributes reach, which may spell the sentinel too
            head, _, tail = payload.rpartition(_SENTINEL)
            return b"".join((head, token.encode("ascii"), tail))
        return payload

    def _error(self, message: str, where: str) -> RenderError:
        """``file:line: field: message``, the same shape as a load-time error."""
        campaign = self._campaign
        return RenderError(message, file=campaign.source, line=campaign.line_of(where),
                           field=where)

    def _render(self, variant: _Variant, attributes: Mapping[str, Any]) -> bytes:
        # Only the used names are passed: attribute values are data, never templates,
        # and the cache key (those names' values) then fully determines the output.
        values = {name: attributes[name] for name in variant.names if name in attributes}
        texts: dict[str, str] = {}
        for member, where, template in variant.templates:
            try:
                texts[member] = template.render(values)
            except UndefinedError as exc:
                match = _UNDEFINED_RE.match(str(exc.message or exc))
                if match and match.group(1) not in values:
                    name = match.group(1)
                    raise self._error(
                        f"attribute '{name}' is not set for this subscriber "
                        f"(use {{{{ {name} | default('...') }}}})", where) from None
                raise self._error(f"cannot render: {exc.message or exc}", where) from None
            except SecurityError as exc:
                raise self._error(f"unsafe template: {exc}", where) from None
            except Exception as exc:  # a template error of any kind is this subscriber's problem
                raise self._error(f"cannot render: {exc}", where) from None
        if not texts["title"].strip():
            raise self._error("renders to an empty title for this subscriber",
                              variant.field_names["title"])
        url = texts["navigate"]
        if not is_https_url(url):
            shown = url if len(url) <= 80 else url[:77] + "..."
            raise self._error(f"renders to {shown!r}, which is not an absolute https URL",
                              variant.field_names["navigate"])
        if variant.utm:
            url = with_utm(url, variant.utm)
        notification: dict[str, Any] = {
            "title": texts["title"],
            "navigate": url,
            "body": texts["body"],
        }
        notification.update(variant.static)
        document: dict[str, Any] = {"web_push": 8030, "notification": notification}
        if variant.app_badge is not None:
            document["app_badge"] = variant.app_badge
        payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        _check_size(payload, variant.context, variant.field_names)
        return payload

