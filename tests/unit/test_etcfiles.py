"""The /etc files a container sees."""

from __future__ import annotations

import os

import pytest

from qiao.engine import etcfiles

DOCKER_HOSTS_HEADER = [
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::\tip6-localnet",
    "ff00::\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
]


def test_hosts_with_address():
    text = etcfiles.hosts("172.17.0.2", "0123456789ab")
    assert text.splitlines() == DOCKER_HOSTS_HEADER + ["172.17.0.2\t0123456789ab"]
    assert text.endswith("\n")


def test_hosts_without_address():
    text = etcfiles.hosts(None, "box")
    assert text.splitlines() == DOCKER_HOSTS_HEADER
    assert "box" not in text


def write(tmp_path, text: str) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


def test_resolv_conf_drops_loopback_and_ipv6_keeps_the_rest(tmp_path):
    """moby's TransformForLegacyNw(ipv6=False): qiao's sandboxes have no IPv6."""
    src = write(
        tmp_path,
        "# generated\n"
        "nameserver 127.0.0.53\n"
        "nameserver 10.0.0.2\n"
        "nameserver ::1\n"
        "nameserver 127.0.0.1%lo\n"
        "nameserver 2001:db8::53\n"
        "search example.com corp.example\n"
        "options edns0 trust-ad\n",
    )
    assert etcfiles.resolv_conf(src) == ("# generated\nnameserver 10.0.0.2\nsearch example.com corp.example\noptions edns0 trust-ad\n")


def test_resolv_conf_falls_back_when_only_loopback(tmp_path):
    src = write(tmp_path, "nameserver 127.0.0.53\nsearch lan\noptions edns0\n")
    assert etcfiles.resolv_conf(src) == "search lan\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_resolv_conf_falls_back_when_no_nameserver_at_all(tmp_path):
    src = write(tmp_path, "search lan")  # no trailing newline either
    assert etcfiles.resolv_conf(src) == "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_resolv_conf_falls_back_when_only_ipv6(tmp_path):
    src = write(tmp_path, "nameserver 2001:db8::53\nnameserver fe80::1%eth0\n")
    assert etcfiles.resolv_conf(src) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_resolv_conf_drops_unparsable_nameserver(tmp_path):
    src = write(tmp_path, "nameserver not-an-ip\nnameserver 1.1.1.1\n")
    assert etcfiles.resolv_conf(src) == "nameserver 1.1.1.1\n"


def test_resolv_conf_missing_file(tmp_path):
    assert etcfiles.resolv_conf(str(tmp_path / "missing")) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_resolv_conf_last_line_gets_newline(tmp_path):
    src = write(tmp_path, "nameserver 10.0.0.2\noptions ndots:2")
    assert etcfiles.resolv_conf(src) == "nameserver 10.0.0.2\noptions ndots:2\n"


def test_host_nameservers(tmp_path):
    src = write(tmp_path, "# x\nnameserver 127.0.0.53\nnameserver  10.0.0.2 \nsearch lan\nnameserver\n")
    assert etcfiles.host_nameservers(src) == ["127.0.0.53", "10.0.0.2"]
    assert etcfiles.host_nameservers(str(tmp_path / "missing")) == []


def test_write_replaces_files_atomically(tmp_path):
    d = tmp_path / "ctr"
    etcfiles.write(str(d), {"hosts": "a\n", "hostname": "box\n"})
    etcfiles.write(str(d), {"hosts": "b\n"})
    assert (d / "hosts").read_text() == "b\n"
    assert (d / "hostname").read_text() == "box\n"
    assert sorted(os.listdir(d)) == ["hostname", "hosts"]  # no temporary files left


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.10"])
def test_hosts_line_is_tab_separated(address):
    assert etcfiles.hosts(address, "h").splitlines()[-1] == f"{address}\th"
