"""Rendering: one Declarative Web Push payload per subscriber, and its size check.

Rendering happens once per subscriber in the send loop, so it is built around a
cache keyed by (locale, values of the placeholders actually used): a campaign
without placeholders costs one dict lookup per subscriber.
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
from pushcli.errors import InputError, PayloadTooLarge

__all__ = ["RenderError", "Renderer", "check_payload_size", "resolve_locale"]

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
    """Everything about one locale that does not depend on the subscriber."""

    locale: str | None
    templates: tuple[tuple[str, str, jinja2.Template], ...]  # (payload key, field, template)
    names: tuple[str, ...]
    static: dict[str, Any]
    app_badge: int | None
    field_names: dict[str, str]
    context: str
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
    campaign without placeholders is a dict lookup.
    """

    def __init__(self, campaign: Campaign) -> None:
        self._campaign = campaign
        self._env = new_environment()
        self._compiled: dict[str, jinja2.Template] = {}
        self._index = {norm_locale(k): k for k in campaign.locales}
        self._variants: dict[str | None, _Variant] = {None: self._build(None)}
        for key in campaign.locales:
            self._variants[key] = self._build(key)
        self._by_locale: dict[str | None, _Variant] = {None: self._variants[None]}
        names: set[str] = set()
        for variant in self._variants.values():
            names.update(variant.names)
        self.placeholders: frozenset[str] = frozenset(names)

    def _compile(self, source: str) -> tuple[jinja2.Template, set[str]]:
        ast = self._env.parse(source)
        names = jinja2.meta.find_undeclared_variables(ast) - set(self._env.globals)
        template = self._compiled.get(source)
        if template is None:
            template = self._compiled[source] = self._env.from_string(source)
        return template, names

    def _build(self, locale: str | None) -> _Variant:
        n = self._campaign.notification
        override = self._campaign.locales.get(locale) if locale else None
        templates = []
        names: set[str] = set()
        field_names: dict[str, str] = {}
        for member, attr in (("title", "title"), ("body", "body"), ("navigate", "url")):
            source = getattr(n, attr)
            where = f"notification.{attr}"
            if override is not None and getattr(override, attr) is not None:
                source = getattr(override, attr)
                where = f"locales.{locale}.{attr}"
            template, used = self._compile(source)
            names |= used
            templates.append((member, where, template))
            field_names[member] = where
        lang = n.lang
        if override is not None and (override.title is not None or override.body is not None):
            lang = locale.replace("_", "-") if locale else lang  # the text is in that language now
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
                    item["navigate"] = action.url
                if action.icon is not None:
                    item["icon"] = action.icon
                actions.append(item)
            static["actions"] = actions
        if n.data is not None:
            static["data"] = n.data
        context = f"campaign {self._campaign.name}"
        if locale:
            context += f" (locale {locale})"
        return _Variant(
            locale=locale,
            templates=tuple(templates),
            names=tuple(sorted(names)),
            static=static,
            app_badge=n.app_badge,
            field_names=field_names,
            context=context,
        )

    def _variant(self, locale: str | None) -> _Variant:
        variant = self._by_locale.get(locale)
        if variant is None:
            variant = self._variants[_resolve(self._index, locale)]
            if len(self._by_locale) < _CACHE_LIMIT:
                self._by_locale[locale] = variant
        return variant

    def variant_key(self, locale: str | None, attributes: Mapping[str, Any]) -> tuple[Any, ...]:
        """Two subscribers with equal keys get byte-identical payloads."""
        variant = self._variant(locale)
        return (variant.locale, self._values(variant, attributes))

    @staticmethod
    def _values(variant: _Variant, attributes: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(_key_part(attributes.get(name, MISSING)) for name in variant.names)

    def render(self, locale: str | None, attributes: Mapping[str, Any]) -> bytes:
        """The payload for one subscriber; raises RenderError or PayloadTooLarge."""
        variant = self._by_locale.get(locale) or self._variant(locale)
        key = self._values(variant, attributes) if variant.names else ()
        payload = variant.cache.get(key)
        if payload is None:
            payload = self._render(variant, attributes)
            if len(variant.cache) < _CACHE_LIMIT:
                variant.cache[key] = payload
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

