"""Campaign files: load and validate YAML, render Declarative Web Push payloads.

A campaign is written by hand, so every mistake must come back as one line that
points at the file, the line and the dotted field (``campaign.yml:5:
notification.url: must be an absolute https URL``).  Validation therefore works
on the composed YAML node tree (which knows line numbers) rather than on plain
``yaml.safe_load`` output, and pydantic errors are mapped back onto those nodes.

Rendering happens once per subscriber in the send loop, so it is built around a
cache keyed by (locale, values of the placeholders actually used): a campaign
without placeholders costs one dict lookup per subscriber.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import jinja2
import jinja2.meta
import yaml
from jinja2 import nodes as jnodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pushcli.errors import InputError, PayloadTooLarge
from pushcli.files import open_input

__all__ = [
    "MAX_PLAINTEXT",
    "Action",
    "Audience",
    "Campaign",
    "Delivery",
    "LocaleOverride",
    "Notification",
    "RenderError",
    "Renderer",
    "VapidSettings",
    "check_payload_size",
    "load_campaign",
    "parse_campaign",
    "resolve_locale",
]

MAX_PLAINTEXT = 3993  # bytes; one aes128gcm record of 4096 minus the 86-byte header and padding
MAX_FILE_BYTES = 1 << 20  # a campaign is a page of YAML; anything bigger is a mistake or an attack
MAX_DEPTH = 32  # nesting of YAML collections; a campaign needs about 5
MAX_ACTIONS = 4
MAX_TTL = 2_419_200  # 28 days: the largest TTL FCM accepts, Mozilla caps at 30 days
MAX_URL_LEN = 2048
_CACHE_LIMIT = 50_000  # personalised variants kept per locale; beyond that we re-render

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>\"\\]")
_PLACEHOLDER_RE = re.compile(r"\{[{%#]")
_UNDEFINED_RE = re.compile(r"^'([^']+)' is undefined$")


class RenderError(InputError):
    """A template could not be rendered for one subscriber (missing attribute, bad URL)."""


# --------------------------------------------------------------------------- templates


class _Sandbox(SandboxedEnvironment):
    """Sandbox that also refuses the two operators that can allocate without bound.

    The stock sandbox blocks attribute escapes but lets ``'x' * 10**9`` or
    ``9 ** 9 ** 9`` through; a campaign author should not be able to stall a send.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 128:
            raise SecurityError("exponent too large")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > 100_000
                ):
                    raise SecurityError("repetition result too large")
        return super().call_binop(context, operator, left, right)


#: Filters whose integer argument sets the size of the result: bounded by the payload limit.
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice")


def _bounded(filter_fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for value in (*args[1:], *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_PLAINTEXT:
                raise SecurityError(f"filter argument {value} is larger than a payload can be")
        return filter_fn(*args, **kwargs)
    return wrapper


def _environment() -> _Sandbox:
    """The sandbox personalization renders in: no loops, no unbounded allocations.

    Title, body and url need substitution and ``default``, not a programming
    language; every construct that can burn CPU or memory without bound is
    removed rather than policed.
    """
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
    for name in ("range", "lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    env.filters.pop("format", None)
    for name in _SIZED_FILTERS:
        if name in env.filters:
            env.filters[name] = _bounded(env.filters[name])
    return env


_ENV = _environment()


def _has_placeholder(value: str) -> bool:
    return _PLACEHOLDER_RE.search(value) is not None


def _unsafe_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith("_")


def _check_template(source: str) -> None:
    """Refuse at load time what would only fail (or be refused) mid-send."""
    if not _has_placeholder(source):
        return
    try:
        ast = _ENV.parse(source)
        _ENV.compile(ast)
    except TemplateSyntaxError as exc:
        where = f" (template line {exc.lineno})" if "\n" in source and exc.lineno else ""
        reason = str(exc.message or exc).rstrip(".")
        raise _fail(f"template syntax error: {reason}{where}") from None
    if any(ast.find_all((jnodes.Include, jnodes.Extends, jnodes.Import, jnodes.FromImport))):
        raise _fail("include, extends and import are not allowed in templates")
    if any(ast.find_all((jnodes.For, jnodes.Macro, jnodes.CallBlock))):
        raise _fail("loops, macros and call blocks are not allowed in templates")
    unsafe: list[object] = []
    for node in ast.find_all((jnodes.Getattr, jnodes.Getitem, jnodes.Filter)):
        bad: object = None
        if isinstance(node, jnodes.Getattr):
            bad = node.attr
        elif isinstance(node, jnodes.Getitem) and isinstance(node.arg, jnodes.Const):
            bad = node.arg.value
        elif isinstance(node, jnodes.Filter) and node.name == "attr" and node.args:
            arg = node.args[0]
            bad = arg.value if isinstance(arg, jnodes.Const) else None
        if _unsafe_name(bad):
            unsafe.append(bad)
    if unsafe:
        # find_all is outermost-first; the innermost access is the one the author wrote first.
        raise _fail(f"unsafe template: access to attribute '{unsafe[-1]}' is not allowed")


# --------------------------------------------------------------------------- validators


def _fail(message: str, *sub: str | int) -> PydanticCustomError:
    """A pydantic error whose text is ours verbatim; ``sub`` extends its location.

    The message goes through the context rather than the template so braces in
    it (template snippets) are not taken as format fields.
    """
    return PydanticCustomError("pushcli", "{msg}", {"msg": message, "sub": list(sub)})


def _is_https_url(value: str) -> bool:
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
    if _has_placeholder(value):
        raise _fail("placeholders are only allowed in title, body and url")
    if not _is_https_url(value):
        raise _fail("must be an absolute https URL")
    return value


def _template_url(value: str) -> str:
    """A templated URL can only be checked fully after rendering; check what we can now."""
    if not _has_placeholder(value):
        if not _is_https_url(value):
            raise _fail("must be an absolute https URL")
        return value
    _check_template(value)
    prefix = value[: _PLACEHOLDER_RE.search(value).start()].lower()  # type: ignore[union-attr]
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


def _json_data(value: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise _fail("must be plain JSON (no NaN or infinity)") from None
    return value


def _subject(value: str) -> str:
    if value.startswith("mailto:"):
        if len(value) > 7 and not re.search(r"[\s<>]", value):
            return value
    elif value.startswith("https://") and _is_https_url(value):
        return value
    raise _fail("must be a mailto: address or an https: URL (no spaces or angle brackets)")


def _scalar_values(value: Any) -> Any:
    """YAML would happily give us lists or nulls; attribute equality needs scalars."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None or not isinstance(item, str | int | float | bool):
                raise _fail("must be a string, number or true/false", key)
    return value


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


class Audience(BaseModel):
    """Who receives the campaign; ``matches`` runs once per subscriber, so it is precomputed."""

    model_config = _FROZEN

    tags: list[NonEmpty] = []
    exclude_tags: list[NonEmpty] = []
    where: Annotated[dict[str, str | int | float | bool], BeforeValidator(_scalar_values)] = {}

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
        missing = _MISSING
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
    concurrency: Annotated[int, _in_range(1, 1000)] = 64
    rate_limit: Annotated[float, AfterValidator(_positive_finite)] | None = None


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
    vapid: VapidSettings = VapidSettings()
    source: str | None = None

    @field_validator("locales")
    @classmethod
    def _locale_keys(cls, value: dict[str, LocaleOverride]) -> dict[str, LocaleOverride]:
        seen: dict[str, str] = {}
        for key in value:
            if not _LOCALE_RE.fullmatch(key):
                raise _fail("is not a language tag like 'fr' or 'de-AT'", key)
            norm = _norm_locale(key)
            if norm in seen:
                raise _fail(f"is the same locale as '{seen[norm]}'", key)
            seen[norm] = key
        return value


# --------------------------------------------------------------------------- YAML


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()
_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_LOOSE_TAGS = {_YAML + "value", _YAML + "merge"}  # plain '=' and '<<': keep as text


class _Refused(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and deep nesting before building anything.

    Aliases are never needed in a campaign and are the whole mechanism of the
    "billion laughs" expansion, so refusing the first one is both the simplest
    and the fastest defence.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(
                "YAML anchors and aliases (&name, *name) are not allowed in campaign files",
                event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# Dates stay text: they only make sense in `data`, which must be JSON.
_Loader.add_constructor(_YAML + "timestamp", lambda loader, node: node.value)


@dataclass
class _Problem:
    line: int | None
    field: str
    message: str
    missing: bool = False


@dataclass
class _Tree:
    data: dict[str, Any]
    lines: dict[tuple[str | int, ...], int]
    # Unquoted scalars YAML turned into numbers/bools (`tag: 2026`, `action: no`), by path:
    # where a string is expected the text the author wrote is what they meant.
    raw: dict[tuple[str | int, ...], str] = field(default_factory=dict)
    problems: list[_Problem] = field(default_factory=list)


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            out += f".{elem}" if out else str(elem)
    return out


def _to_python(loader: _Loader, node: yaml.Node, path: tuple[str | int, ...], tree: _Tree) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        if node.tag in _LOOSE_TAGS:
            return node.value
        if node.tag not in _SCALAR_TAGS:
            tree.problems.append(_Problem(line, _dotted(path), f"unsupported YAML tag {node.tag}"))
            return node.value
        value = loader.construct_object(node)
        if node.style is None and not isinstance(value, str) and value is not None:
            tree.raw[path] = node.value
        return value
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _YAML + "seq":
            tree.problems.append(_Problem(line, _dotted(path), f"unsupported YAML tag {node.tag}"))
        items = []
        for index, item in enumerate(node.value):
            sub = (*path, index)
            tree.lines[sub] = item.start_mark.line + 1
            items.append(_to_python(loader, item, sub, tree))
        return items
    assert isinstance(node, yaml.MappingNode)
    if node.tag != _YAML + "map":
        tree.problems.append(_Problem(line, _dotted(path), f"unsupported YAML tag {node.tag}"))
    mapping: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (
            _SCALAR_TAGS | _LOOSE_TAGS
        ):
            tree.problems.append(_Problem(key_line, _dotted(path), "keys must be plain text"))
            continue
        # The raw text, so `no:` (Norwegian) or `1:` stay the strings they look like.
        key = key_node.value
        sub = (*path, key)
        if key in mapping:
            tree.problems.append(_Problem(key_line, _dotted(sub), "duplicate key"))
            continue
        tree.lines[sub] = key_line
        mapping[key] = _to_python(loader, value_node, sub, tree)
    return mapping


def _compose(text: str, source: str) -> _Tree:
    try:
        loader = _Loader(text)  # the reader rejects control characters up front
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise InputError(
            f"character #x{exc.character:04x} is not allowed in YAML", file=source, line=line
        ) from None
    try:
        root = loader.get_single_node()
    except _Refused as exc:
        raise InputError(exc.message, file=source, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and problem.startswith("but "):
            problem = f"{exc.context}, {problem}"
        raise InputError(
            f"YAML syntax error: {problem}",
            file=source,
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise InputError(
            f"character #x{exc.character:04x} is not allowed in YAML", file=source, line=line
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every pyyaml error above is marked
        raise InputError(f"YAML error: {exc}", file=source) from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value.strip() in ("", "~")):
        raise InputError("file is empty", file=source)
    if not isinstance(root, yaml.MappingNode):
        raise InputError(
            "top level must be a mapping (name:, notification:, ...)",
            file=source,
            line=root.start_mark.line + 1,
        )
    tree = _Tree(data={}, lines={(): root.start_mark.line + 1})
    tree.data = _to_python(loader, root, (), tree)
    return tree


# --------------------------------------------------------------------------- pydantic -> location

_TYPE_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "none_required": "must be empty",
}


def _unwrap(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        if len(args) == 1:
            return _unwrap(args[0])
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    return annotation


def _model_at(path: Iterable[str | int]) -> type[BaseModel] | None:
    annotation: Any = Campaign
    for elem in path:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(elem) if isinstance(elem, str) else None
            if info is None:
                return None
            annotation = info.annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _use_raw_text(error: Any, tree: _Tree) -> bool:
    """Replace a YAML-typed scalar by its source text where a string was expected."""
    path = tuple(error["loc"])
    raw = tree.raw.get(path)
    if raw is None:
        return False
    parent: Any = tree.data
    for elem in path[:-1]:
        parent = parent[elem]
    parent[path[-1]] = raw
    del tree.raw[path]
    return True


def _problem_from(error: Any, tree: _Tree) -> _Problem:
    loc: list[str | int] = list(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == "pushcli":
        loc += ctx.get("sub", [])
    path: list[str | int] = []
    node: Any = tree.data
    for elem in loc:
        in_dict = isinstance(node, dict) and isinstance(elem, str) and elem in node
        in_list = isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node)
        if not (in_dict or in_list):
            break
        node = node[elem]
        path.append(elem)
    line = tree.lines.get(tuple(path))
    kind = error["type"]
    shown = list(path)
    if kind == "pushcli":
        message = ctx.get("msg", error["msg"])
    elif kind == "missing":
        shown.append(loc[len(path)])
        message = "is required"
    elif kind == "extra_forbidden":
        message = "unknown field"
        model = _model_at(path[:-1])
        if model is not None:
            names = [n for n in model.model_fields if not (model is Campaign and n == "source")]
            close = difflib.get_close_matches(str(path[-1]), names, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
    elif kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = f"must be one of: {expected}"
    else:
        message = _TYPE_MESSAGES.get(kind) or str(error["msg"])
    return _Problem(line, _dotted(shown), message, missing=kind == "missing")


# --------------------------------------------------------------------------- loading


def parse_campaign(
    text: str, *, source: str = "<campaign>", base_dir: Path | None = None
) -> Campaign:
    """Validate campaign YAML text; the first problem in document order is raised."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise InputError(f"file is larger than {MAX_FILE_BYTES // (1 << 20)} MiB", file=source)
    text = text.removeprefix("\ufeff")
    tree = _compose(text, source)
    problems = list(tree.problems)
    if "source" in tree.data:
        # `source` is where we loaded it from, never something the file claims.
        problems.append(_Problem(tree.lines[("source",)], "source", "unknown field"))
        del tree.data["source"]
    campaign: Campaign | None = None
    context = {"base_dir": base_dir if base_dir is not None else Path.cwd()}
    for _attempt in range(5):
        try:
            campaign = Campaign.model_validate(tree.data, context=context)
            break
        except ValidationError as exc:
            errors = exc.errors()
        if not any(_use_raw_text(err, tree) for err in errors if err["type"] == "string_type"):
            problems.extend(_problem_from(err, tree) for err in errors)
            break
    if problems:
        order = {id(p): i for i, p in enumerate(problems)}
        # A missing key is usually the consequence of a typo elsewhere in the same
        # mapping (`tittle:`), so the typo is reported first.
        first = min(problems, key=lambda p: (p.missing, p.line or 0, order[id(p)]))
        raise InputError(first.message, file=source, line=first.line, field=first.field or None)
    assert campaign is not None
    return campaign.model_copy(update={"source": source})


def load_campaign(path: str | os.PathLike[str]) -> Campaign:
    """Read and validate a campaign file; errors name the path exactly as given."""
    source = os.fspath(path)
    file = Path(source)
    with open_input(file) as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"file is larger than {MAX_FILE_BYTES // (1 << 20)} MiB", file=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
            file=source,
            line=line,
        ) from None
    return parse_campaign(text, source=source, base_dir=file.parent.resolve())


# --------------------------------------------------------------------------- rendering


def _norm_locale(tag: str) -> str:
    return tag.split(".", 1)[0].split("@", 1)[0].strip().replace("_", "-").lower()


def _resolve(index: Mapping[str, str], locale: str | None) -> str | None:
    if not locale:
        return None
    parts = _norm_locale(locale).split("-")
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
    return _resolve({_norm_locale(k): k for k in campaign.locales}, locale)


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
        self._env = _environment()
        self._compiled: dict[str, jinja2.Template] = {}
        self._index = {_norm_locale(k): k for k in campaign.locales}
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
        return tuple(_key_part(attributes.get(name, _MISSING)) for name in variant.names)

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
                    raise RenderError(
                        f"attribute '{name}' is not set for this subscriber "
                        f"(use {{{{ {name} | default('...') }}}})",
                        field=where,
                    ) from None
                raise RenderError(f"cannot render: {exc.message or exc}", field=where) from None
            except SecurityError as exc:
                raise RenderError(f"unsafe template: {exc}", field=where) from None
            except Exception as exc:  # a template error of any kind is this subscriber's problem
                raise RenderError(f"cannot render: {exc}", field=where) from None
        if not texts["title"].strip():
            raise RenderError(
                "renders to an empty title for this subscriber", field=variant.field_names["title"]
            )
        url = texts["navigate"]
        if not _is_https_url(url):
            shown = url if len(url) <= 80 else url[:77] + "..."
            raise RenderError(
                f"renders to {shown!r}, which is not an absolute https URL",
                field=variant.field_names["navigate"],
            )
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
