"""Subscriptions: the value, its validation, and streaming parsers for JSON,
NDJSON and CSV files with the line (or array index) of every record.

Parsers yield records one at a time so that a million-row file is never held
in memory; each yields either a valid Subscription or a Rejected record
naming where and why.
"""

from __future__ import annotations

import base64
import codecs
import csv
import itertools
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pushcli.encoding import b64_decode, b64url_encode
from pushcli.errors import InputError
from pushcli.files import neutralize_cell, open_input, restore_cell
from pushcli.pushservices import EndpointRefused, check_endpoint

Format = Literal["json", "ndjson", "csv"]
FORMATS: tuple[str, ...] = ("json", "ndjson", "csv")

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
LOCALE_RE = re.compile(r"^[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8}){0,4}$")
ATTR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_LENGTH = 1024
MAX_RECORD_BYTES = 1024 * 1024  # one NDJSON line or JSON array element; a record is < 1 KiB
JSON_CHUNK = 64 * 1024
CSV_DELIMITERS = {",": "','", ";": "';'", "\t": "tab"}
CSV_REQUIRED = ("endpoint", "p256dh", "auth")
CSV_RESERVED = {"endpoint", "p256dh", "auth", "tags", "locale", "user_id", "id", "expirationtime"}



@dataclass(frozen=True, slots=True)
class Subscription:
    """One browser's push subscription, validated and normalized.

    Keys are kept as unpadded base64url text so that what we store is what the
    browser gave (``PushSubscription.toJSON()``) and round-trips on export.
    """

    endpoint: str
    p256dh: str
    auth: str
    tags: tuple[str, ...] = ()
    locale: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    expiration_time: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The import format, so export -> import round-trips."""
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        }
        if self.tags:
            out["tags"] = list(self.tags)
        if self.locale:
            out["locale"] = self.locale
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.user_id is not None:
            out["user_id"] = self.user_id
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed validation: where it was and why."""

    location: str  # "line 12" or "[3]"
    reason: str

    def describe(self, source: str) -> str:
        return f"{source}:{self.location.removeprefix('line ')}: {self.reason}" if \
            self.location.startswith("line ") else f"{source}{self.location}: {self.reason}"


# --- validation of single values --------------------------------------------------------

# P-256 (secp256r1) domain parameters, FIPS 186-4 D.1.2.3.
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_CANONICAL = re.compile(r"^[A-Za-z0-9_-]+$")


def _on_p256(raw: bytes) -> bool:
    """True if a 65-byte uncompressed point satisfies y^2 = x^3 - 3x + b (mod p).

    The same test cryptography's from_encoded_point makes, at a quarter of its
    cost: import checks a million keys. The point at infinity has no
    uncompressed encoding, so coordinates in range on the curve are enough.
    """
    x = int.from_bytes(raw[1:33], "big")
    y = int.from_bytes(raw[33:], "big")
    return x < _P and y < _P and (y * y - (x * x * x - 3 * x + _B)) % _P == 0


def _is_canonical(text: str, size: int) -> bool:
    """Already unpadded base64url of ``size`` bytes: store it as given."""
    return len(text) == (size * 4 + 2) // 3 and _CANONICAL.match(text) is not None


def _decode_key(field: str, value: object, size: int) -> bytes:
    """Decode a base64url key field to exactly ``size`` bytes, or say what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a base64url string")
    try:
        raw = b64_decode(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if len(raw) != size:
        raise ValueError(f"{field}: must decode to {size} bytes, got {len(raw)}")
    return raw


def validate_p256dh(value: object) -> str:
    """The subscriber's ECDH public key: a 65-byte uncompressed point on P-256."""
    raw = _decode_key("keys.p256dh", value, 65)
    if raw[0] != 0x04:
        raise ValueError("keys.p256dh: must be an uncompressed point (first byte 0x04)")
    if not _on_p256(raw):
        raise ValueError("keys.p256dh: point is not on the P-256 curve")
    assert isinstance(value, str)
    return value if _is_canonical(value, 65) else b64url_encode(raw)


_P256DH_RE = re.compile(r"[A-Za-z0-9_-]{86}[AQgw]")  # 65 bytes: the last 2 bits are 0
_AUTH_RE = re.compile(r"[A-Za-z0-9_-]{21}[AQgw]")  # 16 bytes


def stored_keys_valid(p256dh: object, auth: object) -> bool:
    """Quick check of keys in the canonical form import stores (both valid, True).

    For reading the store on the send path, where validate_* would cost more
    than the rest of decoding a row. False means "not canonical or not valid":
    call validate_p256dh/validate_auth to tell which and why.
    """
    if not (isinstance(p256dh, str) and isinstance(auth, str)
            and _P256DH_RE.fullmatch(p256dh) and _AUTH_RE.fullmatch(auth)):
        return False
    raw = base64.urlsafe_b64decode(p256dh + "=")
    return raw[0] == 0x04 and _on_p256(raw)


def validate_auth(value: object) -> str:
    """The 16-byte auth secret."""
    raw = _decode_key("keys.auth", value, 16)
    assert isinstance(value, str)
    return value if _is_canonical(value, 16) else b64url_encode(raw)


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise ValueError(
            f"tags: invalid tag {str(tag)[:40]!r} (letters, digits, _ . : -; at most 64)"
        )
    return tag


def _tags(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: Iterable[object] = [t.strip() for t in value.split(";") if t.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("tags: must be a list of strings or a ';'-separated string")
    out: list[str] = []
    for t in items:
        tag = validate_tag(t)  # type: ignore[arg-type]
        if tag not in out:
            out.append(tag)
    return tuple(sorted(out))


def _locale(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not LOCALE_RE.match(value):
        raise ValueError(f"locale: invalid locale {str(value)[:40]!r}")
    return value


def _unicode_text(field: str, text: str) -> str:
    """``text`` if it can be stored, i.e. encoded as UTF-8.

    JSON may spell a lone surrogate (``"\\udc80"``); Python decodes it into a
    str that no database driver can encode, which used to crash the import of
    its whole batch. It is this record's problem, so it is rejected here.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: contains an invalid character "
                         "(a lone surrogate such as \\udc80)") from None
    return text


def _attributes(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("attributes: must be an object")
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes: at most {MAX_ATTRIBUTES} attributes")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not ATTR_NAME_RE.match(k):
            raise ValueError(f"attributes: invalid attribute name {str(k)[:40]!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"attributes.{k}: must be a finite number")
        if v is not None and not isinstance(v, str | int | float | bool):
            raise ValueError(f"attributes.{k}: must be a string, number, boolean or null")
        if isinstance(v, str) and len(v) > MAX_ATTRIBUTE_LENGTH:
            raise ValueError(f"attributes.{k}: longer than {MAX_ATTRIBUTE_LENGTH} characters")
        if isinstance(v, str):
            _unicode_text(f"attributes.{k}", v)
        out[k] = v
    return out


def _user_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("user_id: must be a string or an integer")
    text = str(value)
    if len(text) > 256:
        raise ValueError("user_id: longer than 256 characters")
    return _unicode_text("user_id", text)


def _expiration(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expirationTime: must be a number or null") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expirationTime: must be a number or null")
    return int(value)


def make_subscription(
    record: Mapping[str, Any],
    *,
    allowed_hosts: frozenset[str] = frozenset(),
    extra_tags: Iterable[str] = (),
) -> Subscription:
    """Validate one toJSON()-shaped record (plus extras). Raises ValueError(reason)."""
    if not isinstance(record, Mapping):
        raise ValueError("record must be an object")
    try:
        endpoint = check_endpoint(record.get("endpoint"), allowed_hosts).url
    except EndpointRefused as exc:
        raise ValueError(f"endpoint: {str(exc).removeprefix('endpoint ')}") from None
    keys = record.get("keys")
    if not isinstance(keys, Mapping):
        raise ValueError("keys: missing (expected keys.p256dh and keys.auth)")
    if "p256dh" not in keys:
        raise ValueError("keys.p256dh: missing")
    if "auth" not in keys:
        raise ValueError("keys.auth: missing")
    p256dh = validate_p256dh(keys["p256dh"])
    auth = validate_auth(keys["auth"])
    tags = _tags(record.get("tags"))
    if extra_tags:
        tags = tuple(sorted(set(tags) | {validate_tag(t) for t in extra_tags}))
    user = record.get("user_id", record.get("id"))
    return Subscription(
        endpoint=endpoint,
        p256dh=p256dh,
        auth=auth,
        tags=tags,
        locale=_locale(record.get("locale")),
        attributes=_attributes(record.get("attributes")),
        user_id=_user_id(user),
        expiration_time=_expiration(record.get("expirationTime")),
    )


# --- parsers ---------------------------------------------------------------------------

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
        records = _ndjson_records(stream, source)
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


def _ndjson_records(stream: IO[bytes], source: str) -> Iterator[tuple[str, Any]]:
    for number, text in _decoded_lines(stream, source, MAX_RECORD_BYTES):
        loc = f"line {number}"
        if text is None:
            yield loc, Rejected(loc, "not valid UTF-8")
            continue
        if text is _LINE_TOO_LONG:
            yield loc, Rejected(loc, f"line longer than {MAX_RECORD_BYTES // 1024 // 1024} MiB "
                                     "(a subscription is under 1 KiB); skipped")
            continue
        if not text.strip():
            continue
        try:
            yield loc, json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield loc, Rejected(loc, f"invalid JSON: {msg}")


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
            except RecursionError:
                raise self.error("invalid JSON: nested too deeply") from None
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
        except (StopIteration, json.JSONDecodeError, RecursionError):
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


def subscription_from_row(
    endpoint: str, p256dh: str, auth: str, tags: Iterable[str], locale: str | None,
    attributes: Mapping[str, Any], user_id: str | None, expiration_time: int | None,
) -> Subscription:
    """Rebuild a stored row without re-validating (the store only holds valid rows)."""
    return Subscription(endpoint, p256dh, auth, tuple(tags), locale, dict(attributes), user_id,
                        expiration_time)


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
                         "expirationTime", *names])
        for line in spool:
            rec = json.loads(line)
            attrs = rec.get("attributes", {})
            writer.writerow([neutralize_cell(cell) for cell in (
                rec["endpoint"], rec["keys"]["p256dh"], rec["keys"]["auth"],
                ";".join(rec.get("tags", [])), rec.get("locale") or "",
                rec.get("user_id") or "",
                "" if rec.get("expirationTime") is None else rec["expirationTime"],
                *(_csv_cell(attrs.get(k)) for k in names),
            )])
    return count


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

