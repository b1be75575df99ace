"""Campaign files: YAML composed with line numbers, pydantic errors mapped to file:line:field.

A campaign is written by hand, so every mistake must come back as one line that
points at the file, the line and the dotted field (``campaign.yml:5:
notification.url: must be an absolute https URL``). Validation therefore works
on the composed YAML node tree (which knows line numbers) rather than on plain
``yaml.safe_load`` output, and pydantic errors are mapped back onto those nodes.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pushcli.campaign.model import Campaign
from pushcli.errors import InputError
from pushcli.files import open_input

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "load_campaign", "parse_campaign"]

MAX_FILE_BYTES = 1 << 20  # a campaign is a page of YAML; anything bigger is a mistake or an attack
MAX_DEPTH = 32  # nesting of YAML collections; a campaign needs about 5


# --------------------------------------------------------------------------- YAML


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
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader rejects control characters up front
        root = loader.get_single_node()
        if root is None or (
            isinstance(root, yaml.ScalarNode) and root.value.strip() in ("", "~")
        ):
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
        if loader is not None:
            loader.dispose()


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

