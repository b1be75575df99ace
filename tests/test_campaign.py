"""Campaign loading, validation messages and payload rendering."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pushcli.campaign import (
    MAX_PLAINTEXT,
    Audience,
    Campaign,
    Renderer,
    RenderError,
    check_payload_size,
    load_campaign,
    parse_campaign,
    resolve_locale,
)
from pushcli.errors import InputError, PayloadTooLarge

SAMPLES = Path(__file__).resolve().parent.parent / "sample_campaigns"

HEAD = """\
name: test-campaign
notification:
  title: Hello
  body: World
  url: https://shop.example.com/
"""


def error_of(text: str, source: str = "campaign.yml") -> str:
    with pytest.raises(InputError) as info:
        parse_campaign(text, source=source)
    return str(info.value)


def render_json(renderer: Renderer, locale: str | None = None, **attrs: object) -> dict:
    return json.loads(renderer.render(locale, attrs))


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", ["broadcast", "localized", "actions"])
def test_samples_load_and_render(name: str) -> None:
    path = SAMPLES / f"{name}.yml"
    campaign = load_campaign(path)
    assert campaign.source == str(path)
    payload = render_json(Renderer(campaign))
    assert payload["web_push"] == 8030
    assert payload["notification"]["navigate"].startswith("https://")


def test_broadcast_sample() -> None:
    campaign = load_campaign(SAMPLES / "broadcast.yml")
    assert campaign.notification.icon
    assert campaign.delivery.topic
    assert Renderer(campaign).placeholders == frozenset()


def test_localized_sample() -> None:
    campaign = load_campaign(SAMPLES / "localized.yml")
    assert set(campaign.locales) == {"fr", "de"}
    renderer = Renderer(campaign)
    assert renderer.placeholders == {"first_name", "city"}
    fr = render_json(renderer, "fr-FR", first_name="Zoé", city="Lyon")
    assert fr["notification"]["title"] == "Soldes de printemps, Zoé !"
    assert "Lyon" in fr["notification"]["body"]
    assert fr["notification"]["lang"] == "fr"
    default = render_json(renderer, None)
    assert default["notification"]["title"] == "Spring sale, friend!"


def test_actions_sample() -> None:
    campaign = load_campaign(SAMPLES / "actions.yml")
    n = render_json(Renderer(campaign))
    assert [a["action"] for a in n["notification"]["actions"]] == ["directions", "deliver"]
    assert all(a["navigate"].startswith("https://") for a in n["notification"]["actions"])
    assert n["notification"]["require_interaction"] is True
    assert n["notification"]["tag"]
    assert n["notification"]["image"].startswith("https://")
    assert isinstance(n["notification"]["data"], dict)
    assert n["app_badge"] == 1


def test_defaults() -> None:
    campaign = parse_campaign(HEAD)
    assert campaign.delivery.ttl == 86400
    assert campaign.delivery.urgency is None
    assert campaign.delivery.concurrency == 1000  # the ceiling of the adaptive limit
    assert campaign.delivery.rate_limits == {}
    assert campaign.audience.matches([], {})
    assert campaign.locales == {}
    assert campaign.source == "<campaign>"


def test_vapid_key_relative_to_campaign_dir(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(HEAD + "vapid:\n  private_key: keys/vapid.pem\n  subject: mailto:a@b.example\n")
    campaign = load_campaign(path)
    assert campaign.vapid.private_key == str((tmp_path / "keys" / "vapid.pem").resolve())


def test_models_are_frozen() -> None:
    campaign = parse_campaign(HEAD)
    with pytest.raises(ValueError):
        campaign.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- error messages


def test_unknown_key_suggests_close_match() -> None:
    text = "name: x\nnotification:\n  tittle: hi\n  body: b\n  url: https://a.example.com/\n"
    assert error_of(text) == (
        "campaign.yml:3: notification.tittle: unknown field (did you mean 'title'?)"
    )


def test_unknown_top_level_key_without_match() -> None:
    assert error_of(HEAD + "zzzz: 1\n") == "campaign.yml:6: zzzz: unknown field"


def test_source_is_not_a_yaml_field() -> None:
    assert error_of(HEAD + "source: x\n") == "campaign.yml:6: source: unknown field"


def test_missing_title_points_at_parent() -> None:
    text = "name: x\nnotification:\n  body: b\n  url: https://a.example.com/\n"
    assert error_of(text) == "campaign.yml:2: notification.title: is required"


def test_missing_notification() -> None:
    assert error_of("name: x\n") == "campaign.yml:1: notification: is required"


def test_non_https_url() -> None:
    text = HEAD.replace("https://shop", "http://shop")
    assert error_of(text) == "campaign.yml:5: notification.url: must be an absolute https URL"


@pytest.mark.parametrize("url", ["shop.example.com/x", "https://", "https:///path", "/sale"])
def test_relative_urls_refused(url: str) -> None:
    text = HEAD.replace("https://shop.example.com/", url)
    assert error_of(text).endswith("notification.url: must be an absolute https URL")


def test_action_url_location() -> None:
    text = HEAD + "  actions:\n    - action: a\n      title: A\n      url: ftp://x.example.com\n"
    assert error_of(text) == (
        "campaign.yml:9: notification.actions[0].url: must be an absolute https URL"
    )


def test_ttl_range() -> None:
    assert error_of(HEAD + "delivery:\n  ttl: 2419201\n") == (
        "campaign.yml:7: delivery.ttl: must be between 0 and 2419200 seconds"
    )
    assert error_of(HEAD + "delivery:\n  ttl: -1\n").endswith(
        "must be between 0 and 2419200 seconds"
    )
    assert parse_campaign(HEAD + "delivery:\n  ttl: 0\n").delivery.ttl == 0


def test_ttl_must_be_integer() -> None:
    assert error_of(HEAD + "delivery:\n  ttl: '60'\n") == (
        "campaign.yml:7: delivery.ttl: must be an integer"
    )


def test_bad_urgency() -> None:
    assert error_of(HEAD + "delivery:\n  urgency: urgent\n") == (
        "campaign.yml:7: delivery.urgency: must be one of: very-low, low, normal, high"
    )


def test_topic_too_long() -> None:
    assert error_of(HEAD + "delivery:\n  topic: " + "a" * 33 + "\n") == (
        "campaign.yml:7: delivery.topic: must be at most 32 characters (has 33)"
    )
    assert parse_campaign(HEAD + "delivery:\n  topic: " + "a" * 32 + "\n").delivery.topic


def test_topic_bad_characters() -> None:
    assert error_of(HEAD + "delivery:\n  topic: spring.sale\n") == (
        "campaign.yml:7: delivery.topic: must use only the base64url characters A-Z a-z 0-9 - _"
    )


def test_renotify_without_tag() -> None:
    assert error_of(HEAD + "  renotify: true\n") == (
        "campaign.yml:6: notification.renotify: requires a tag"
    )
    assert parse_campaign(HEAD + "  renotify: true\n  tag: t\n").notification.renotify


def test_too_many_actions() -> None:
    actions = ",".join(f"{{action: a{i}, title: A}}" for i in range(5))
    assert error_of(HEAD + f"  actions: [{actions}]\n") == (
        "campaign.yml:6: notification.actions: at most 4 actions are allowed (has 5)"
    )


def test_unquoted_scalars_kept_as_written_where_text_expected() -> None:
    text = HEAD.replace("title: Hello", "title: 2026") + "  tag: 0x1F\n  lang: no\n"
    n = parse_campaign(text).notification
    assert (n.title, n.tag, n.lang) == ("2026", "0x1F", "no")


def test_mapping_where_string_expected() -> None:
    assert error_of(HEAD.replace("title: Hello", "title: {a: 1}")) == (
        "campaign.yml:3: notification.title: must be a string"
    )


def test_empty_title() -> None:
    assert error_of(HEAD.replace("title: Hello", "title: '  '")) == (
        "campaign.yml:3: notification.title: must not be empty"
    )


def test_duplicate_key() -> None:
    assert error_of("name: a\nname: b\n") == "campaign.yml:2: name: duplicate key"


def test_first_error_in_document_order() -> None:
    text = HEAD.replace("https://shop", "http://shop") + "delivery:\n  ttl: -5\n"
    assert error_of(text).startswith("campaign.yml:5: notification.url:")


def test_bad_locale_override_key() -> None:
    text = HEAD + "locales:\n  fr:\n    titel: Bonjour\n"
    assert error_of(text) == (
        "campaign.yml:8: locales.fr.titel: unknown field (did you mean 'title'?)"
    )


def test_yaml_syntax_error() -> None:
    text = "name: x\nnotification:\n  title: [oops\n  body: b\n"
    assert error_of(text) == ("campaign.yml:4: YAML syntax error: expected ',' or ']', but got ':'")


def test_alias_bomb_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    start = time.perf_counter()
    message = error_of("\n".join(lines) + "\n")
    assert time.perf_counter() - start < 0.5
    assert message == (
        "campaign.yml:1: YAML anchors and aliases (&name, *name) are not allowed in campaign files"
    )


def test_deep_nesting_refused() -> None:
    assert "nesting deeper than" in error_of(HEAD + "  data: " + "[" * 200 + "]" * 200 + "\n")


def test_top_level_not_mapping() -> None:
    assert error_of("- a\n- b\n") == (
        "campaign.yml:1: top level must be a mapping (name:, notification:, ...)"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n"])
def test_empty_file(text: str) -> None:
    assert error_of(text) == "campaign.yml: file is empty"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(InputError) as info:
        load_campaign(path)
    assert str(info.value) == f"{path}: no such file"
    assert info.value.line is None


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"name: x\nnotification:\n  title: caf\xe9\n")
    with pytest.raises(InputError) as info:
        load_campaign(path)
    assert str(info.value) == f"{path}:3: not valid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    path.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(InputError, match="larger than 1 MiB"):
        load_campaign(path)


def test_template_syntax_error() -> None:
    assert error_of(HEAD.replace("body: World", "body: '{{ oops'")) == (
        "campaign.yml:4: notification.body: template syntax error: unexpected end of template, "
        "expected 'end of print statement'"
    )


def test_placeholder_in_static_url_refused() -> None:
    text = HEAD + "  icon: 'https://cdn.example.com/{{ x }}.png'\n"
    assert error_of(text) == (
        "campaign.yml:6: notification.icon: placeholders are only allowed in title, body and url"
    )


def test_templated_url_with_wrong_scheme_refused_at_load() -> None:
    text = HEAD.replace("url: https://shop.example.com/", "url: 'http://{{ host }}/'")
    assert error_of(text).endswith("notification.url: must be an absolute https URL")


# --------------------------------------------------------------------------- sandbox


def test_sandbox_escape_refused_at_load() -> None:
    text = HEAD.replace("title: Hello", "title: \"{{ ''.__class__.__mro__ }}\"")
    assert error_of(text) == (
        "campaign.yml:3: notification.title: unsafe template: "
        "access to attribute '__class__' is not allowed"
    )


def test_sandbox_escape_via_attr_filter_refused() -> None:
    text = HEAD.replace("title: Hello", "title: \"{{ x | attr('__class__') }}\"")
    assert "unsafe template" in error_of(text)


def test_sandbox_refuses_at_render_when_dynamic() -> None:
    text = HEAD.replace("title: Hello", 'title: "{{ x | attr(name) }}"')
    renderer = Renderer(parse_campaign(text))
    with pytest.raises(InputError, match="unsafe template"):
        renderer.render(None, {"x": "", "name": "__class__"})


def test_huge_repetition_refused_at_render() -> None:
    renderer = Renderer(parse_campaign(HEAD.replace("body: World", "body: \"{{ 'x' * n }}\"")))
    with pytest.raises(RenderError, match="too large"):
        renderer.render(None, {"n": 10**9})


def test_attribute_values_are_not_templates() -> None:
    renderer = Renderer(parse_campaign(HEAD.replace("title: Hello", "title: 'Hi {{ name }}'")))
    assert render_json(renderer, name="{{ 7*7 }}")["notification"]["title"] == "Hi {{ 7*7 }}"


# --------------------------------------------------------------------------- rendering

PERSONAL = """\
name: personal
notification:
  title: "Hi {{ first_name | default('friend') }}"
  body: "News for {{ city }}"
  url: "https://shop.example.com/{{ city | default('all') | urlencode }}"
locales:
  fr:
    title: "Salut {{ first_name | default('mon ami') }}"
  fr-CA:
    title: "Allô {{ first_name | default('toi') }}"
"""


def test_placeholders_and_default_filter() -> None:
    renderer = Renderer(parse_campaign(PERSONAL))
    assert renderer.placeholders == {"first_name", "city"}
    n = render_json(renderer, city="Paris")["notification"]
    assert n["title"] == "Hi friend"
    assert n["body"] == "News for Paris"
    assert n["navigate"] == ("https://shop.example.com/Paris?utm_source=pushcli"
                             "&utm_medium=web_push&utm_campaign=personal")
    assert render_json(renderer, city="X", first_name="Ann")["notification"]["title"] == "Hi Ann"


def test_locale_fallback() -> None:
    campaign = parse_campaign(PERSONAL)
    renderer = Renderer(campaign)
    attrs = {"city": "Q"}
    assert render_json(renderer, "fr-CA", **attrs)["notification"]["title"] == "Allô toi"
    assert render_json(renderer, "fr_ca", **attrs)["notification"]["title"] == "Allô toi"
    assert render_json(renderer, "fr-BE", **attrs)["notification"]["title"] == "Salut mon ami"
    assert render_json(renderer, "de-AT", **attrs)["notification"]["title"] == "Hi friend"
    assert resolve_locale(campaign, "FR-ca") == "fr-CA"
    assert resolve_locale(campaign, "fr_BE.UTF-8") == "fr"
    assert resolve_locale(campaign, "es") is None
    assert resolve_locale(campaign, None) is None


def test_missing_attribute_raises_render_error() -> None:
    renderer = Renderer(parse_campaign(PERSONAL))
    with pytest.raises(RenderError) as info:
        renderer.render(None, {})
    assert str(info.value) == (
        "<campaign>:4: notification.body: attribute 'city' is not set for this subscriber "
        "(use {{ city | default('...') }})"
    )
    assert isinstance(info.value, InputError)


def test_rendered_url_must_be_https() -> None:
    text = HEAD.replace("url: https://shop.example.com/", "url: '{{ link }}'")
    renderer = Renderer(parse_campaign(text))
    assert render_json(renderer, link="https://a.example.com/x")["notification"]["navigate"]
    with pytest.raises(RenderError) as info:
        renderer.render(None, {"link": "javascript:alert(1)"})
    assert str(info.value) == (
        "<campaign>:5: notification.url: renders to 'javascript:alert(1)', "
        "which is not an absolute https URL"
    )


def test_payload_json_shape() -> None:
    text = HEAD + (
        "  lang: en-US\n  dir: ltr\n  tag: t\n  icon: https://a.example.com/i.png\n"
        "  silent: false\n  data: {k: [1, 2]}\n  app_badge: 3\n"
        "  actions:\n    - {action: go, title: Go, url: https://a.example.com/go}\n"
        "    - {action: no, title: Later}\n"
    )
    payload = Renderer(parse_campaign(text)).render(None, {}, token="T" * 40)
    utm = "utm_source=pushcli&utm_medium=web_push&utm_campaign=test-campaign"
    assert payload.decode() == (
        '{"web_push":8030,"notification":{"title":"Hello","navigate":"https://shop.example.com/?'
        f'{utm}","body":"World","lang":"en-US","dir":"ltr","tag":"t",'
        '"icon":"https://a.example.com/i.png","silent":false,"actions":[{"action":"go",'
        f'"title":"Go","navigate":"https://a.example.com/go?{utm}"}},'
        '{"action":"no","title":"Later"}],'
        f'"data":{{"k":[1,2],"pushcli_token":"{"T" * 40}"}}}},"app_badge":3}}'
    )


def test_payload_minimal_and_utf8() -> None:
    text = HEAD.replace("World", "Grüße ✓") + "tracking: {utm: false}\n"
    payload = Renderer(parse_campaign(text)).render(None, {}, token="tok")
    assert json.loads(payload) == {
        "web_push": 8030,
        "notification": {
            "title": "Hello",
            "navigate": "https://shop.example.com/",
            "body": "Grüße ✓",
            "data": {"pushcli_token": "tok"},
        },
    }
    assert "Grüße ✓".encode() in payload


def _body_for_size(size: int) -> Campaign:
    base = len(Renderer(parse_campaign(HEAD.replace("World", "x"))).render(None, {})) - 1
    return parse_campaign(HEAD.replace("World", "x" * (size - base)))


def test_size_limit_exact_fits() -> None:
    assert len(Renderer(_body_for_size(MAX_PLAINTEXT)).render(None, {})) == MAX_PLAINTEXT


def test_size_limit_one_over() -> None:
    campaign = _body_for_size(MAX_PLAINTEXT + 1)
    body_len = len(campaign.notification.body)
    with pytest.raises(PayloadTooLarge) as info:
        Renderer(campaign).render(None, {})
    assert str(info.value) == (
        f"campaign test-campaign: payload is 3994 bytes, limit 3993; "
        f"shorten notification.body (the longest field, {body_len} bytes)"
    )


def test_size_limit_names_locale_field() -> None:
    text = HEAD + "locales:\n  de:\n    body: '" + "ü" * 2000 + "'\n"
    renderer = Renderer(parse_campaign(text))
    renderer.render(None, {})
    with pytest.raises(PayloadTooLarge, match=r"shorten locales\.de\.body \(the longest field"):
        renderer.render("de", {})


def test_check_payload_size_directly() -> None:
    check_payload_size(b"x" * MAX_PLAINTEXT, context="c")
    big = json.dumps({"web_push": 8030, "notification": {"title": "t", "data": {"a": "b" * 4000}}})
    with pytest.raises(PayloadTooLarge, match=r"^c: payload is \d+ bytes, limit 3993; shorten "):
        check_payload_size(big.encode(), context="c")


def test_render_cache_without_placeholders() -> None:
    renderer = Renderer(parse_campaign(HEAD))
    first = renderer.render(None, {"a": 1})
    assert renderer.render(None, {"b": 2}) is first
    assert renderer.variant_key(None, {"a": 1}) == renderer.variant_key(None, {}) == (
        None, None, ())


def test_render_cache_with_placeholders() -> None:
    renderer = Renderer(parse_campaign(PERSONAL))
    a = renderer.render("fr", {"city": "Nice", "other": 1})
    assert renderer.render("fr-FR", {"city": "Nice", "other": 2}) is a
    assert renderer.variant_key("fr", {"city": "Nice"}) == renderer.variant_key(
        "FR_be", {"city": "Nice", "unused": "x"}
    )
    assert renderer.variant_key("fr", {"city": "Nice"}) != renderer.variant_key(
        "fr", {"city": "Nice", "first_name": "Jo"}
    )
    # 1 and True hash alike but must not share a payload.
    assert renderer.render(None, {"city": 1}) != renderer.render(None, {"city": True})


def test_cached_render_is_fast() -> None:
    renderer = Renderer(parse_campaign(HEAD + "locales:\n  fr: {title: Bonjour}\n"))
    attrs = {"first_name": "x"}
    render = renderer.render
    start = time.perf_counter()
    for _ in range(200_000):
        render("fr", attrs)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------- audience


def test_audience_matches() -> None:
    audience = Audience(
        tags=["news", "vip"], exclude_tags=["unsubscribed-news"], where={"plan": "pro", "age": 30}
    )
    attrs = {"plan": "pro", "age": "30"}
    assert audience.matches(["vip"], attrs)
    assert audience.matches(iter(["news", "other"]), {"plan": "pro", "age": 30.0})
    assert not audience.matches(["other"], attrs)
    assert not audience.matches(["vip", "unsubscribed-news"], attrs)
    assert not audience.matches(["vip"], {"plan": "pro"})
    assert not audience.matches(["vip"], {"plan": "free", "age": "30"})
    assert not audience.matches(["vip"], {"plan": "pro", "age": "31"})


def test_audience_empty_matches_all_and_bools() -> None:
    assert Audience().matches([], {})
    flag = Audience(where={"beta": True})
    assert flag.matches([], {"beta": "true"})
    assert flag.matches([], {"beta": True})
    assert not flag.matches([], {"beta": "false"})
    assert not flag.matches([], {"beta": 1.5})


def test_audience_from_yaml() -> None:
    text = HEAD + "audience:\n  tags: [news]\n  where: {country: FR, no: no}\n"
    audience = parse_campaign(text).audience
    assert audience.where == {"country": "FR", "no": False}
    assert audience.matches({"news"}, {"country": "FR", "no": "false"})


def test_audience_where_value_must_be_scalar() -> None:
    assert error_of(HEAD + "audience:\n  where:\n    plan: [a, b]\n") == (
        "campaign.yml:8: audience.where.plan: must be a string, number or true/false"
    )


def test_control_character_refused() -> None:
    assert error_of("name: x\nbody: a\x07\n") == (
        "campaign.yml:2: character #x0007 is not allowed in YAML"
    )


@pytest.mark.parametrize("text", ["name: !!binary aGk=\n", "name: !foo x\n"])
def test_non_core_tags_refused(text: str) -> None:
    assert "unsupported YAML tag" in error_of(text)


# --------------------------------------------------------------------------- render errors


def test_render_error_names_file_line_and_locale_field(tmp_path: Path) -> None:
    path = tmp_path / "personal.yml"
    path.write_text(PERSONAL.replace("Salut {{ first_name | default('mon ami') }}",
                                     "Salut {{ first_name }}"))
    renderer = Renderer(load_campaign(path))
    with pytest.raises(RenderError) as info:
        renderer.render("fr", {"city": "Paris"})
    assert str(info.value) == (
        f"{path}:8: locales.fr.title: attribute 'first_name' is not set for this subscriber "
        "(use {{ first_name | default('...') }})"
    )


def test_dry_run_names_file_line_field_and_subscriber(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pushcli.cli import app
    from pushcli.keys import generate_keys
    from tests.support import real_subscription

    runner = CliRunner()
    generate_keys(tmp_path)
    db = tmp_path / "s.db"
    (tmp_path / "subs.json").write_text(json.dumps([real_subscription()]))
    result = runner.invoke(app, ["--db", str(db), "subscribers", "import",
                                 str(tmp_path / "subs.json")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "c.yml"
    path.write_text(HEAD.replace("body: World", "body: 'For {{ city }}'")
                    + "vapid:\n  subject: mailto:ops@shop.example.com\n")
    result = runner.invoke(app, ["--db", str(db), "send", str(path), "--dry-run",
                                 "--key", str(tmp_path / "vapid_private.pem")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {path}:4: notification.body: attribute 'city' is not set for this subscriber "
        "(use {{ city | default('...') }}) (subscriber id 1)"
    )


# --------------------------------------------------------------------------- schedule


SCHEDULED = HEAD + """\
schedule:
  start: 2026-12-01T08:00:00+01:00
  local_time: "09:00"
  window: 2h
  timezone: Europe/Paris
  quiet_hours: "21:00-08:00"
audience:
  frequency_cap: {max: 2, within: 7d}
"""


def test_schedule_and_frequency_cap_load_with_defaults() -> None:
    from datetime import UTC, datetime, time, timedelta

    campaign = parse_campaign(SCHEDULED)
    first_run = datetime(2026, 11, 30, tzinfo=UTC)
    s = campaign.schedule.resolve(first_run)
    assert s.start == datetime(2026, 12, 1, 7, tzinfo=UTC)
    assert s.end == s.start + timedelta(hours=48)  # default end
    assert (s.local_time, s.window, s.timezone) == (time(9), timedelta(hours=2), "Europe/Paris")
    assert s.quiet_hours == (time(21), time(8))
    assert campaign.audience.frequency_cap.cap().within == timedelta(days=7)
    bare = parse_campaign(HEAD + "schedule:\n  local_time: '09:00'\n").schedule.resolve(first_run)
    assert (bare.start, bare.window, bare.timezone) == (first_run, timedelta(hours=1), "UTC")
    # the stored spec (JSON) validates again: report re-reads the audience from it
    dumped = campaign.model_dump(mode="json")
    assert Audience.model_validate_json(json.dumps(dumped["audience"])) == campaign.audience


@pytest.mark.parametrize("yaml_text, message", [
    ("schedule:\n  local_time: 10:30\n",
     'campaign.yml:7: schedule.local_time: write the time in quotes, e.g. "10:30"'),
    ("schedule:\n  local_time: '25:00'\n",
     "campaign.yml:7: schedule.local_time: '25:00' is not a time like '09:00' (24-hour clock)"),
    ("schedule:\n  window: 30h\n", "campaign.yml:7: schedule.window: must be between 1m and 23h"),
    ("schedule:\n  timezone: Paris\n", "campaign.yml:7: schedule.timezone: unknown time zone "
     "'Paris' (an IANA name such as 'Europe/Paris')"),
    ("schedule:\n  start: 2026-12-01T08:00:00\n", "campaign.yml:7: schedule.start: needs a UTC "
     "offset (2026-12-01T08:00:00+01:00, or Z for UTC)"),
    ("schedule:\n  start: 2026-12-02T08:00:00Z\n  end: 2026-12-01T08:00:00Z\n",
     "campaign.yml:8: schedule.end: must be after schedule.start"),
    ("schedule:\n  quiet_hours: '08:00-08:00'\n", "campaign.yml:7: schedule.quiet_hours: "
     "'08:00-08:00' is empty or the whole day: from and to must differ"),
    ("audience:\n  frequency_cap:\n    max: 2\n    within: 7x\n", "campaign.yml:9: "
     "audience.frequency_cap.within: '7x' is not a duration like '90m', '2h' or '7d'"),
    ("audience:\n  frequency_cap:\n    max: 0\n    within: 7d\n",
     "campaign.yml:8: audience.frequency_cap.max: must be between 1 and 1000"),
])
def test_bad_schedule_values_name_file_line_and_field(yaml_text: str, message: str) -> None:
    assert error_of(HEAD + yaml_text) == message


@pytest.mark.parametrize("key", ["pushcli_token", "pushcli_events"])
def test_data_keys_pushcli_writes_are_refused_where_they_are_written(key: str) -> None:
    """Before, a campaign's own ``data.pushcli_token`` was silently replaced by the token."""
    text = HEAD + f"  data:\n    order: 42\n    {key}: mine\n"
    assert error_of(text) == (f"campaign.yml:8: notification.data.{key}: is set by pushcli in "
                              "every payload (the engagement token and where events go); "
                              "use another key")
