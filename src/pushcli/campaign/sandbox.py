"""The jinja2 sandbox campaign templates render in, and the limits that keep it bounded.

Title, body and url need substitution and ``default``, not a programming
language. The stock sandbox blocks attribute escapes but not growth (``'x' *
10**9``, ``s|replace('x', s)``, ``(10**128)**128``), and a campaign author (or a
mistake) must not be able to stall a send or exhaust memory: every operation
that can grow a value is measured before it runs. ``template_problem`` refuses
at load time the constructs that could only fail mid-send.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2 import nodes as jnodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pushcli.ece import MAX_PLAINTEXT  # the protocol limit lives with the encryption

__all__ = [
    "MAX_PLAINTEXT",
    "MAX_TEMPLATE_INT_BITS",
    "MAX_TEMPLATE_VALUE",
    "PLACEHOLDER_RE",
    "TemplateTooLarge",
    "has_placeholder",
    "new_environment",
    "template_problem",
]

PLACEHOLDER_RE = re.compile(r"\{[{%#]")

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


def new_environment() -> _Sandbox:
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


_ENV = new_environment()  # for load-time checks; each Renderer has its own


def has_placeholder(value: str) -> bool:
    """Whether ``value`` is a template at all (``{{``, ``{%`` or ``{#``)."""
    return PLACEHOLDER_RE.search(value) is not None


def _unsafe_name(name: object) -> bool:
    # str.format reaches attributes by name and pads without bound (CVE-2025-27516 used it)
    return isinstance(name, str) and (name.startswith("_") or name in _REFUSED_STR_METHODS)


def template_problem(source: str) -> str | None:
    """Why ``source`` cannot be a campaign template, or None.

    Refuses at load time what would only fail (or be refused) mid-send, so the
    author sees it as ``file:line: field`` before the first subscriber.
    """
    if not has_placeholder(source):
        return None
    try:
        ast = _ENV.parse(source)
        _ENV.compile(ast)
    except TemplateSyntaxError as exc:
        where = f" (template line {exc.lineno})" if "\n" in source and exc.lineno else ""
        reason = str(exc.message or exc).rstrip(".")
        return f"template syntax error: {reason}{where}"
    if any(ast.find_all((jnodes.Include, jnodes.Extends, jnodes.Import, jnodes.FromImport))):
        return "include, extends and import are not allowed in templates"
    if any(ast.find_all((jnodes.For, jnodes.Macro, jnodes.CallBlock))):
        return "loops, macros and call blocks are not allowed in templates"
    # Their bodies are joined before anything can measure them; `{% set a %}{{a}}{{a}}`
    # doubles a value per line.
    if any(ast.find_all((jnodes.AssignBlock, jnodes.FilterBlock, jnodes.Block))):
        return "block set, filter blocks and blocks are not allowed in templates"
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
        return f"unsafe template: access to attribute '{unsafe[-1]}' is not allowed"
    return None
