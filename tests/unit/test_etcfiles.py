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
    text = etcfiles.hosts([("172.17.0.2", "0123456789ab")])
    assert text.splitlines() == DOCKER_HOSTS_HEADER + ["172.17.0.2\t0123456789ab"]
    assert text.endswith("\n")


def test_hosts_without_address():
    text = etcfiles.hosts([])
    assert text.splitlines() == DOCKER_HOSTS_HEADER
    assert text == etcfiles.HOSTS_HEADER


def test_hosts_own_addresses_then_links_in_order():
    entries = [("10.1.0.2", "box"), ("fd00:1::2", "box"), ("172.17.0.3", "db cccccccccccc other")]
    assert etcfiles.hosts(entries).splitlines()[len(DOCKER_HOSTS_HEADER) :] == [
        "10.1.0.2\tbox",
        "fd00:1::2\tbox",
        "172.17.0.3\tdb cccccccccccc other",
    ]


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


def test_write_rewrites_files_in_place(tmp_path):
    """A bind mount follows the inode: a rewrite must keep it (no rename over the file)."""
    d = tmp_path / "ctr"
    etcfiles.write(str(d), {"hosts": "a long first version\n", "hostname": "box\n"})
    inode = os.stat(d / "hosts").st_ino
    etcfiles.write(str(d), {"hosts": "b\n"})
    assert os.stat(d / "hosts").st_ino == inode
    assert (d / "hosts").read_text() == "b\n"  # truncated, nothing of the longer old text left
    assert (d / "hostname").read_text() == "box\n"
    assert sorted(os.listdir(d)) == ["hostname", "hosts"]  # no temporary files left


def test_resolv_conf_with_nameservers_replaces_the_hosts(tmp_path):
    """User networks: qiao's resolvers (the gateways) instead of the host's; search and options stay."""
    src = write(tmp_path, "nameserver 127.0.0.53\nsearch lan\nnameserver 10.0.0.2\noptions edns0")
    assert etcfiles.resolv_conf(src, nameservers=["10.1.0.1", "10.2.0.1"]) == (
        "nameserver 10.1.0.1\nnameserver 10.2.0.1\nsearch lan\noptions edns0\n"
    )


def test_resolv_conf_with_nameservers_missing_source(tmp_path):
    assert etcfiles.resolv_conf(str(tmp_path / "missing"), nameservers=["10.1.0.1"]) == "nameserver 10.1.0.1\n"


def test_resolv_conf_empty_nameservers_is_the_legacy_transform(tmp_path):
    src = write(tmp_path, "nameserver 127.0.0.53\n")
    assert etcfiles.resolv_conf(src, nameservers=[]) == etcfiles.resolv_conf(src)


def test_default_resolv_conf(tmp_path, monkeypatch):
    stub = write(tmp_path, "nameserver 127.0.0.53\noptions edns0\n")
    monkeypatch.setattr(etcfiles, "SYSTEMD_RESOLVED", str(tmp_path / "missing"))
    assert etcfiles.default_resolv_conf(stub) == stub  # behind the stub, but no systemd-resolved upstream file
    real = tmp_path / "upstream.conf"
    real.write_text("nameserver 10.0.0.2\n")
    monkeypatch.setattr(etcfiles, "SYSTEMD_RESOLVED", str(real))
    assert etcfiles.default_resolv_conf(stub) == str(real)
    plain = tmp_path / "plain.conf"
    plain.write_text("nameserver 10.0.0.2\n")
    assert etcfiles.default_resolv_conf(str(plain)) == str(plain)


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.10"])
def test_hosts_line_is_tab_separated(address):
    assert etcfiles.hosts([(address, "h")]).splitlines()[-1] == f"{address}\th"


# -- --hostname/--domainname, --add-host, --dns-search, --dns-option ------------


@pytest.mark.parametrize(
    ("hostname", "domainname", "names"),
    [("box", "", "box"), ("box", "corp.test", "box.corp.test box"), ("box.corp.test", "", "box.corp.test box")],
)
def test_own_names_are_the_full_name_then_the_bare_one(hostname, domainname, names):
    assert etcfiles.own_names(hostname, domainname) == names


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("db:192.0.2.10", ("192.0.2.10", "db")),
        ("db=192.0.2.10", ("192.0.2.10", "db")),
        ("v6:2001:db8::1", ("2001:db8::1", "v6")),  # only the first colon separates
        ("v6=[2001:db8::1]", ("2001:db8::1", "v6")),
        ("gw:host-gateway", ("172.17.0.1", "gw")),
    ],
)
def test_extra_host(entry, expected):
    assert etcfiles.extra_host(entry, "172.17.0.1") == expected


HOST = "# from the host\nnameserver 10.0.0.2\nsearch lan corp\ndomain lan\noptions edns0\n"


def test_override_replaces_search_and_options_keeps_the_rest():
    assert etcfiles.override(HOST, ["a.test", "b.test"], ["ndots:2", "timeout:1"], []) == (
        "nameserver 10.0.0.2\nsearch a.test b.test\noptions ndots:2 timeout:1\n# from the host\n"
    )


def test_override_search_dot_means_none_and_nothing_given_changes_nothing():
    assert etcfiles.override(HOST, ["."], [], []) == "nameserver 10.0.0.2\n# from the host\noptions edns0\n"
    assert etcfiles.override(HOST, [], [], []) == HOST


def test_override_notes_the_servers_qiaos_resolver_forwards_to():
    text = etcfiles.override("nameserver 10.1.0.1\nsearch lan\n", [], [], ["192.0.2.53", "192.0.2.54"])
    assert text == "nameserver 10.1.0.1\nsearch lan\n# ExtServers: [192.0.2.53 192.0.2.54]\n"
