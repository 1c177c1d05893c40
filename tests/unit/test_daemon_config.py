"""qiaod's daemon.json: where it is, what it may hold, one clear error otherwise."""

from __future__ import annotations

import argparse
import json

import pytest

from qiao.daemon import config
from qiao.paths import Root


def args(**given: object) -> argparse.Namespace:
    base = {dest: None for dest, _kind in config.KEYS.values()}
    base["debug"] = False
    base.update(given)
    return argparse.Namespace(**base)


def test_where_the_file_is(tmp_path):
    assert config.path_for(Root.resolve(None), None) == "/etc/qiao/daemon.json"
    assert config.path_for(Root.resolve(str(tmp_path)), None) == str(tmp_path / "daemon.json")
    assert config.path_for(Root.resolve(str(tmp_path)), "/x.json") == "/x.json"


def test_long_option_names_become_options(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"docker-plugin": "/run/docker/plugins/qiao.sock", "cluster-store": "etcd://10.0.0.1:2379", "debug": True}))
    a = args()
    config.merge(a, config.load(str(path)), str(path))
    assert (a.docker_plugin, a.cluster_store, a.debug) == ("/run/docker/plugins/qiao.sock", "etcd://10.0.0.1:2379", True)


def test_no_file_is_no_options(tmp_path):
    assert config.load(str(tmp_path / "none.json")) == {}
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "none.json"), required=True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "a JSON object"),
        ('{"cluster_store": "x"}', "unknown option 'cluster_store'"),
        ('{"debug": "yes"}', "must be a boolean"),
        ('{"docker-plugin": 1}', "must be a string"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "daemon.json"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=words) as caught:
        config.load(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_option_in_both_places_is_an_error_as_in_dockerd(tmp_path):
    with pytest.raises(config.ConfigError, match="--cluster-store"):
        config.merge(args(cluster_store="etcd://a:1"), {"cluster_store": "etcd://b:2"}, "daemon.json")
