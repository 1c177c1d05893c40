"""Docker's PortBindings / ExposedPorts validation (no sockets)."""

from __future__ import annotations

import pytest

from qiao.engine import ports
from qiao.engine.errors import InvalidParameter
from qiao.engine.ports import PortRequest


@pytest.mark.parametrize(
    "key, parsed",
    [("80", (80, "tcp")), ("80/tcp", (80, "tcp")), ("53/udp", (53, "udp")), ("9/SCTP", (9, "sctp")), (" 443/tcp ", (443, "tcp"))],
)
def test_parse_key(key, parsed):
    assert ports.parse_key(key) == parsed


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("", "expected PORT[/tcp|udp|sctp]"),
        ("http", "expected PORT"),
        ("80/icmp", "expected PORT"),
        ("80-81/tcp", "expected PORT"),
        ("-1", "expected PORT"),
        ("0", "invalid container port 0: must be between 1 and 65535"),
        ("65536/udp", "invalid container port 65536"),
    ],
)
def test_parse_key_errors(key, fragment):
    with pytest.raises(InvalidParameter, match=fragment.replace("[", r"\[").replace("|", r"\|")):
        ports.parse_key(key)


def test_requests_nothing():
    assert ports.requests(None, None, False) == []
    assert ports.requests({}, {"80/tcp": {}}, False) == []  # exposed alone publishes nothing


def test_requests_fixed_any_and_range():
    got = ports.requests(
        {
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
            "443": [{"HostPort": "8000-8010"}],
            "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": 2222}],  # a number, as some clients send it
        },
        None,
        False,
    )
    assert got == [
        PortRequest("tcp", 80, "0.0.0.0", 8080, 8080),
        PortRequest("udp", 53, "127.0.0.1", 0, 0),
        PortRequest("tcp", 443, "0.0.0.0", 8000, 8010),
        PortRequest("tcp", 22, "0.0.0.0", 2222, 2222),
    ]


def test_requests_several_bindings_of_one_port():
    got = ports.requests({"80/tcp": [{"HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "9090"}]}, None, False)
    assert [(r.host_ip, r.host_lo) for r in got] == [("0.0.0.0", 8080), ("127.0.0.1", 9090)]


@pytest.mark.parametrize("entries", [None, [], [None], [{}]])
def test_requests_empty_binding_means_any_port(entries):
    assert ports.requests({"80/tcp": entries}, None, False) == [PortRequest("tcp", 80, "0.0.0.0", 0, 0)]


def test_requests_publish_all_covers_exposed_without_binding():
    got = ports.requests({"80/tcp": [{"HostPort": "8080"}]}, {"80/tcp": {}, "53/udp": {}, "7000/tcp": {}}, True)
    assert got == [
        PortRequest("tcp", 80, "0.0.0.0", 8080, 8080),  # an explicit binding wins over -P
        PortRequest("udp", 53, "0.0.0.0", 0, 0),
        PortRequest("tcp", 7000, "0.0.0.0", 0, 0),
    ]
    assert ports.requests(None, {"53/udp": {}}, False) == []


@pytest.mark.parametrize(
    "bindings, fragment",
    [
        ({"80/icmp": [{}]}, "invalid container port '80/icmp'"),
        ({"0/tcp": [{}]}, "invalid container port 0"),
        ({"80/tcp": [{"HostPort": "http"}]}, "invalid host port 'http': expected PORT or START-END"),
        ({"80/tcp": [{"HostPort": "8080-"}]}, "invalid host port '8080-'"),
        ({"80/tcp": [{"HostPort": "-8080"}]}, "invalid host port"),
        ({"80/tcp": [{"HostPort": "0"}]}, "invalid host port 0: must be between 1 and 65535"),
        ({"80/tcp": [{"HostPort": "70000"}]}, "invalid host port 70000"),
        ({"80/tcp": [{"HostPort": "8000-70000"}]}, "invalid host port 70000"),
        ({"80/tcp": [{"HostPort": "9000-8000"}]}, "invalid host port range 9000-8000: end before start"),
        ({"80/tcp": [{"HostIp": "::1", "HostPort": "80"}]}, "invalid host address ::1: only IPv4 host addresses are supported"),
        ({"80/tcp": [{"HostIp": "localhost"}]}, "invalid host address 'localhost'"),
        ({"80/tcp": [{"HostIp": "10.0.0.256"}]}, "invalid host address"),
    ],
)
def test_requests_errors(bindings, fragment):
    with pytest.raises(InvalidParameter) as info:
        ports.requests(bindings, None, False)
    assert fragment in str(info.value)


def test_requests_error_in_exposed_with_publish_all():
    with pytest.raises(InvalidParameter, match="invalid container port"):
        ports.requests(None, {"x/tcp": {}}, True)
