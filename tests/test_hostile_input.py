"""Hostile input: whatever the files, campaigns and attributes hold, pushcli
answers with one line per problem and a documented exit code -- never a
traceback, never a half-done strict import, never a leaked secret.

Property tests start from valid files built with real P-256 keys and mutate
fields and bytes; a few fixed cases cover the classic attacks (alias bombs,
100k-deep JSON, oversized files, CSV formulas, template escapes).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import resource
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from pushcli.campaign import Renderer, load_campaign, parse_campaign
from pushcli.cli import app
from pushcli.errors import InputError
from pushcli.files import restore_cell
from pushcli.keys import generate_keys
from pushcli.pushservices import Outcome
from pushcli.report import neutralize_cell, write_csv_rows
from pushcli.store import DeliveryRecord, Store, subscriptions
from pushcli.subscriptions import Subscription, parse_stream, write_csv, write_json
from pushcli.subscriptions import formats as subs_mod  # the parsers read its limits
from pushcli.testing import PushServiceEmulator
from tests.support import real_subscription as _real

runner = CliRunner()
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


POOL = [
    _real(tags=["vip", "fr"], locale="fr-FR", attributes={"first_name": "Ana", "n": 3},
          user_id="u1"),
    _real("https://updates.push.services.mozilla.com/wpush/v2/gAAAAABm" + "x" * 40,
          attributes={"plan": "pro"}),
    _real("https://web.push.apple.com/QGuQyavXutnMH2tUjG-pq9oc1bLz0ZyK8a0d", tags=["ios"]),
    _real("https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB%2bXyZ%3d", locale="de"),
    *(_real() for _ in range(6)),
]

HOSTILE_STRINGS = [
    "", " ", "\x00", "\n", "\r\n", "\u2028", "\ufeff", "\ud7ff", "=cmd|' /C calc'!A0",
    "+1+1", "-2+3", "@SUM(1)", "{{ 7*7 }}", "{% for x in y %}", "{{ ''.__class__ }}",
    "https://10.0.0.1/x", "http://127.0.0.1/x", "https://fcm.googleapis.com@evil.com/",
    "https://fcm.googleapis.com./x", "file:///etc/passwd", "NaN", "Infinity", "-0", "1e309",
    "a" * 5000, "é" * 300, "\\", "\"", "'", ",", ";", "x;y;;z", "../../etc/passwd",
    "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
]
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(HOSTILE_STRINGS)
                | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
FIELDS = [("endpoint",), ("keys",), ("keys", "p256dh"), ("keys", "auth"), ("tags",),
          ("locale",), ("attributes",), ("attributes", "first_name"), ("user_id",), ("id",),
          ("expirationTime",), ("extra",)]


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A valid subscription, usually with a few fields deleted or replaced."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    rec = copy.deepcopy(draw(st.sampled_from(POOL)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(FIELDS))
        parent = rec
        for part in path[:-1]:
            nxt = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(nxt, dict):
                nxt = {}
                parent[part] = nxt
            parent = nxt
        if draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(json_values)
    return rec


def serialize(recs: list[Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(recs, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if fmt == "ndjson":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n"
                       for r in recs).encode("utf-8", "surrogatepass")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["endpoint", "p256dh", "auth", "tags", "locale", "user_id", "first_name"])
    for r in recs:
        r = r if isinstance(r, dict) else {"endpoint": r}
        keys = r.get("keys") if isinstance(r.get("keys"), dict) else {}
        attrs = r.get("attributes") if isinstance(r.get("attributes"), dict) else {}
        tags = r.get("tags")
        writer.writerow([
            r.get("endpoint", ""), keys.get("p256dh", ""), keys.get("auth", ""),
            ";".join(map(str, tags)) if isinstance(tags, list) else (tags or ""),
            r.get("locale") or "", r.get("user_id") or "", attrs.get("first_name", ""),
        ])
    return out.getvalue().encode("utf-8", "surrogatepass")


@st.composite
def subscription_files(draw: st.DrawFn, fmt: str) -> bytes:
    """Valid-looking files with mutated fields, then (sometimes) mutated bytes."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.binary(max_size=400))
    data = bytearray(serialize(draw(st.lists(records(), min_size=0, max_size=6)), fmt))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        chunk = draw(st.binary(min_size=1, max_size=4)
                     | st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\n", b'"', b",", b"[",
                                        b"{", b"\r", b"\xef\xbb\xbf", b"\xff\xfe"]))
        if kind == "replace":
            data[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = chunk
        elif kind == "delete":
            del data[pos:pos + len(chunk)]
        else:
            del data[pos:]
    return bytes(data)


# --- helpers --------------------------------------------------------------------------------


def _snapshot(db: Path) -> list[tuple[Any, ...]]:
    with Store.open(db) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(subscriptions).order_by(subscriptions.c.id))]


def _valid_endpoints(data: bytes, fmt: str) -> tuple[set[str], int] | None:
    """Endpoints of the valid records and the number of rejected ones (None: file error)."""
    try:
        got = list(parse_stream(io.BytesIO(data), fmt, source="f"))  # type: ignore[arg-type]
    except InputError:
        return None
    ok = {r.endpoint for r in got if isinstance(r, Subscription)}
    return ok, sum(1 for r in got if not isinstance(r, Subscription))


def _assert_clean_cli(result: Any) -> None:
    """No traceback, documented exit code, one line per problem on stderr."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert result.exit_code in (0, 1, 2), result.output
    lines = result.stderr.splitlines()
    for line in lines:
        assert line.startswith(("error: ", "rejected: ")), repr(line)
    if result.exit_code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pushcli-fuzz-") as d:
        yield Path(d)


def _seeded_db(fuzz_dir: Path, name: str) -> Path:
    db = fuzz_dir / f"{name}.db"
    if not db.exists():
        with Store.open(db) as store:
            store.import_subscriptions([("seed", s) for s in subs_mod.parse_stream(
                io.BytesIO(serialize(POOL[:2], "json")), "json", source="seed")])
    return db


# --- subscription files through the CLI -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
@FUZZ
@given(data=st.data())
def test_import_of_mutated_files_never_crashes_and_strict_is_all_or_nothing(
    fuzz_dir: Path, fmt: str, data: st.DataObject,
) -> None:
    content = data.draw(subscription_files(fmt), label="file")
    strict = data.draw(st.booleans(), label="strict")
    path = fuzz_dir / f"in-{uuid.uuid4().hex}.{fmt}"
    path.write_bytes(content)
    db = _seeded_db(fuzz_dir, f"import-{fmt}")
    before = _snapshot(db)
    expected = _valid_endpoints(content, fmt)
    args = ["--db", str(db), "subscribers", "import", str(path), "--json"]
    result = runner.invoke(app, args + (["--strict"] if strict else []))
    path.unlink()
    _assert_clean_cli(result)
    after = _snapshot(db)
    if result.exit_code in (0, 1):
        doc = json.loads(result.stdout)
        assert expected is not None
        valid, rejected = expected
        assert doc["rejected"] == rejected
        assert (result.exit_code == 1) == (rejected > 0)
        new = valid - {row[1] for row in before}
        if strict and rejected:
            assert after == before and doc["committed"] is False and doc["added"] == 0
        else:
            assert len(after) == len(before) + len(new) and doc["added"] == len(new)
            assert {row[1] for row in after} == {row[1] for row in before} | valid
    elif strict:  # a file-level error (exit 2) in the middle of a strict import
        assert after == before


@pytest.mark.parametrize("fmt", ["json", "ndjson", "csv"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600) | st.text(max_size=300).map(
    lambda t: t.encode("utf-8", "surrogatepass")))
def test_parse_stream_only_ever_raises_input_error(fmt: str, data: bytes) -> None:
    try:
        for rec in parse_stream(io.BytesIO(data), fmt, source="x"):  # type: ignore[arg-type]
            assert isinstance(rec, Subscription) or "\n" not in rec.reason
    except InputError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(records(), max_size=8), fmt=st.sampled_from(["json", "ndjson", "csv"]))
def test_store_round_trip_of_whatever_parses(tmp_path: Path, recs: list[Any], fmt: str) -> None:
    """What import accepts, export writes back and import reads as the same records."""
    try:
        data = serialize(recs, fmt)
    except UnicodeEncodeError:
        assume(False)
        return
    got = [r for r in parse_stream(io.BytesIO(data), fmt, source="x")  # type: ignore[arg-type]
           if isinstance(r, Subscription)] if _valid_endpoints(data, fmt) else []
    out = io.StringIO()
    if fmt == "csv":
        write_csv(got, out)
    else:
        write_json(got, out, ndjson=fmt == "ndjson")
    again = [r for r in parse_stream(io.BytesIO(out.getvalue().encode()), fmt, source="y")]  # type: ignore[arg-type]
    assert all(isinstance(r, Subscription) for r in again)
    assert {r.endpoint for r in again} == {r.endpoint for r in got}


# --- fixed nasty files -------------------------------------------------------------------------


def _import(tmp_path: Path, name: str, data: bytes, *extra: str) -> Any:
    path = tmp_path / name
    path.write_bytes(data)
    result = runner.invoke(app, ["--db", str(tmp_path / "s.db"), "subscribers", "import",
                                 str(path), *extra])
    _assert_clean_cli(result)
    return result


def test_json_nested_100k_deep_is_one_line_exit_2(tmp_path: Path) -> None:
    started = time.process_time()
    result = _import(tmp_path, "deep.json", b"[" * 100_000 + b"]" * 100_000)
    assert result.exit_code == 2 and "nested too deeply" in result.stderr
    deep_attr = (b'[{"endpoint": "https://fcm.googleapis.com/x", "attributes": {"a": '
                 + b"[" * 100_000 + b"]" * 100_000 + b"}}]")
    result = _import(tmp_path, "deep2.json", deep_attr)
    assert result.exit_code == 2
    assert time.process_time() - started < 10


def test_ndjson_deep_line_is_one_rejected_line(tmp_path: Path) -> None:
    good = json.dumps(POOL[4]).encode()
    result = _import(tmp_path, "deep.ndjson", good + b"\n" + b"[" * 100_000 + b"\n" + b"{" * 50_000
                     + b"\n", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["added"] == 1
    assert len(result.stderr.splitlines()) == 2


def test_number_with_too_many_digits_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # Python refuses to read an int of over 4300 digits with a plain ValueError
    long = b'{"endpoint": "https://fcm.googleapis.com/x", "expirationTime": ' + b"1" * 5000 + b"}"
    good = json.dumps(POOL[4]).encode()
    result = _import(tmp_path, "long.ndjson", good + b"\n" + long + b"\n", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["added"] == 1
    assert "long.ndjson:2: invalid JSON: a number with too many digits" in result.stderr
    result = _import(tmp_path, "long.json", b"[" + long + b"]")
    assert result.exit_code == 2 and "a number with too many digits" in result.stderr


def test_json_record_over_the_limit_is_refused_without_holding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JSON is streamed, so the bound is per record (an NDJSON line's), not per file."""
    monkeypatch.setattr(subs_mod, "MAX_RECORD_BYTES", 2000)
    monkeypatch.setattr(subs_mod, "JSON_CHUNK", 256)
    huge = dict(POOL[0], attributes={"bio": "x" * 5000})
    result = _import(tmp_path, "big.json", serialize([POOL[4], huge, POOL[5]], "json"))
    assert result.exit_code == 2 and "big.json:1: record [1] is longer than" in result.stderr


def test_non_utf8_bytes(tmp_path: Path) -> None:
    good = serialize([POOL[4]], "ndjson")
    result = _import(tmp_path, "bad.json", b'[{"endpoint": "https://fcm.googleapis.com/\xff"}]')
    assert result.exit_code == 2 and "UTF-8" in result.stderr
    result = _import(tmp_path, "bad.ndjson", good + b'{"endpoint": "\xc3\x28"}\n', "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["added"] == 1
    assert "line 2" in result.stderr or ":2:" in result.stderr
    result = _import(tmp_path, "utf16.ndjson", "[]".encode("utf-16"))
    assert result.exit_code == 2 and "UTF-16" in result.stderr
    csv_data = serialize([POOL[5], POOL[6]], "csv").replace(b"\n", b"\xfe\xfe\n", 2)
    result = _import(tmp_path, "bad.csv", csv_data)
    assert result.exit_code in (1, 2)
    result = _import(tmp_path, "bad2.csv", b"\xff\xfe\x00e\x00n\x00d\x00")
    assert result.exit_code == 2


def test_csv_oversized_field_and_unbalanced_quotes(tmp_path: Path) -> None:
    rows = serialize([POOL[5], POOL[6]], "csv").decode().splitlines()
    huge = rows[0] + "\n" + rows[1] + "\n" + "x" * 200_000 + ",a,b,,,,\n" + rows[2] + "\n"
    result = _import(tmp_path, "huge.csv", huge.encode(), "--json")
    assert result.exit_code == 1
    quote = rows[0] + "\n" + '"' + rows[1] + "\n" + rows[2] + "\n"
    result = _import(tmp_path, "quote.csv", quote.encode())
    assert result.exit_code in (1, 2)


# --- campaign YAML --------------------------------------------------------------------------

CAMPAIGN = """\
name: spring-sale
notification:
  title: "Hello {{ first_name | default('you') }}"
  body: Spring sale, 20% off
  url: https://shop.example.com/sale?src=push
  icon: https://shop.example.com/icon.png
  tag: sale
  actions:
    - action: shop
      title: Shop now
      url: https://shop.example.com/
audience:
  tags: [vip]
  where: {plan: pro}
delivery:
  ttl: 3600
  urgency: high
  topic: spring
locales:
  fr:
    title: Bonjour
vapid:
  subject: mailto:ops@shop.example.com
"""
YAML_BITS = [b"&a ", b"*a", b"!!python/object/apply:os.system ['id']", b"!!binary", b"<<: ",
             b"{", b"[", b"\t", b"\x00", b"\xff", b"---\n", b"...\n", b"%YAML 1.1\n", b": ",
             b"? ", b"- ", b"|\n", b">-\n", b"\"", b"'", b"#", b"!", b"\\u0000", b"1e999",
             b".nan", b"-.inf", b"0x7fffffffffffffffff", b"~", b"\n  ", b"{{ ''.__class__ }}",
             b"{% include 'x' %}", b"\xef\xbb\xbf"]


@st.composite
def campaign_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(CAMPAIGN.encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        chunk = draw(st.sampled_from(YAML_BITS) | st.binary(min_size=1, max_size=3))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace":
            data[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = chunk
        else:
            del data[pos:pos + draw(st.integers(1, 20))]
    return bytes(data)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=campaign_bytes())
def test_mutated_campaign_yaml_raises_only_input_error(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "campaign.yml"
    path.write_bytes(data)
    try:
        campaign = load_campaign(path)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    renderer = Renderer(campaign)
    with contextlib.suppress(InputError):
        renderer.render("fr-CA", {"first_name": "{{ 7*7 }}"})


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_yaml_text_raises_only_input_error(text: str) -> None:
    try:
        parse_campaign(text, source="c.yml")
    except InputError as exc:
        assert "\n" not in str(exc)


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for i in range(1, levels + 1):
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "data", "name"])
def test_billion_laughs_is_refused_quickly(where: str) -> None:
    bomb = _billion_laughs()
    if where == "top":
        text = bomb
    elif where == "data":
        text = ("name: x\nnotification:\n  title: t\n  body: b\n  url: https://e.com/\n"
                "  data:\n" + "".join(f"    {line}\n" for line in bomb.splitlines()))
    else:
        text = bomb + "name: *j\n"
    started = time.process_time()
    with pytest.raises(InputError):
        parse_campaign(text, source="c.yml")
    assert time.process_time() - started < 1.0


def test_oversized_and_deep_campaign_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_bytes(CAMPAIGN.encode() + b"#" + b"x" * (2 << 20) + b"\n")
    with pytest.raises(InputError, match="larger than"):
        load_campaign(big)
    deep = tmp_path / "deep.yml"
    deep.write_text(CAMPAIGN + "extra: " + "[" * 100_000 + "]" * 100_000 + "\n")
    started = time.process_time()
    with pytest.raises(InputError):
        load_campaign(deep)
    assert time.process_time() - started < 5
    flow = tmp_path / "flow.yml"
    flow.write_text(CAMPAIGN.replace("  data: {}", "") + "x: " + "{a: " * 10_000 + "1"
                    + "}" * 10_000 + "\n")
    with pytest.raises(InputError):
        load_campaign(flow)
    bad = tmp_path / "bad.yml"
    bad.write_bytes(CAMPAIGN.encode().replace(b"Spring", b"Spr\xffing"))
    with pytest.raises(InputError, match="UTF-8"):
        load_campaign(bad)
    result = runner.invoke(app, ["--db", str(tmp_path / "s.db"), "send", str(big)])
    _assert_clean_cli(result)
    assert result.exit_code == 2


# --- templates ------------------------------------------------------------------------------


def _campaign_with(body: str) -> str:
    return ("name: t\nnotification:\n  title: Hi\n  body: " + json.dumps(body)
            + "\n  url: https://shop.example.com/\n")


@pytest.mark.parametrize("value", ["{{ 7*7 }}", "{% for i in range(9) %}x{% endfor %}",
                                   "{{ ''.__class__.__mro__ }}", "{{ config }}", "${7*7}",
                                   "<script>alert(1)</script>", "=cmd|' /C calc'!A0"])
def test_attribute_values_render_literally(value: str) -> None:
    campaign = parse_campaign(_campaign_with("Hello {{ first_name }}!"), source="c.yml")
    payload = json.loads(Renderer(campaign).render(None, {"first_name": value}))
    assert payload["notification"]["body"] == f"Hello {value}!"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''|attr('__class__') }}", "{{ x['__class__'] }}", "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}", "{{ ''.format.__self__ }}",
    "{{ (''|attr('\\x5f\\x5fclass\\x5f\\x5f')) }}", "{% include '/etc/passwd' %}",
    "{% extends 'base' %}", "{% import 'x' as y %}", "{% from 'x' import y %}",
    "{{ self._TemplateReference__context }}", "{{ x.__dict__ }}",
])
def test_template_escapes_are_refused_at_load(template: str) -> None:
    with pytest.raises(InputError, match="not allowed|unsafe"):
        parse_campaign(_campaign_with(template), source="c.yml")


@pytest.mark.parametrize("template", ["{{ x|attr(y) }}", "{{ x[y] }}"])
def test_dynamic_attribute_escapes_are_refused_at_render(template: str) -> None:
    campaign = parse_campaign(_campaign_with(template), source="c.yml")
    with pytest.raises(InputError, match="unsafe"):
        Renderer(campaign).render(None, {"x": "", "y": "__class__"})


_BOMB_SCRIPT = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pushcli.campaign import Renderer, parse_campaign
from pushcli.errors import InputError
started = time.process_time()  # CPU seconds: wall time depends on the machine's load
try:
    Renderer(parse_campaign(sys.argv[1], source="c.yml")).render(None, {})
    print("rendered")
except InputError as exc:
    print("refused", time.process_time() - started, str(exc)[:80])
except MemoryError:
    print("memoryerror")
"""


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x'|center(300000000) }}",
    "{{ lipsum(1000000) }}",
    "{{ '%0300000000d'|format(1) }}",
])
def test_template_cpu_and_memory_bombs_fail_fast(template: str) -> None:
    """A campaign template must not stall or exhaust a send (load or first render)."""
    text = _campaign_with(template)
    try:
        proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, text], capture_output=True,
                              text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(
                                  resource.RLIMIT_CPU, (6, 6)))
    except subprocess.TimeoutExpired:  # a failure deadline: the CPU limit ends it long before
        pytest.fail(f"template {template!r} did not finish")
    out = proc.stdout.strip()
    assert out.startswith("refused"), (out, proc.stderr[-500:])
    assert float(out.split()[1]) < 1.0, out


_GROWTH_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pushcli.campaign import Renderer, parse_campaign
from pushcli.errors import InputError
try:
    Renderer(parse_campaign(sys.argv[1], source="c.yml")).render(None, {"n": 5, "s": "x"})
    print("rendered")
except InputError as exc:
    print("refused", exc)
except MemoryError:
    print("memoryerror")
"""


@pytest.mark.parametrize("template", [
    # the three from the report: 27 s and 9.5 GB, 2.5 GB, never ends
    "{{ ('x'*99999)|replace('x','x'*99999)|length }}",
    "{{ ([1]*50000)|join(','*50000) }}",
    "{{ (((10**128)**128)**128)**128 }}",
    # each growing operation on its own, starting from values a template may build
    "{{ ('x'*9000)|replace('x','x'*9000)|length }}",
    "{{ ('x'*9000).replace('x','x'*9000)|length }}",
    "{{ ([1]*5000)|join(','*5000)|length }}",
    "{{ (','*5000).join([s]*5000)|length }}",
    "{% set a = 'x'*9000 %}{% set a = a ~ a %}{% set a = a ~ a %}{{ a|length }}",
    "{% set a = 'x'*9000 %}{{ (a + a + a)|length }}",
    "{% set a = 'x'*9000 %}{{ [a]*9000 }}",
    "{% set a = 'x'*9000 %}{{ a }}{{ a }}",
    "{{ s|center(100000000) }}", "{{ s.ljust(100000000) }}", "{{ s.zfill(100000000) }}",
    "{{ (s*9000)|indent(9000) }}", "{{ (s*9000)|wordwrap(1, wrapstring=s*9000) }}",
    "{{ ([1]*9)|batch(100000000, 0)|list }}", "{{ [[1]*9000]*9|sum(start=[]) }}",
    "{{ n|round(-100000000) }}",
    "{% set a = 2**128 %}{% set a = a*a %}{% set a = a*a %}{% set a = a*a %}{% set a = a*a %}"
    "{% set a = a*a %}{{ a*a }}",
    "{{ n ** 100000000 }}",
])
def test_template_growth_is_bounded(template: str) -> None:
    """Every operation that can grow a value is measured before it allocates, so a render
    ends (refused, naming the field) instead of taking minutes and gigabytes."""
    try:
        proc = subprocess.run([sys.executable, "-c", _GROWTH_SCRIPT, _campaign_with(template)],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"template {template!r} did not finish")  # a hang guard, not a timing test
    out = proc.stdout.strip()
    assert out.startswith("refused c.yml:4: notification.body: "), (out, proc.stderr[-500:])
    assert "too large" in out


@pytest.mark.parametrize("template", [
    "{{ 'a b'.split()|join('-')|upper }}", "{{ n * 3 }}{{ n ** 3 }}{{ s ~ n }}{{ s + s }}",
    "{{ s|replace('x', 'yz')|center(9)|trim }}", "{{ {'k': s}.get('k')|wordwrap(4) }}",
    "{{ (2 ** 128)|string|length }}", "{{ [1, 2]|sum }}{{ (s*3)|indent(2) }}",
])
def test_ordinary_template_operations_still_render(template: str) -> None:
    campaign = parse_campaign(_campaign_with(template), source="c.yml")
    assert json.loads(Renderer(campaign).render(None, {"n": 5, "s": "x"}))["notification"]["body"]


@pytest.mark.parametrize("template", [
    "{{ '{0.__class__}'|attr('format')(s) }}", "{{ s|attr('format_map') }}",
    "{{ s.format(s) }}", "{{ '{:>999999999}'.format(1) }}", "{{ s.expandtabs(100000000) }}",
])
def test_str_format_is_refused_at_load(template: str) -> None:
    """CVE-2025-27516 reached str.format through |attr('format'); format also pads unbounded."""
    with pytest.raises(InputError, match="'(format|format_map|expandtabs)' is not allowed"):
        parse_campaign(_campaign_with(template), source="c.yml")


def test_str_format_through_dynamic_attr_is_refused_at_render() -> None:
    campaign = parse_campaign(_campaign_with("{{ ('{0.__class__}'|attr(name))(s) }}"),
                              source="c.yml")
    with pytest.raises(InputError, match="c.yml:4: notification.body: unsafe template"):
        Renderer(campaign).render(None, {"s": "x", "name": "format"})


@pytest.mark.parametrize("template", ["{% set a %}{{ s }}{{ s }}{% endset %}{{ a }}",
                                      "{% filter upper %}{{ s }}{% endfilter %}",
                                      "{% block b %}{{ s }}{% endblock %}{{ self.b() }}"])
def test_template_blocks_are_refused_at_load(template: str) -> None:
    """Their bodies are joined before anything can measure them."""
    with pytest.raises(InputError, match="blocks are not allowed"):
        parse_campaign(_campaign_with(template), source="c.yml")


def test_calls_and_mutation_outside_text_handling_are_refused() -> None:
    for template, pattern in (("{{ s.encode().decode().upper() }}", None),
                              ("{% set l = [1] %}{{ l.append(2) }}", "unsafe"),
                              ("{{ (1).to_bytes(100000000, 'big') }}", "not allowed")):
        campaign = parse_campaign(_campaign_with(template), source="c.yml")
        if pattern is None:
            Renderer(campaign).render(None, {"s": "x"})
            continue
        with pytest.raises(InputError, match=pattern):
            Renderer(campaign).render(None, {"s": "x"})


def test_send_dry_run_and_doctor_refuse_a_growing_template(tmp_path: Path) -> None:
    """Refused before anything is sent: exit 2 naming the field (doctor: its campaign
    check fails, exit 1 as for every doctor finding)."""
    generate_keys(tmp_path)
    db = tmp_path / "s.db"
    (tmp_path / "subs.json").write_text(json.dumps(POOL[:3]))
    result = runner.invoke(app, ["--db", str(db), "subscribers", "import",
                                 str(tmp_path / "subs.json")])
    assert result.exit_code == 0, result.output
    campaign = tmp_path / "c.yml"
    campaign.write_text(_campaign_with("{{ ('x'*9000)|replace('x','x'*9000)|length }}")
                        + "vapid:\n  subject: mailto:ops@shop.example.com\n")
    key = ["--key", str(tmp_path / "vapid_private.pem")]
    for argv in (["send", str(campaign), "--dry-run", *key], ["send", str(campaign), *key]):
        result = runner.invoke(app, ["--db", str(db), *argv])
        _assert_clean_cli(result)
        assert result.exit_code == 2, result.output
        assert f"{campaign}:4: notification.body: " in result.stderr
        assert "replace builds a value too large" in result.stderr
    result = runner.invoke(app, ["--db", str(db), "doctor", str(campaign), *key, "--json"])
    assert result.exit_code == 1, result.output
    failed = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["payload size"]
    assert "notification.body: unsafe template: replace builds" in failed[0]["detail"]


# --- CSV injection --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(value=st.text(max_size=30) | st.sampled_from(
    ["=1+1", "+1", "-1", "@x", "\t=1", "\r=1", "=cmd|' /C calc'!A0", "'=1", "''+1", "'a"]))
def test_neutralize_cell(value: str) -> None:
    out = neutralize_cell(value)
    if value.lstrip("'")[:1] in ("=", "+", "-", "@", "\t", "\r"):
        assert out == "'" + value  # also after quotes of its own, so restore_cell is exact
    else:
        assert out == value
    assert restore_cell(out) == value
    assert neutralize_cell(42) == 42 and neutralize_cell(None) is None


def test_report_csv_neutralises_formula_reasons(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    reasons = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)",
               "\t=1+1", "HTTP 400: fine"]
    with Store.open(db) as store:
        store.import_subscriptions([("t", s) for s in parse_stream(
            io.BytesIO(serialize(POOL[:len(reasons)], "json")), "json", source="t")])
        info = store.start_campaign("inj", {})
        ids = [s.id for s in store.iter_subscriptions()]
        store.record(info.id, [
            DeliveryRecord(subscription_id=i, outcome=Outcome.REJECTED, service="=HYPERLINK(1)",
                           status_code=400, reason=r)
            for i, r in zip(ids, reasons, strict=True)])
        out = io.StringIO()
        assert write_csv_rows(store, info.id, out) == len(reasons)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    got = [r["reason"] for r in rows]
    assert got[:-1] == ["'" + r for r in reasons[:-1]] and got[-1] == "HTTP 400: fine"
    assert all(r["service"] == "'=HYPERLINK(1)" for r in rows)
    # the same through `pushcli report --report x.csv`
    result = runner.invoke(app, ["--db", str(db), "report", "inj", "--report",
                                 str(tmp_path / "r.csv"), "--json"])
    _assert_clean_cli(result)
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="", encoding="utf-8")))
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row


def test_report_csv_cell_with_carriage_return_stays_one_cell(tmp_path: Path) -> None:
    """A bare CR in an unquoted cell ends the row for spreadsheets (and Python's csv),
    so ``'x\r=1+1`` would reach them as a new row starting with a formula."""
    with Store.open(tmp_path / "s.db") as store:
        store.import_subscriptions([("t", s) for s in parse_stream(
            io.BytesIO(serialize(POOL[:2], "json")), "json", source="t")])
        info = store.start_campaign("cr", {})
        ids = [s.id for s in store.iter_subscriptions()]
        store.record(info.id, [
            DeliveryRecord(ids[0], Outcome.FAILED, "fcm", None, "internal error: x\r=1+1"),
            DeliveryRecord(ids[1], Outcome.FAILED, "fcm", None, "\r=2+2\n@SUM(A1)"),
        ])
        out = io.StringIO()
        write_csv_rows(store, info.id, out)
    text = out.getvalue()
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        pytest.fail(f"report CSV is not parseable ({exc}): {text!r}")
    assert len(rows) == 3, rows
    assert [r[5] for r in rows[1:]] == ["internal error: x\r=1+1", "'\r=2+2\n@SUM(A1)"]


# --- secrets --------------------------------------------------------------------------------


def _campaign_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.yml"
    path.write_text("name: secrets\nnotification:\n  title: Hi\n  body: There\n"
                    "  url: https://shop.example.com/\nvapid:\n"
                    "  subject: mailto:ops@shop.example.com\n")
    return path


def test_send_output_and_reports_hold_no_secrets_and_files_are_private(tmp_path: Path) -> None:
    info = generate_keys(tmp_path)
    key_path = tmp_path / "vapid_private.pem"
    pem = key_path.read_text()
    pem_body = "".join(line for line in pem.splitlines() if "-----" not in line)
    db = tmp_path / "s.db"
    env = {"PUSHCLI_ALLOW_HOSTS": "127.0.0.1", "NO_COLOR": "1"}
    with PushServiceEmulator(port=0, seed=5) as emu:
        subs = emu.create_subscriptions(12, info.application_server_key)
        (tmp_path / "subs.json").write_text(json.dumps(subs))
        result = runner.invoke(app, ["--db", str(db), "subscribers", "import",
                                     str(tmp_path / "subs.json"), "--json"], env=env)
        assert result.exit_code == 0, result.output
        emu.add_fault(500, client_hash=subs[0]["endpoint"])
        emu.add_fault(400, client_hash=subs[1]["endpoint"])
        emu.add_fault(403, client_hash=subs[2]["endpoint"])
        emu.expire(subs[3]["endpoint"])
        args = ["--db", str(db), "send", str(_campaign_file(tmp_path)), "--key", str(key_path),
                "--json", "--timeout", "5", "--report", str(tmp_path / "x.json"),
                "--report", str(tmp_path / "x.csv")]
        result = runner.invoke(app, args, env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        assert report["sent"] == 8 and report["failed"] == 1 and report["rejected"] == 1
        assert report["auth"] == 1 and report["expired"] == 1
    texts = {
        "stdout": result.stdout, "stderr": result.stderr,
        "x.json": (tmp_path / "x.json").read_text(), "x.csv": (tmp_path / "x.csv").read_text(),
    }
    secrets_ = [pem_body, pem_body[:40], pem_body[-40:]]
    for s in subs:
        secrets_.append(s["keys"]["auth"])
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"secret found in {where}"
        assert "PRIVATE KEY" not in text
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_world_readable_key_makes_send_exit_2(tmp_path: Path) -> None:
    generate_keys(tmp_path)
    key_path = tmp_path / "vapid_private.pem"
    db = tmp_path / "s.db"
    Store.open(db).close()
    key_path.chmod(0o644)
    result = runner.invoke(app, ["--db", str(db), "send", str(_campaign_file(tmp_path)),
                                 "--key", str(key_path), "--json"])
    _assert_clean_cli(result)
    assert result.exit_code == 2
    assert "chmod 600" in result.stderr
    assert result.stdout == ""
