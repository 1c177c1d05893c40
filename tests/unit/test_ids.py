"""Identifiers and names in Docker's forms."""

from __future__ import annotations

import re

import pytest

from qiao.engine import ids


@pytest.mark.parametrize(
    "address, mac",
    [
        ("172.17.0.2", "02:42:ac:11:00:02"),
        ("10.0.0.1", "02:42:0a:00:00:01"),
        ("192.168.255.254", "02:42:c0:a8:ff:fe"),
    ],
)
def test_mac_from_ipv4(address, mac):
    assert ids.mac_from_ipv4(address) == mac


def test_mac_from_ipv4_rejects_garbage():
    with pytest.raises(ValueError):
        ids.mac_from_ipv4("not an address")


def test_veth_name_form():
    names = {ids.veth_name() for _ in range(200)}
    for name in names:
        assert re.fullmatch(r"veth[0-9a-f]{7}", name), name
        assert len(name) == 11 and ids.valid_ifname(name)
    assert len(names) > 190  # random


def test_new_id_is_64_hex():
    a, b = ids.new_id(), ids.new_id()
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a != b


@pytest.mark.parametrize("name", ["eth0", "qiao0", "br-0123456789ab", "a", "x" * 15, "my_br.1-2"])
def test_valid_ifname(name):
    assert ids.valid_ifname(name)


@pytest.mark.parametrize("name", ["", "x" * 16, ".", "..", "br 0", "br/0", "br:0", 'br"0', "br\n", "brü"])
def test_invalid_ifname(name):
    assert not ids.valid_ifname(name)


@pytest.mark.parametrize("name", ["web", "a", "my-net_1.x", "0abc"])
def test_name_re_ok(name):
    assert ids.NAME_RE.match(name)


@pytest.mark.parametrize("name", ["", "-x", "_x", ".x", "a b", "a/b", "web\n"])
def test_name_re_bad(name):
    assert not ids.NAME_RE.match(name)
