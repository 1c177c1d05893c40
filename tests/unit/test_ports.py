"""Published ports asked for (bindings, exposed ports, -P): validation, no sockets."""

from __future__ import annotations

import json

import pytest

from qiao.daemon import wire
from qiao.engine import ports
from qiao.engine.errors import InvalidParameter
from qiao.engine.ports import PortRequest


@pytest.mark.parametrize(
    "key, parsed",
    [("80", (80, "tcp")), ("80/tcp", (80, "tcp")), ("53/udp", (53, "udp")), ("9/SCTP", (9, "sctp"))],
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
        ("\u0668\u0660/tcp", "expected PORT"),  # Arabic-Indic digits: ASCII only
        ("\uff18\uff10", "expected PORT"),  # fullwidth digits
        ("000080/tcp", "expected PORT"),  # at most five digits
        (" 443/tcp ", "expected PORT"),  # no spaces
        ("80/tcp\n", "expected PORT"),  # nor a newline
    ],
)
def test_parse_key_errors(key, fragment):
    with pytest.raises(InvalidParameter, match=fragment.replace("[", r"\[").replace("|", r"\|")):
        ports.parse_key(key)


def test_requests_nothing():
    assert ports.requests(None, None, False) == []
    assert ports.requests({}, ["80/tcp"], False) == []  # exposed alone publishes nothing


def test_requests_fixed_any_and_range():
    got = ports.requests(
        {
            "80/tcp": [{"host_ip": "", "host_port": "8080"}],
            "53/udp": [{"host_ip": "127.0.0.1", "host_port": ""}],
            "443": [{"host_port": "8000-8010"}],
            "22/tcp": [{"host_ip": "0.0.0.0", "host_port": "2222"}],
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
    got = ports.requests({"80/tcp": [{"host_port": "8080"}, {"host_ip": "127.0.0.1", "host_port": "9090"}]}, None, False)
    assert [(r.host_ip, r.host_lo) for r in got] == [("0.0.0.0", 8080), ("127.0.0.1", 9090)]


@pytest.mark.parametrize("entries", [None, [], [{}], [{"host_ip": "", "host_port": ""}]])
def test_requests_empty_binding_means_any_port(entries):
    assert ports.requests({"80/tcp": entries}, None, False) == [PortRequest("tcp", 80, "0.0.0.0", 0, 0)]


def test_requests_publish_all_covers_exposed_without_binding():
    got = ports.requests({"80/tcp": [{"host_port": "8080"}]}, ["80/tcp", "53/udp", "7000/tcp"], True)
    assert got == [
        PortRequest("tcp", 80, "0.0.0.0", 8080, 8080),  # an explicit binding wins over -P
        PortRequest("udp", 53, "0.0.0.0", 0, 0),
        PortRequest("tcp", 7000, "0.0.0.0", 0, 0),
    ]
    assert ports.requests(None, ["53/udp"], False) == []
    assert ports.requests(None, ("53/udp" for _ in range(1)), True) == [PortRequest("udp", 53, "0.0.0.0", 0, 0)]  # any iterable


@pytest.mark.parametrize(
    "bindings, fragment",
    [
        ({"80/icmp": [{}]}, "invalid container port '80/icmp'"),
        ({"0/tcp": [{}]}, "invalid container port 0"),
        ({"80/tcp": [{"host_port": "http"}]}, "invalid host port 'http': expected PORT or START-END"),
        ({"80/tcp": [{"host_port": "8080-"}]}, "invalid host port '8080-'"),
        ({"80/tcp": [{"host_port": "-8080"}]}, "invalid host port"),
        ({"80/tcp": [{"host_port": "0"}]}, "invalid host port 0: must be between 1 and 65535"),
        ({"80/tcp": [{"host_port": "70000"}]}, "invalid host port 70000"),
        ({"80/tcp": [{"host_port": "8000-70000"}]}, "invalid host port 70000"),
        ({"80/tcp": [{"host_port": "9000-8000"}]}, "invalid host port range 9000-8000: end before start"),
        ({"80/tcp": [{"host_ip": "::1", "host_port": "80"}]}, "invalid host address ::1: only IPv4 host addresses are supported"),
        ({"80/tcp": [{"host_ip": "localhost"}]}, "invalid host address 'localhost'"),
        ({"80/tcp": [{"host_ip": "10.0.0.256"}]}, "invalid host address"),
        ({"80/tcp": [{"host_port": "\u0668\u0660\u0668\u0660"}]}, "invalid host port"),  # ASCII digits only
        ({"80/tcp": [{"host_port": "800000"}]}, "invalid host port"),
    ],
)
def test_requests_errors(bindings, fragment):
    with pytest.raises(InvalidParameter) as info:
        ports.requests(bindings, None, False)
    assert fragment in str(info.value)


def test_requests_error_in_exposed_with_publish_all():
    with pytest.raises(InvalidParameter, match="invalid container port"):
        ports.requests(None, ["x/tcp"], True)


# -- from the Docker API body: HostConfig.PortBindings as the API decodes it ----------------


def spec_requests(host_config: dict, exposed: dict | None = None) -> list[PortRequest]:
    body = {"Cmd": ["true"], "HostConfig": host_config, **({"ExposedPorts": exposed} if exposed else {})}
    spec = wire.container_spec(None, json.dumps(body).encode())
    bindings = {key: [{"host_ip": b.host_ip, "host_port": b.host_port} for b in entries] for key, entries in spec.port_bindings.items()}
    return ports.requests(bindings, spec.exposed_ports, spec.publish_all)


def test_api_bindings_and_publish_all():
    got = spec_requests(
        {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}, "PublishAllPorts": True}, {"53/udp": {}}
    )
    assert got == [PortRequest("tcp", 80, "127.0.0.1", 8080, 8080), PortRequest("udp", 53, "0.0.0.0", 0, 0)]


def test_api_host_port_must_be_a_string():
    """As dockerd (Go's JSON: a number is not a string): refused with the field named."""
    with pytest.raises(InvalidParameter, match=r"Expected `str`, got `int`.*HostPort"):
        spec_requests({"PortBindings": {"22/tcp": [{"HostPort": 2222}]}})
