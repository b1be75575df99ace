"""Streaming parsers (JSON, NDJSON, CSV) and exporters for subscription files.

Parsers yield records one at a time so that a million-row file is never held
in memory; each yields either a valid Subscription or a Rejected record
naming where (line or array index) and why.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from pushcli.errors import InputError
from pushcli.files import neutralize_cell, open_input, private_file, restore_cell
from pushcli.subscriptions.model import (
    ATTR_NAME_RE,
    Rejected,
    Subscription,
    make_subscription,
    validate_tag,
)

Format = Literal["json", "ndjson", "csv"]
FORMATS: tuple[str, ...] = ("json", "ndjson", "csv")
MAX_RECORD_BYTES = 1024 * 1024  # one NDJSON line or JSON array element; a record is < 1 KiB
JSON_CHUNK = 64 * 1024
CSV_DELIMITERS = {",": "','", ";": "';'", "\t": "tab"}
CSV_REQUIRED = ("endpoint", "p256dh", "auth")
CSV_RESERVED = {"endpoint", "p256dh", "auth", "tags", "locale", "user_id", "id", "expirationtime",
                "timezone"}


# --- parsers ---------------------------------------------------------------------------

#: What ``json`` raises for text it will not read: JSONDecodeError, RecursionError for
#: deep nesting, and a plain ValueError for an integer of more digits than
#: ``sys.get_int_max_str_digits()`` (4300: Python's guard against quadratic parsing).
JSON_ERRORS = (ValueError, RecursionError)


def json_problem(exc: BaseException) -> str:
    """One line saying why text did not parse as JSON (an exception of ``JSON_ERRORS``),
    with no part of the text itself in it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return "invalid JSON: a number with too many digits"


ParsedRecord = tuple[str, Subscription | Rejected]


def detect_format(name: str, explicit: str | None) -> Format:
    """``--format`` if given, else from the file extension."""
    if explicit:
        fmt = explicit.lower()
        if fmt not in FORMATS:
            raise InputError(f"unknown format {explicit!r} (expected json, ndjson or csv)")
        return fmt  # type: ignore[return-value]
    suffix = Path(name).suffix.lower()
    mapping = {".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv"}
    if suffix in mapping:
        return mapping[suffix]  # type: ignore[return-value]
    if name == "-":
        raise InputError("standard input needs --format (json, ndjson or csv)")
    raise InputError(
        f"cannot tell the format from the extension {suffix or '(none)'!r}; "
        "use --format json|ndjson|csv",
        file=name,
    )


def open_source(name: str) -> IO[bytes]:
    """A binary stream for a path or ``-`` (standard input)."""
    if name == "-":
        return sys.stdin.buffer
    return open_input(name)


def parse_stream(
    stream: IO[bytes],
    fmt: Format,
    *,
    source: str,
    allowed_hosts: frozenset[str] = frozenset(),
    extra_tags: Iterable[str] = (),
    delimiter: str | None = None,
) -> Iterator[Subscription | Rejected]:
    """Yield every record of a stream as a Subscription or a Rejected.

    File-level problems (no header, missing CSV column, malformed JSON document)
    raise InputError before anything is yielded for that file when they can be
    seen up front (a JSON syntax error after the first records, once those are
    yielded: JSON is streamed); record-level problems are yielded as Rejected.
    ``delimiter`` (CSV only) overrides detection from the header.
    """
    extra = tuple(extra_tags)
    for t in extra:
        try:
            validate_tag(t)
        except ValueError as exc:
            raise InputError(f"--tag: {exc}") from None
    if fmt == "csv":
        records: Iterator[tuple[str, Any]] = _csv_records(
            stream, source, None if delimiter is None else csv_delimiter(delimiter))
    elif fmt == "ndjson":
        records = ndjson_records(stream, source)
    else:
        records = _json_records(stream, source)
    for location, record in records:
        if isinstance(record, Rejected):
            yield record
            continue
        try:
            yield make_subscription(record, allowed_hosts=allowed_hosts, extra_tags=extra)
        except ValueError as exc:
            yield Rejected(location, str(exc))


def read_files(
    names: Iterable[str],
    fmt: str | None = None,
    *,
    allowed_hosts: frozenset[str] = frozenset(),
    extra_tags: Iterable[str] = (),
    delimiter: str | None = None,
) -> Iterator[tuple[str, Subscription | Rejected]]:
    """``(source, record)`` for every record of several files (``-`` is standard input).

    Everything that can be wrong with the files as a whole is checked before
    the first record is read: each format (``fmt``, else the extension), the
    CSV ``delimiter``, and that every file opens, so a typo in the third name
    does not leave the first two imported. Records are then read lazily, one
    file after another; ``source`` names the file in rejection messages.
    """
    formats = [(name, detect_format(name, fmt)) for name in names]
    if delimiter is not None:
        delimiter = csv_delimiter(delimiter)
    tags = tuple(extra_tags)
    streams = open_sources(name for name, _ in formats)

    def records() -> Iterator[tuple[str, Subscription | Rejected]]:
        for (source, stream), (_, f) in zip(streams, formats, strict=True):
            for rec in parse_stream(stream, f, source=source,
                                    allowed_hosts=allowed_hosts, extra_tags=tags,
                                    delimiter=delimiter):
                yield source, rec

    return records()


def open_sources(names: Iterable[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """``(source, stream)`` for each of several files, one after another (``-`` is
    standard input, named ``<stdin>``); each is closed before the next opens.

    Every file is opened once before this returns, so a typo in the third name
    is an InputError before the first record is read (or stored).
    """
    names = list(names)
    for name in names:
        if name != "-":
            open_source(name).close()

    def streams() -> Iterator[tuple[str, IO[bytes]]]:
        for name in names:
            stream = open_source(name)
            try:
                yield ("<stdin>" if name == "-" else name), stream
            finally:
                if name != "-":
                    stream.close()

    return streams()


_LINE_TOO_LONG = "\x00pushcli-line-too-long\x00"


def _decoded_lines(stream: IO[bytes], source: str, max_line: int | None = None,
                   ) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per line; text None where the bytes are not UTF-8.

    With ``max_line``, a longer line is never held whole: it is read and dropped
    in bounded pieces and reported as ``_LINE_TOO_LONG``.
    """
    first = True
    number = 0
    while True:
        raw = stream.readline() if max_line is None else stream.readline(max_line + 1)
        if not raw:
            return
        number += 1
        if max_line is not None and len(raw) > max_line and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(JSON_CHUNK)
            first = False
            yield number, _LINE_TOO_LONG
            continue
        if first:
            first = False
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputError("file is UTF-16; save it as UTF-8", file=source, line=1)
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def ndjson_records(stream: IO[bytes], source: str, *,
                   size_note: str = "a subscription is under 1 KiB",
                   ) -> Iterator[tuple[str, Any]]:
    """``("line N", decoded JSON or Rejected)`` per non-blank line of an NDJSON stream.

    A line over ``MAX_RECORD_BYTES`` is skipped unread and rejected (``size_note``
    says how big a record should be); so are bytes that are not UTF-8 and bad JSON.
    Shared by subscriber and event import (``pushcli.events``).
    """
    for number, text in _decoded_lines(stream, source, MAX_RECORD_BYTES):
        loc = f"line {number}"
        if text is None:
            yield loc, Rejected(loc, "not valid UTF-8")
            continue
        if text is _LINE_TOO_LONG:
            yield loc, Rejected(loc, f"line longer than {MAX_RECORD_BYTES // 1024 // 1024} MiB "
                                     f"({size_note}); skipped")
            continue
        if not text.strip():
            continue
        try:
            yield loc, json.loads(text)
        except JSON_ERRORS as exc:
            yield loc, Rejected(loc, json_problem(exc))


_BAD_ENCODING = "\x00pushcli-bad-encoding\x00"


def csv_delimiter(value: str) -> str:
    """``--delimiter``: one character; ``tab`` or ``\\t`` for a tab."""
    text = "\t" if value.lower() in ("tab", "\\t") else value
    if len(text) != 1 or text in "\"\r\n" or text.isalnum():
        raise InputError(f"must be one character such as ',' ';' or tab, not {value[:20]!r}",
                         field="--delimiter")
    return text


def _sniff_delimiter(header_line: str) -> str:
    """The separator of a CSV header: the first of ``,`` ``;`` tab that splits it into
    the required columns (Excel writes ``;`` in many locales); if none does, the
    most frequent of them, so the missing-column error can say what it found."""
    for delimiter in CSV_DELIMITERS:
        try:
            cells = next(csv.reader([header_line], delimiter=delimiter), [])
        except csv.Error:
            continue
        names = {c.strip().lower() for c in cells}
        if all(c in names for c in CSV_REQUIRED):
            return delimiter
    return max(CSV_DELIMITERS, key=header_line.count)


def _csv_records(stream: IO[bytes], source: str, delimiter: str | None = None,
                 ) -> Iterator[tuple[str, Any]]:
    bad_lines: list[int] = []

    def lines() -> Iterator[str]:
        for number, text in _decoded_lines(stream, source):
            if text is None:
                bad_lines.append(number)
                yield _BAD_ENCODING + "\n"
            else:
                yield text

    line_iter = lines()
    first = next(line_iter, None)
    if first is None:
        raise InputError("empty file (expected a header row with endpoint,p256dh,auth)",
                         file=source)
    chosen = delimiter or _sniff_delimiter(first)
    reader = csv.reader(itertools.chain([first], line_iter), delimiter=chosen)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("empty file (expected a header row with endpoint,p256dh,auth)",
                         file=source) from None
    except csv.Error as exc:
        raise InputError(f"unreadable CSV header: {exc}", file=source, line=1) from None
    if header == [_BAD_ENCODING]:
        raise InputError("not valid UTF-8", file=source, line=1)
    columns = [c.strip().lower() for c in header]
    missing = [c for c in CSV_REQUIRED if c not in columns]
    if missing:
        name = CSV_DELIMITERS.get(chosen, repr(chosen))
        if delimiter is not None:
            found = f"split on {name} (--delimiter)"
        elif chosen in first:
            found = f"found separator {name}; use --delimiter for another"
        else:
            found = "found no ',', ';' or tab separator; use --delimiter"
        raise InputError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(header must include endpoint,p256dh,auth; {found})",
            file=source,
            line=1,
        )
    dupes = [c for c, n in Counter(columns).items() if n > 1]  # linear: 40,000 columns
    if dupes:
        raise InputError(f"duplicate column {min(dupes)!r}", file=source, line=1)
    attr_columns = [c for c in columns if c not in CSV_RESERVED and c]
    for c in attr_columns:
        if not ATTR_NAME_RE.match(c):
            raise InputError(f"column {c!r} is not a valid attribute name", file=source, line=1)
    width = len(columns)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            loc = f"line {reader.line_num}"
            yield loc, Rejected(loc, f"malformed CSV: {exc}")
            continue
        loc = f"line {reader.line_num}"
        if row == [_BAD_ENCODING]:
            yield loc, Rejected(loc, "not valid UTF-8")
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != width:
            yield loc, Rejected(loc, f"expected {width} columns, got {len(row)}")
            continue
        # undo export's formula neutralizing ('=x -> =x), see files.restore_cell
        values = dict(zip(columns, map(restore_cell, row), strict=True))
        record: dict[str, Any] = {
            "endpoint": values["endpoint"].strip(),
            "keys": {"p256dh": values["p256dh"].strip(), "auth": values["auth"].strip()},
            "tags": values.get("tags", ""),
            "locale": values.get("locale", "").strip() or None,
            "user_id": (values.get("user_id") or values.get("id") or "").strip() or None,
            "expirationTime": values.get("expirationtime", "").strip() or None,
            "timezone": values.get("timezone", "").strip() or None,
            "attributes": {c: values[c] for c in attr_columns if values[c] != ""},
        }
        yield loc, record


class _JsonCursor:
    """A window over a JSON text read in chunks, for :func:`_json_records`.

    ``json.JSONDecoder.raw_decode`` parses one value at an offset; the cursor
    keeps only the unparsed tail of the file in memory (plus the value being
    read, at most MAX_RECORD_BYTES), so a 50 MB array costs what one record does.
    """

    def __init__(self, stream: IO[bytes], source: str) -> None:
        self.stream = stream
        self.source = source
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0  # newlines in the text already dropped from buf
        self.started = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self.last_size = 0  # characters of the last value read

    def line(self, pos: int) -> int:
        return self.lines_before + self.buf.count("\n", 0, pos) + 1

    def error(self, message: str, pos: int | None = None) -> InputError:
        return InputError(message, file=self.source,
                          line=self.line(self.pos if pos is None else pos))

    def fill(self, size: int = JSON_CHUNK) -> bool:
        """Drop what was parsed, read ``size`` more bytes; False at end of file."""
        if self.eof:
            return False
        self.lines_before += self.buf.count("\n", 0, self.pos)
        self.buf = self.buf[self.pos:]
        self.pos = 0
        data = self.stream.read(size)
        if not self.started:
            self.started = True
            if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise self.error("file is UTF-16; save it as UTF-8")
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
        if not data:
            self.eof = True
        try:
            self.buf += self._decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as exc:
            line = self.line(len(self.buf)) + data[: max(exc.start, 0)].count(b"\n")
            raise InputError("not valid UTF-8", file=self.source, line=line) from None
        return not self.eof or bool(self.buf)

    def peek(self) -> str | None:
        """The next non-whitespace character (not consumed), None at end of file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def expect(self, chars: str, what: str) -> str:
        ch = self.peek()
        if ch is None or ch not in chars:
            raise self.error(f"invalid JSON: Expecting {what}")
        self.pos += 1
        return ch

    def value(self, where: str) -> Any:
        """Parse the value at the cursor, reading more until it is complete."""
        if self.peek() is None:
            raise self.error("invalid JSON: Expecting value")
        while True:
            try:
                obj, end = self._json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the chunk boundary fails at (or a few characters before)
                # the end of the buffer, or as an unterminated string: read more and retry.
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 8
                if not (cut and self._grow(where)):
                    raise self.error(f"invalid JSON: {exc.msg}", exc.pos) from None
                continue
            except JSON_ERRORS as exc:  # too deep, or a number too long to read
                raise self.error(json_problem(exc)) from None
            if end == len(self.buf) and self._grow(where):
                continue  # a number or literal may go on in the next chunk
            self.last_size = end - self.pos
            if self.last_size > MAX_RECORD_BYTES:
                raise self._too_long(where)
            self.pos = end
            return obj

    def _grow(self, where: str) -> bool:
        """Read more for an incomplete value; grows geometrically so a long value
        is re-parsed O(log n) times, and refuses past MAX_RECORD_BYTES."""
        if self.eof:
            return False
        pending = len(self.buf) - self.pos
        if pending > MAX_RECORD_BYTES:
            raise self._too_long(where)
        before = len(self.buf) - self.pos
        while len(self.buf) - self.pos == before and self.fill(max(JSON_CHUNK, pending)):
            pass  # a chunk of only a partial UTF-8 sequence adds no text yet
        return len(self.buf) - self.pos > before

    def _too_long(self, where: str) -> InputError:
        return self.error(f"record {where} is longer than {MAX_RECORD_BYTES // 1024 // 1024} "
                          "MiB; a subscription is under 1 KiB")


def _json_records(stream: IO[bytes], source: str) -> Iterator[tuple[str, Any]]:
    """Records of a JSON array, ``{"subscriptions": [...]}`` or one object, streamed.

    Each element is yielded as soon as it is parsed, so memory stays flat
    whatever the file size. A file that can be re-read is first walked once
    without yielding (the same flat memory, ~5 % of an import's time), so a
    syntax error anywhere still refuses the whole file before any record is
    stored; from a pipe, records before the error have been yielded by then.
    """
    if stream.seekable():
        start = stream.tell()
        for _ in _json_walk(stream, source):
            pass
        stream.seek(start)
    yield from _json_walk(stream, source)


def _json_walk(stream: IO[bytes], source: str) -> Iterator[tuple[str, Any]]:
    cur = _JsonCursor(stream, source)
    first = cur.peek()
    if first is None:
        raise InputError("empty file (expected a JSON array of subscriptions)", file=source)
    shape_error = 'expected a JSON array of subscriptions or {"subscriptions": [...]}'
    if first == "[":
        yield from _json_array(cur, "")
        if cur.peek() is not None:
            raise cur.error("invalid JSON: Extra data")
    elif first == "{":
        cur.pos += 1
        fields: dict[str, Any] = {}
        size = 0
        streamed = False
        if cur.peek() == "}":
            cur.pos += 1
        else:
            while True:
                if cur.peek() != '"':
                    raise cur.error("invalid JSON: Expecting property name enclosed in "
                                    "double quotes")
                key = cur.value("[0]")
                cur.expect(":", "':' delimiter")
                if key == "subscriptions" and cur.peek() == "[":
                    yield from _json_array(cur, ".subscriptions")
                    streamed = True
                else:
                    fields[key] = cur.value("[0]")
                    size += len(key) + cur.last_size
                    if size > MAX_RECORD_BYTES:
                        raise cur._too_long("[0]")
                if cur.expect(",}", "',' delimiter") == "}":
                    break
        if cur.peek() is not None:
            raise cur.error("invalid JSON: Extra data")
        if not streamed:
            if "subscriptions" in fields or "endpoint" not in fields:
                raise InputError(shape_error, file=source)
            yield "[0]", fields
    else:
        cur.value("the document")
        if cur.peek() is not None:
            raise cur.error("invalid JSON: Extra data")
        raise InputError(shape_error, file=source)


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NOTHING = object()


def _json_array(cur: _JsonCursor, prefix: str) -> Iterator[tuple[str, Any]]:
    """Yield the elements of the array at the cursor (which is on its ``[``).

    Fast path: an element followed, inside the buffer, by ``,`` or ``]`` is
    complete, so one scan suffices; anything else (a chunk boundary, an error)
    goes through the careful :meth:`_JsonCursor.value`. The fast path keeps the
    per-record cost near ``json.loads``' own.
    """
    cur.pos += 1
    if cur.peek() == "]":
        cur.pos += 1
        return
    skip = _WHITESPACE.match
    scan = cur._json.scan_once
    index = 0
    while True:
        where = f"{prefix}[{index}]"
        index += 1
        buf = cur.buf
        pos = skip(buf, cur.pos).end()
        try:
            obj, end = scan(buf, pos)
        except (StopIteration, *JSON_ERRORS):
            obj = _NOTHING
        if obj is not _NOTHING and end - pos <= MAX_RECORD_BYTES:
            after = skip(buf, end).end()
            if after < len(buf) and buf[after] in ",]":
                cur.pos = after + 1
                yield where, obj
                if buf[after] == "]":
                    return
                continue
        cur.pos = pos
        yield where, cur.value(where)
        if cur.expect(",]", "',' delimiter") == "]":
            return


def export_rows(rows: Iterable[Any], fmt: Format, out: IO[str],
                on_skip: Callable[[int, str], None]) -> int:
    """Write stored subscriptions (``store.iter_subscriptions`` rows) in the import
    format; returns the count. A malformed row (written into the table directly,
    not by import) cannot round-trip: it is passed to ``on_skip(id, problem)``."""

    def usable() -> Iterator[Subscription]:
        for s in rows:
            if s.problem is None:
                yield s.subscription
            else:
                on_skip(s.id, s.problem)

    return write_csv(usable(), out) if fmt == "csv" else write_json(usable(), out,
                                                                    ndjson=fmt == "ndjson")


def export_file(rows: Iterable[Any], fmt: Format, output: Path | None,
                on_skip: Callable[[int, str], None]) -> int:
    """:func:`export_rows` to ``output``, or to standard output when None; returns the count.

    The file is written through ``private_file`` (0600, atomic: an export holds
    every subscriber's auth secret); one that cannot be written is one InputError.
    """
    if output is None:
        return export_rows(rows, fmt, sys.stdout, on_skip)
    try:
        with private_file(output) as fh:
            return export_rows(rows, fmt, fh, on_skip)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", file=str(output)) from None


def write_json(subs: Iterable[Subscription], out: IO[str], *, ndjson: bool) -> int:
    """Export in the import format; streams, returns the count."""
    n = 0
    if ndjson:
        for s in subs:
            out.write(json.dumps(s.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
        return n
    out.write("[")
    for s in subs:
        out.write(("\n" if n == 0 else ",\n") + json.dumps(s.to_json(), ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def write_csv(subs: Iterable[Subscription], out: IO[str]) -> int:
    """Export as CSV; attribute columns are discovered from the rows, so buffer headers.

    To keep streaming, attributes are written as one JSON-free column each in a
    first pass over names collected by the caller; here we take them from a
    spooled copy to keep memory flat.
    """
    import tempfile

    names: list[str] = []
    seen: set[str] = set()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        count = 0
        for s in subs:
            for k in s.attributes:
                if k not in seen:
                    seen.add(k)
                    names.append(k)
            spool.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
            count += 1
        spool.seek(0)
        # \r\n makes the csv module quote a cell holding a bare \r, which import (and
        # spreadsheets) would otherwise read as the end of the row.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["endpoint", "p256dh", "auth", "tags", "locale", "user_id",
                         "expirationTime", "timezone", *names])
        for line in spool:
            rec = json.loads(line)
            attrs = rec.get("attributes", {})
            writer.writerow([neutralize_cell(cell) for cell in (
                rec["endpoint"], rec["keys"]["p256dh"], rec["keys"]["auth"],
                ";".join(rec.get("tags", [])), rec.get("locale") or "",
                rec.get("user_id") or "",
                "" if rec.get("expirationTime") is None else rec["expirationTime"],
                rec.get("timezone") or "",
                *(_csv_cell(attrs.get(k)) for k in names),
            )])
    return count


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

