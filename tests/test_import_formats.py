"""Import input shapes and amplification: streamed JSON arrays, NDJSON line limit,
CSV separators (``;`` from Excel, tab, ``--delimiter``) and very wide CSV headers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pushcli.cli import app
from pushcli.errors import InputError
from pushcli.subscriptions import Rejected, Subscription, parse_stream
from pushcli.subscriptions import formats as subs_mod  # the parsers read its limits
from tests.support import real_subscription

runner = CliRunner()


class CountingStream(io.BytesIO):
    """A pipe (not seekable) that remembers how many bytes the parser has asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.served = 0

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        chunk = super().read(size)
        self.served += len(chunk)
        return chunk

    def seekable(self) -> bool:
        return False


def _import(tmp_path: Path, name: str, data: bytes, *args: str):
    (tmp_path / name).write_bytes(data)
    return runner.invoke(app, ["--db", str(tmp_path / "s.db"), "subscribers", "import",
                               str(tmp_path / name), *args])


# --- JSON arrays are streamed ----------------------------------------------------------------


@pytest.mark.parametrize("wrap", [lambda a: a, lambda a: {"subscriptions": a, "v": 1}])
def test_json_array_yields_first_record_before_the_file_is_read(wrap) -> None:
    subs = [real_subscription() for _ in range(3)]
    filler = [{"endpoint": "https://fcm.googleapis.com/fcm/send/x"}] * 20_000  # ~1 MB
    data = json.dumps(wrap([*subs, *filler])).encode()
    stream = CountingStream(data)
    records = parse_stream(stream, "json", source="big.json")
    first = next(records)
    assert isinstance(first, Subscription) and first.endpoint == subs[0]["endpoint"]
    assert stream.served < len(data) // 4, (stream.served, len(data))
    rest = list(records)
    assert len(rest) == 2 + 20_000
    assert isinstance(rest[-1], Rejected)
    assert rest[-1].location == ("[20002]" if isinstance(wrap([]), list)
                                 else ".subscriptions[20002]")


def test_json_file_with_a_late_syntax_error_yields_nothing() -> None:
    """A file (seekable) is checked whole first, in flat memory: all or nothing."""
    good = json.dumps([real_subscription() for _ in range(3)]).encode()
    records = parse_stream(io.BytesIO(good[:-1] + b",}]"), "json", source="f.json")
    with pytest.raises(InputError, match="invalid JSON"):
        next(records)
    piped = parse_stream(CountingStream(good[:-1] + b",}]"), "json", source="f.json")
    assert isinstance(next(piped), Subscription)  # from a pipe: streamed as read


def test_json_values_cut_by_chunk_boundaries_parse_as_a_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every boundary position: strings, escapes, numbers and literals split mid-way."""
    subs = [real_subscription(attributes={"n": 12345678901234, "x": -1.5e-7, "ok": True,
                                          "none": None, "s": 'é\\"\\u00e9\u20ac'},
                              user_id="é" * 3) for _ in range(4)]
    data = ("\ufeff" + json.dumps(subs, indent=1, ensure_ascii=False)).encode()
    want = [r for r in parse_stream(io.BytesIO(data), "json", source="f")]
    for chunk in (1, 2, 3, 5, 7, 64):
        monkeypatch.setattr(subs_mod, "JSON_CHUNK", chunk)
        got = list(parse_stream(io.BytesIO(data), "json", source="f"))
        assert got == want, chunk
    assert all(isinstance(r, Subscription) for r in want)


@pytest.mark.parametrize("data,message,line", [
    (b"", "empty file", None),
    (b"[1,\n2,\n]", "invalid JSON: Expecting value", 3),
    (b'[{"a": 1}\n{"b": 2}]', "invalid JSON: Expecting ',' delimiter", 2),
    (b'{"subscriptions": 5}', "expected a JSON array", None),
    (b'{"other": []}', "expected a JSON array", None),
    (b'"text"', "expected a JSON array", None),
    (b"[]\n[]", "invalid JSON: Extra data", 2),
    (b'[{"endpoint": "\xff"}]', "not valid UTF-8", 1),
    (b"\xff\xfe[\x00]\x00", "UTF-16", 1),
])
def test_malformed_json_is_one_input_error_with_its_line(data: bytes, message: str,
                                                        line: int | None) -> None:
    with pytest.raises(InputError) as info:
        list(parse_stream(io.BytesIO(data), "json", source="f.json"))
    assert message in info.value.message and info.value.line == line


def test_single_object_and_empty_shapes_still_accepted() -> None:
    sub = real_subscription()
    [one] = list(parse_stream(io.BytesIO(json.dumps(sub).encode()), "json", source="f"))
    assert isinstance(one, Subscription)
    assert list(parse_stream(io.BytesIO(b" [ ] "), "json", source="f")) == []
    assert list(parse_stream(io.BytesIO(b'{"subscriptions": []}'), "json", source="f")) == []


# --- NDJSON line limit --------------------------------------------------------------------


def test_ndjson_line_over_1_mib_is_rejected_with_its_line_number(tmp_path: Path) -> None:
    good = [json.dumps(real_subscription()).encode() for _ in range(2)]
    huge = b'{"endpoint": "' + b"x" * (subs_mod.MAX_RECORD_BYTES + 10) + b'"}'
    result = _import(tmp_path, "s.ndjson", b"\n".join([good[0], huge, good[1]]) + b"\n",
                     "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["added"] == 2
    assert "s.ndjson:2: line longer than 1 MiB" in result.stderr
    assert len(result.stderr) < 500  # the line itself is never echoed


def test_ndjson_long_line_is_never_read_whole() -> None:
    huge = b"[" + b"1," * (subs_mod.MAX_RECORD_BYTES * 4) + b"1]\n"
    stream = io.BytesIO(huge + json.dumps(real_subscription()).encode() + b"\n")
    reads: list[int] = []
    real_readline = stream.readline

    def readline(size: int = -1) -> bytes:
        line = real_readline(size)
        reads.append(len(line))
        return line

    stream.readline = readline  # type: ignore[method-assign]
    got = list(parse_stream(stream, "ndjson", source="f"))
    assert isinstance(got[0], Rejected) and got[0].location == "line 1"
    assert isinstance(got[1], Subscription)
    assert max(reads) <= subs_mod.MAX_RECORD_BYTES + 1


# --- CSV separators -------------------------------------------------------------------------


def _csv(subs: list[dict], delimiter: str, extra: dict[str, str] | None = None) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter)
    w.writerow(["endpoint", "p256dh", "auth", "tags", *(extra or {})])
    for s in subs:
        w.writerow([s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"], "a;b",
                    *(extra or {}).values()])
    return out.getvalue().encode()


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_separator_is_detected_from_the_header(delimiter: str) -> None:
    subs = [real_subscription() for _ in range(3)]
    got = list(parse_stream(io.BytesIO(_csv(subs, delimiter, {"city": "Lyon, FR"})), "csv",
                            source="f"))
    assert [r.endpoint for r in got] == [s["endpoint"] for s in subs]  # type: ignore[union-attr]
    assert all(isinstance(r, Subscription) and r.tags == ("a", "b")
               and r.attributes == {"city": "Lyon, FR"} for r in got)


def test_csv_delimiter_option(tmp_path: Path) -> None:
    subs = [real_subscription() for _ in range(2)]
    data = _csv(subs, "|")
    result = _import(tmp_path, "s.csv", data, "--json")
    assert result.exit_code == 2
    assert "s.csv:1: missing columns" in result.stderr
    assert "found no ',', ';' or tab separator" in result.stderr
    result = _import(tmp_path, "s.csv", data, "--delimiter", "|", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 2
    result = _import(tmp_path, "t.csv", _csv(subs, "\t"), "--delimiter", "tab", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["unchanged"] == 2


def test_csv_header_that_does_not_split_names_the_separator_it_found(tmp_path: Path) -> None:
    result = _import(tmp_path, "s.csv", b"endpoint;p256dh;authx\nx;y;z\n")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "missing column auth" in line and "found separator ';'" in line, line
    result = _import(tmp_path, "s.csv", b"endpoint;p256dh;auth\n", "--delimiter", ",")
    assert result.exit_code == 2 and "split on ','" in result.stderr
    result = _import(tmp_path, "s.csv", b"endpoint,p256dh,auth\n", "--delimiter", "ab")
    assert result.exit_code == 2 and "--delimiter: must be one character" in result.stderr


def test_csv_duplicate_column_in_a_40000_column_header_is_named() -> None:
    columns = ["endpoint", "p256dh", "auth", *(f"c{i}" for i in range(40_000)), "c39999"]
    data = (",".join(columns) + "\n").encode()
    with pytest.raises(InputError) as info:
        list(parse_stream(io.BytesIO(data), "csv", source="wide.csv"))
    assert info.value.message == "duplicate column 'c39999'" and info.value.line == 1
