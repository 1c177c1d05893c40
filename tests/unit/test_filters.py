"""Docker's filters: wire formats, refusals, matching (moby api/types/filters), prune filters and timestamps."""

from __future__ import annotations

import json

import pytest

from qiao.daemon.filters import CONTAINER_LIST_KEYS, PRUNE_KEYS, Filters, Prune, created_nanos, timestamp_nanos, unix_nanos
from qiao.engine.errors import InvalidParameter

NOW = 1_700_000_000 * 10**9


def parse(obj: object, accepted=CONTAINER_LIST_KEYS) -> Filters:
    return Filters.parse(json.dumps(obj), accepted)


def test_both_wire_forms_and_empty():
    assert parse({"label": {"a=b": True, "c": True}}).get("label") == {"a=b", "c"}
    assert parse({"label": ["a=b", "c"]}).get("label") == {"a=b", "c"}
    assert parse({"label": {"off": False}}).get("label") == frozenset()  # false: not a value
    assert not Filters.parse("", CONTAINER_LIST_KEYS) and not Filters.parse(None, CONTAINER_LIST_KEYS)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"bogus": {"x": true}}', "invalid filter 'bogus'"),
        ("not json", "not valid JSON"),
        ('["label"]', "must be a JSON object"),
        ('{"label": "a"}', "invalid filter 'label'"),
        ('{"label": {"a": 1}}', "invalid filter 'label'"),
        ('{"label": [1]}', "invalid filter 'label'"),
    ],
)
def test_refusals_name_the_key(text, message):
    with pytest.raises(InvalidParameter, match=message):
        Filters.parse(text, CONTAINER_LIST_KEYS)


def test_match_is_exact_or_an_unanchored_regex():
    f = parse({"name": ["web"]})
    assert f.match("name", "web") and f.match("name", "myweb1") and not f.match("name", "db")
    assert parse({"name": ["^web$"]}).match("name", "web") and not parse({"name": ["^web$"]}).match("name", "web1")
    assert not parse({"name": ["[bad"]}).match("name", "x[bad")  # a bad regex never matches (unless exact)
    assert parse({"name": ["[bad"]}).match("name", "[bad")
    assert Filters().match("name", "anything")  # no values: everything matches


def test_exact_fuzzy_and_labels():
    f = parse({"driver": ["bridge"], "id": ["abc"], "label": ["a", "b=2"]}, {"driver", "id", "label"})
    assert f.exact("driver", "bridge") and not f.exact("driver", "bridged")
    assert f.fuzzy("id", "abcdef") and not f.fuzzy("id", "xabc")
    assert f.match_kv("label", {"a": "", "b": "2", "c": "3"})
    assert not f.match_kv("label", {"a": "1", "b": "3"}) and not f.match_kv("label", {"b": "2"}) and not f.match_kv("label", {})
    assert Filters().match_kv("label", {})


def test_boolean():
    keys = {"dangling"}
    assert parse({"dangling": ["true"]}, keys).boolean("dangling") is True
    assert parse({"dangling": ["0"]}, keys).boolean("dangling") is False
    assert Filters().boolean("dangling") is None
    with pytest.raises(InvalidParameter, match="must be"):
        parse({"dangling": ["maybe"]}, keys).boolean("dangling")
    with pytest.raises(InvalidParameter, match="more than one value"):
        parse({"dangling": ["true", "false"]}, keys).boolean("dangling")


def test_refuse_names_the_reason():
    with pytest.raises(InvalidParameter, match="qiao does not support the filter 'health': no checks"):
        parse({"health": ["healthy"]}).refuse({"health": "no checks"})
    parse({"name": ["x"]}).refuse({"health": "no checks"})


def test_unix_timestamps():
    assert unix_nanos("1700000000", "since") == NOW
    assert unix_nanos("1700000000.5", "since") == NOW + 500_000_000
    assert unix_nanos("1700000000.000000001", "since") == NOW + 1
    with pytest.raises(InvalidParameter, match="not a Unix timestamp"):
        unix_nanos("10m", "since")


def test_prune_until_forms():
    assert timestamp_nanos("10m", "until", NOW) == NOW - 600 * 10**9
    assert timestamp_nanos("1h30m", "until", NOW) == NOW - 5400 * 10**9
    assert timestamp_nanos("1700000000", "until", NOW) == NOW
    assert timestamp_nanos("2023-11-14T22:13:20Z", "until", 0) == NOW
    assert timestamp_nanos("2023-11-14T22:13:20", "until", 0) == NOW  # no zone: UTC
    with pytest.raises(InvalidParameter, match="failed to parse value as time or duration"):
        timestamp_nanos("soon", "until", NOW)


def test_prune_filters():
    created_old, created_new = "2023-11-14T22:00:00Z", "2023-11-14T22:30:00Z"
    rule = Prune.parse(json.dumps({"until": ["2023-11-14T22:13:20Z"]}), NOW)
    assert rule.matches({}, created_old) and not rule.matches({}, created_new)
    rule = Prune.parse(json.dumps({"label": ["keep=no"], "label!": ["pin"]}), NOW)
    assert rule.matches({"keep": "no"}, created_new)
    assert not rule.matches({"keep": "no", "pin": ""}, created_new) and not rule.matches({"keep": "yes"}, created_new)
    assert Prune.parse("", NOW).matches({}, created_new)
    with pytest.raises(InvalidParameter, match="more than one until"):
        Prune.parse(json.dumps({"until": ["1", "2"]}), NOW)
    with pytest.raises(InvalidParameter, match="invalid filter 'name'"):
        Prune.parse(json.dumps({"name": ["x"]}), NOW)
    assert {"label", "label!", "until"} == PRUNE_KEYS
    assert created_nanos("2023-11-14T22:13:20.5Z") == NOW + 500_000_000 and created_nanos("garbage") == 0
