"""The default bridge and a container on it: the seed's docker0 picture."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.integration.conftest import Host


def test_default_bridge_is_qiao0_with_first_free_pool(host: Host) -> None:
    link = json.loads(host.sh("ip", "-j", "addr", "show", "qiao0").stdout)[0]
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [("172.17.0.1", 16)]
    assert host.sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    ruleset = host.sh("nft", "list", "table", "inet", "qiao").stdout
    assert 'oifname != "qiao0" ip saddr 172.17.0.0/16 masquerade' in ruleset
    net = json.loads(host.qiao("network", "inspect", "bridge").stdout)[0]
    assert list(net) == [
        "Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6", "IPAM", "Internal", "Attachable",
        "Ingress", "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels",
    ]  # fmt: skip
    assert net["IPAM"]["Config"] == [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]
    assert net["Options"]["com.docker.network.bridge.name"] == "qiao0"
    rm = host.qiao("network", "rm", "bridge", check=False)
    assert rm.returncode != 0 and "pre-defined" in rm.stderr


def test_pool_skips_on_link_routes_and_addresses(make_host) -> None:
    h = make_host("pool", start=False)
    h.sh("ip", "link", "add", "dock0", "type", "bridge")
    h.sh("ip", "addr", "add", "172.17.0.1/16", "dev", "dock0")  # a real docker0 already there
    h.sh("ip", "link", "set", "dock0", "up")
    h.sh("ip", "route", "add", "172.19.0.0/16", "dev", "dock0")
    h.start_daemon()
    net = json.loads(h.qiao("network", "inspect", "bridge").stdout)[0]
    assert net["IPAM"]["Config"][0]["Subnet"] == "172.18.0.0/16"
    other = h.qiao("network", "create", "next").stdout.strip()
    assert json.loads(h.qiao("network", "inspect", other).stdout)[0]["IPAM"]["Config"][0]["Subnet"] == "172.20.0.0/16"


def test_container_gets_eth0_veth_address_mac_route_hostname_and_etc_files(host: Host) -> None:
    cid = host.run_d("--name", "anatomy", "--", "sleep", "300")
    try:
        info = host.inspect("anatomy")
        ip = info["NetworkSettings"]["IPAddress"]
        assert re.fullmatch(r"172\.17\.0\.\d+", ip)
        mac = "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
        assert info["NetworkSettings"]["MacAddress"] == mac
        assert info["Config"]["Hostname"] == cid[:12]
        assert info["NetworkSettings"]["SandboxKey"].startswith(host.root)

        links = {link["ifname"]: link for link in json.loads(host.exec("anatomy", "ip", "-j", "link").stdout)}
        assert set(links) == {"lo", "eth0"}
        assert links["eth0"]["address"] == mac and "UP" in links["lo"]["flags"]
        routes = json.loads(host.exec("anatomy", "ip", "-j", "route").stdout)
        assert {"dst": "default", "gateway": "172.17.0.1"}.items() <= routes[0].items()
        assert host.exec("anatomy", "hostname").stdout.strip() == cid[:12]
        hosts = host.exec("anatomy", "cat", "/etc/hosts").stdout
        assert hosts.startswith("127.0.0.1\tlocalhost\n") and hosts.endswith(f"{ip}\t{cid[:12]}\n")
        assert "nameserver 127." not in host.exec("anatomy", "cat", "/etc/resolv.conf").stdout
        assert Path("/etc/hosts").read_text() != hosts  # the host's own file is untouched

        # The host end: veth + 7 hex, on qiao0, peer of the container's eth0.
        host_links = json.loads(host.sh("ip", "-j", "link", "show", "master", "qiao0").stdout)
        names = [link["ifname"] for link in host_links]
        assert len(names) == 1 and re.fullmatch(r"veth[0-9a-f]{7}", names[0])
    finally:
        host.qiao("rm", "-f", "anatomy")


def test_container_to_container_gateway_and_outside_with_masquerade(make_host) -> None:
    h = make_host("net")
    out = h.add_outside()
    h.sh("ip", "route", "add", "default", "via", "198.51.100.2")
    # The "outside" machine answers with the source address it saw.
    server = out.popen(
        "python3", "-c",
        "import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7000)); s.listen()\n"
        "while True:\n c,a=s.accept(); c.sendall(a[0].encode()); c.close()\n",
    )  # fmt: skip
    try:
        h.run_d("--name", "srv", "--", "python3", "-m", "http.server", "80")
        probe = (  # connect (retrying while the server starts); print what the server says, or "connected"
            "import socket,sys,time\nfor _ in range(50):\n try: s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 2); break\n"
            " except OSError: time.sleep(0.1)\nprint(s.recv(100).decode() if sys.argv[3:] else 'connected')\n"
        )
        # container -> container
        fetch = "import urllib.request as u; print(u.urlopen('http://172.17.0.2', timeout=5).status)"
        r = h.qiao("run", "--rm", "--", "python3", "-c", fetch)
        assert r.stdout.strip() == "200"
        # container -> gateway (the host's address on the bridge)
        gw = h.popen("python3", "-m", "http.server", "--bind", "172.17.0.1", "8081")
        try:
            r = h.qiao("run", "--rm", "--", "python3", "-c", probe, "172.17.0.1", "8081")
            assert r.stdout.strip() == "connected"
        finally:
            gw.kill()
            gw.wait()
        # container -> outside: the outside sees the host's address (MASQUERADE)
        r = h.qiao("run", "--rm", "--", "python3", "-c", probe, "198.51.100.2", "7000", "read")
        assert r.stdout.strip() == "198.51.100.1"
    finally:
        server.kill()
        server.wait()
