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
import functools
import inspect
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
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
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
from pushcli.pushservices import vapid_subject_problem

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


#: No value a template computes may be larger than this (characters, items, or their sum
#: for nested lists): a payload holds at most MAX_PLAINTEXT bytes, and the slack lets a long
#: attribute be shortened. Every operation that can grow a value is checked *before* it
#: allocates, so one render costs at most about this much per operation in the template.
MAX_TEMPLATE_VALUE = 4 * MAX_PLAINTEXT
#: Integers a template computes stay below this many bits (about 1,200 digits); chained
#: ``**`` or ``*`` would otherwise double the size with every step.
MAX_TEMPLATE_INT_BITS = 4096
_MAX_EXPONENT = 128
_MAX_NESTING = 16  # lists in lists a template may build or pass through a growing operation


class TemplateTooLarge(SecurityError):
    """An operation in a template would build a value larger than a payload could use."""


def _weight(value: Any, limit: int = MAX_TEMPLATE_VALUE, depth: int = 0) -> int:
    """Roughly how many characters ``value`` prints as; stops counting past ``limit``.

    Containers count their items' weights, so ``[s] * n`` is measured by what it
    prints (n copies of s), not by its n pointers.
    """
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, list | tuple | set | frozenset | dict):
        if depth > _MAX_NESTING:
            return limit + 1
        total = len(value)
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        for item in items:
            if total > limit:
                break
            total += _weight(item, limit - total, depth + 1)
        return total
    return 1


def _refuse_size(what: str, size: int) -> None:
    if size > MAX_TEMPLATE_VALUE:
        raise TemplateTooLarge(
            f"{what} builds a value too large for a notification "
            f"({size:,} characters or items; at most {MAX_TEMPLATE_VALUE:,})"
        )


def _checked(value: Any, what: str) -> Any:
    """``value`` if it is small enough to keep computing with, else TemplateTooLarge."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_TEMPLATE_INT_BITS:
            raise TemplateTooLarge(
                f"{what} builds an integer too large ({value.bit_length():,} bits; "
                f"at most {MAX_TEMPLATE_INT_BITS:,})"
            )
        return value
    _refuse_size(what, _weight(value))
    return value


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else _weight(value)


def _joined_size(what: str, items: list[Any], sep: Any) -> None:
    """Refuse a join before building it: items plus separators."""
    size = len(str(sep)) * max(len(items) - 1, 0)
    _refuse_size(what, size)
    for item in items:
        size += _text_len(item)
        _refuse_size(what, size)


def _replaced_size(what: str, text: str, old: str, new: str, count: int | None) -> None:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _refuse_size(what, len(text) + hits * (len(new) - len(old)))


def _pre_replace(a: dict[str, Any]) -> None:
    _replaced_size("replace", str(a["s"]), str(a["old"]), str(a["new"]), a["count"])


def _pre_join(a: dict[str, Any]) -> None:
    items = list(a["value"])  # once: the filter gets the list, a generator is not re-run
    a["value"] = items
    if a["attribute"] is None:
        _joined_size("join", items, a["d"])
    else:
        _joined_size("join", [None] * len(items), a["d"])  # separators; the result is checked


def _pre_width(name: str, param: str, limit: int = MAX_TEMPLATE_VALUE) -> Any:
    def check(a: dict[str, Any]) -> None:
        value = a[param]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
            raise TemplateTooLarge(f"{name}({param}={value:,}) is too large (at most {limit:,})")
    return check


def _pre_indent(a: dict[str, Any]) -> None:
    _pre_width("indent", "width")(a)
    text, width = str(a["s"]), a["width"]
    pad = len(width) if isinstance(width, str) else int(width)
    _refuse_size("indent", len(text) + (text.count("\n") + 1) * max(pad, 0))


def _pre_wordwrap(a: dict[str, Any]) -> None:
    text = str(a["s"])
    wrap = a["wrapstring"]
    # at most one line per character; each line break is one wrapstring
    _refuse_size("wordwrap", len(text) + (len(text) + 1) * len(str(wrap) if wrap else "\n"))


def _pre_sum(a: dict[str, Any]) -> None:
    items = list(a["iterable"])
    a["iterable"] = items
    if a["attribute"] is None and not all(
        isinstance(v, int | float) for v in (*items, a["start"])
    ):
        raise SecurityError("sum adds numbers only")


#: Filters that could allocate a lot before returning: checked before they run.
_FILTER_PRECHECKS: dict[str, Any] = {
    "replace": _pre_replace,
    "join": _pre_join,
    "center": _pre_width("center", "width"),
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "batch": _pre_width("batch", "linecount"),
    "slice": _pre_width("slice", "slices"),
    "round": _pre_width("round", "precision", 1000),  # round(10, -10**9) computes 10**10**9
    "tojson": _pre_width("tojson", "indent", 16),
    "sum": _pre_sum,
}
#: Filters with no use in notification text that only add ways to grow a value.
_DROPPED_FILTERS = ("format", "urlize", "xmlattr", "pprint", "filesizeformat")


def _guard_filter(name: str, fn: Any) -> Any:
    """``fn`` with its pre-check (if any) and a size check of its result."""
    pre = _FILTER_PRECHECKS.get(name)
    signature = inspect.signature(fn) if pre is not None else None
    what = f"filter {name}"

    @functools.wraps(fn)  # keeps jinja's pass_environment/pass_context marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if pre is not None and signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            pre(bound.arguments)
            args, kwargs = bound.args, bound.kwargs
        return _checked(fn(*args, **kwargs), what)
    return guarded


#: Methods of str/bytes a template may call; the growing ones are size-checked first.
_REFUSED_STR_METHODS = frozenset({"format", "format_map", "translate", "expandtabs", "maketrans"})
_SAFE_METHODS: dict[type, frozenset[str]] = {
    dict: frozenset({"get", "items", "keys", "values"}),
    list: frozenset({"index", "count"}),
    tuple: frozenset({"index", "count"}),
}


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Refuse a call a campaign has no use for, or one that would build too much."""
    if obj is dict:
        return "dict()"
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", type(obj).__name__)
    if isinstance(owner, str | bytes) and callable(obj) and name not in _REFUSED_STR_METHODS:
        what = f"{name}()"
        if name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count")
            _replaced_size(what, str(owner), str(args[0]), str(args[1]),
                           count if isinstance(count, int) else None)
        elif name == "join" and args:
            _joined_size(what, list(args[0]), owner)
        elif name in ("ljust", "rjust", "center", "zfill") and args:
            _pre_width(name, "width")({"width": args[0]})
        return what
    for kind, allowed in _SAFE_METHODS.items():
        if isinstance(owner, kind) and name in allowed:
            return f"{name}()"
    raise SecurityError(f"calling {name}() is not allowed in templates")


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` so the sandbox measures the parts before joining them."""

    @optimizeconst
    def visit_Concat(self, node: jnodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"environment.bounded_concat({func_name}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _refused_format(*args: Any, **kwargs: Any) -> Any:
    raise SecurityError("str.format is not allowed in templates")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Sandbox in which no operation can build a value without bound.

    The stock sandbox blocks attribute escapes but lets ``'x' * 10**9``,
    ``s|replace('x', s)``, ``a ~ a`` or ``(10**128)**128`` through, and an
    author (or a mistake) should not be able to stall a send or exhaust memory:
    every operator, filter and method call that can grow a value is measured
    before it runs (TemplateTooLarge), containers may not be modified, and the
    rendered text itself is bounded.
    """

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        what = f"'{operator}'"
        numbers = (isinstance(left, int | float) and not isinstance(left, bool)
                   and isinstance(right, int | float) and not isinstance(right, bool))
        if operator == "**" and numbers:
            if isinstance(right, int) and abs(right) > _MAX_EXPONENT:
                raise TemplateTooLarge(
                    f"'**' exponent {right:,} is too large (at most {_MAX_EXPONENT})")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                bits = max(left.bit_length(), 1) * right
                if bits > MAX_TEMPLATE_INT_BITS:
                    raise TemplateTooLarge(
                        f"'**' builds an integer too large (about {bits:,} bits; "
                        f"at most {MAX_TEMPLATE_INT_BITS:,})")
        elif operator == "*" and numbers and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_TEMPLATE_INT_BITS + 1:
                raise TemplateTooLarge(
                    f"'*' builds an integer too large (more than {MAX_TEMPLATE_INT_BITS:,} bits)")
        elif operator == "%" and isinstance(left, str | bytes):
            raise SecurityError("string formatting with % is not allowed")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
                    _refuse_size(what, _weight(seq) * times)
        elif operator == "+" and not numbers:
            _refuse_size(what, _weight(left) + _weight(right))
        return _checked(super().call_binop(context, operator, left, right), what)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if isinstance(__obj, jinja2.Undefined):  # let it raise its own "is undefined"
            return super().call(__context, __obj, *args, **kwargs)
        what = _check_call(__obj, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs), what)

    def wrap_str_format(self, value: Any) -> Any:
        # jinja returns a sandboxed str.format for ``s.format`` / ``s|attr('format')``
        # (CVE-2025-27516 was a way around it); widths like {:>999999999} still allocate.
        if super().wrap_str_format(value) is not None:
            return _refused_format
        return None

    def bounded_concat(self, join: Any, parts: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: measured before joining."""
        _joined_size("'~'", list(parts), "")
        return join(parts)  # type: ignore[no-any-return]

    def concat(self, chunks: Iterable[str]) -> str:  # type: ignore[override]
        """The rendered text, refused as soon as it grows past MAX_TEMPLATE_VALUE."""
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            _refuse_size("the rendered text", size)
            out.append(chunk)
        return "".join(out)


def _environment() -> _Sandbox:
    """The sandbox personalization renders in: no loops, no unbounded allocations.

    Title, body and url need substitution and ``default``, not a programming
    language; every construct that can burn CPU or memory without bound is
    removed or measured rather than trusted.
    """
    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
    for name in ("range", "lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    for name in _DROPPED_FILTERS:
        env.filters.pop(name, None)
    for name, fn in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, fn)
    return env


_ENV = _environment()


def _has_placeholder(value: str) -> bool:
    return _PLACEHOLDER_RE.search(value) is not None


def _unsafe_name(name: object) -> bool:
    # str.format reaches attributes by name and pads without bound (CVE-2025-27516 used it)
    return isinstance(name, str) and (name.startswith("_") or name in _REFUSED_STR_METHODS)


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
    # Their bodies are joined before anything can measure them; `{% set a %}{{a}}{{a}}`
    # doubles a value per line.
    if any(ast.find_all((jnodes.AssignBlock, jnodes.FilterBlock, jnodes.Block))):
        raise _fail("block set, filter blocks and blocks are not allowed in templates")
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
    #: Subscribers an earlier run left in flight (kill -9, power cut, failed ledger):
    #: ``resend`` (counted as possible duplicates) or ``skip`` (recorded ``uncertain``).
    on_uncertain: Literal["resend", "skip"] = "resend"


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
    # Line of each dotted field in ``source``, so a template that fails for one subscriber
    # mid-send is reported as ``file:line: field`` like every load-time error.
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    def line_of(self, field_name: str) -> int | None:
        """The line ``field_name`` (dotted, e.g. ``locales.fr.title``) is on, when known."""
        return self._lines.get(field_name)

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
    loaded = campaign.model_copy(update={"source": source})
    loaded._lines = {_dotted(path): line for path, line in tree.lines.items() if path}
    return loaded


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


def field_line(campaign: Campaign, dotted: str) -> int | None:
    """The line of ``dotted`` (``delivery.topic``) in the file the campaign came from.

    For errors found after loading (a topic one push service refuses, given
    who is in the audience): the file is read again rather than keeping every
    campaign's line map in memory. None when the file is gone, changed or was
    never a file.
    """
    if not campaign.source:
        return None
    try:
        with open_input(Path(campaign.source)) as handle:
            text = handle.read(MAX_FILE_BYTES + 1).decode("utf-8")
        tree = _compose(text.removeprefix("\ufeff"), campaign.source)
    except (InputError, OSError, UnicodeDecodeError):
        return None
    return tree.lines.get(tuple(dotted.split(".")))


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
        if not _is_https_url(url):
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
