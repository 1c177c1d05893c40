"""Part two of ``make demo``: several hosts, one overlay network across them.

It runs in a ``qiao lab`` (src/qiao/lab/lab.py) whose root is a temporary
directory of this run, ``/tmp/qdemo-<rand>-lab-*``, passed as
``QIAO_LAB_ROOT``: the lab names its namespaces ``qlab-<lab id>-ul`` (the
underlay bridge and etcd) and ``qlab-<lab id>-hostN`` (one qiaod each), and
keeps everything else (etcd's data, the hosts' qiao roots and their
containers' namespace files) under that root.  ``qiao lab down`` removes it
all; the demo runs it also after a failure or Ctrl-C, then checks that
nothing of the lab is left.

What the demo checks in the kernel it reads with pyroute2, inside the lab's
namespaces; ``ip`` and ``bridge`` only print things for the reader.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo_common import QIAO, Console, Failed, link_named, netlink, processes_naming, wait_for
from dnslib import DNSRecord

from qiao.drivers.overlay.store import ClusterStore
from qiao.kernel import netns as qnetns

HOSTS = 3
OV, OV_RANGE = "ov", "10.244.0.0/16"
UNDERLAY, UNDERLAY_GW = "10.250.0.0/24", "10.250.0.1"  # the lab's fixed underlay; etcd listens on its bridge
VXLAN_PORT, VXLAN_OVERHEAD = 8472, 50
NUD_PERMANENT = 0x80


def addresses(ipr: Any, index: int) -> set[str]:
    return {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(family=socket.AF_INET, index=index)}


class OverlayDemo:
    def __init__(self, console: Console, tag: str) -> None:
        self.c = console
        self.tag = tag
        self.root = ""  # the lab's root
        self.env: dict[str, str] = {}
        self.state: dict[str, Any] = {}  # the lab's lab.json, read after `up`
        self.vni = 0  # the overlay network's, from etcd
        self.lease_records: dict[str, dict[str, Any]] = {}  # subnet -> its lease in etcd
        self.subnets: dict[str, str] = {}  # host name -> its leased subnet
        self.done = False

    # -- running ---------------------------------------------------------

    def lab(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.c.sh([QIAO, "lab", *args], check=check, timeout=timeout, env=self.env)

    def show(self, *args: str, expect: str | None = None, transform: Callable[[str], str] | None = None) -> str:
        """Print ``$ qiao lab ARGS``, run it, print its real output."""
        return self.c.show(["qiao", "lab", *args], lambda: self.lab(*args), expect=expect, transform=transform)

    def on(self, host: str, *cmd: str, expect: str | None = None) -> str:
        """Print and run ``qiao lab exec HOST -- CMD``."""
        return self.show("exec", host, "--", *cmd, expect=expect)

    def host(self, name: str) -> dict[str, Any]:
        return next(h for h in self.state["hosts"] if h["name"] == name)

    def etcd(self) -> dict[str, Any]:
        """Every overlay key in etcd, decoded (read from the underlay namespace)."""
        with qnetns.entered(f"/run/netns/{self.state['underlay']}"):
            return ClusterStore(f"etcd://{UNDERLAY_GW}:2379").dump()

    def leases(self) -> dict[str, dict[str, Any]]:
        """The overlay network's subnet leases in etcd: subnet -> {PublicIP, BackendData: {VNI, VtepMAC}}."""
        return dict(self.etcd().get(OV, {}).get("subnets", {}))

    # -- the story -------------------------------------------------------

    def run(self) -> None:
        self.up()
        self.network()
        self.across_hosts()
        self.data_plane()

    def up(self) -> None:
        say = self.c.say
        self.root = tempfile.mkdtemp(prefix=f"{self.tag}-lab-")
        self.env = dict(os.environ, QIAO_LAB_ROOT=self.root)
        self.c.part("Part 2: several hosts — one overlay network across them (VXLAN over an underlay, subnets leased from etcd)")
        self.c.dim(f"+ export QIAO_LAB_ROOT={self.root}   # this run's own lab (the default is /var/lib/qiao-lab)")
        self.c.dim("`$ qiao` below = .venv/bin/qiao; `qiao lab exec HOST -- CMD` runs CMD in HOST's network namespace, QIAO_ROOT set")
        self.c.section("qiao lab up: an underlay, three hosts with a qiaod each, etcd")
        self.show("up", "--hosts", str(HOSTS), expect=f"{HOSTS} hosts")
        self.state = json.loads(Path(self.root, "lab.json").read_text())
        self.check_lab()
        ul = self.state["underlay"]
        say(
            f"three simulated hosts on one kernel: each a network namespace (qlab-{self.state['id']}-hostN) with its own eth0 on the "
            f"underlay bridge ul0 (namespace {ul}, {UNDERLAY}) and its own qiaod, root and state; etcd listens on the underlay at "
            f"{UNDERLAY_GW}:2379 and every qiaod runs with --cluster-store etcd://{UNDERLAY_GW}:2379."
        )

    def check_lab(self) -> None:
        hosts = self.state["hosts"]
        if len(hosts) != HOSTS:
            raise Failed(f"lab.json lists {len(hosts)} hosts, not {HOSTS}")
        with netlink(self.state["underlay"]) as ipr:
            ul0 = link_named(ipr, "ul0")
            if f"{UNDERLAY_GW}/24" not in addresses(ipr, ul0["index"]):
                raise Failed(f"the underlay bridge ul0 lacks {UNDERLAY_GW}/24")
            ports = [link for link in ipr.get_links() if link.get("master") == ul0["index"]]
            if len(ports) != HOSTS:
                raise Failed(f"the underlay bridge has {len(ports)} ports, not {HOSTS}")
        for h in hosts:
            with netlink(h["netns"]) as ipr:
                if f"{h['address']}/24" not in addresses(ipr, link_named(ipr, "eth0")["index"]):
                    raise Failed(f"{h['name']}'s eth0 lacks {h['address']}/24")
            pid = self.state["pids"][h["name"]]
            if pid not in processes_naming(h["root"]):
                raise Failed(f"{h['name']}'s qiaod (pid {pid}) is not running")
        if self.state["pids"]["etcd"] not in processes_naming(os.path.join(self.root, "etcd")):
            raise Failed("etcd is not running")

    def network(self) -> None:
        say = self.c.say
        self.c.section("one overlay network, a subnet per host")
        self.on("host1", "qiao", "network", "create", "-d", "overlay", "--subnet", OV_RANGE, OV)
        hosts = {h["address"]: h["name"] for h in self.state["hosts"]}
        leases = wait_for(f"a lease in etcd for each of the {HOSTS} hosts", lambda: len(found := self.leases()) == HOSTS and found)
        vni = self.etcd()[OV]["config"]["Backend"]["VNI"]
        if {rec["PublicIP"] for rec in leases.values()} != set(hosts):
            raise Failed(f"the leases in etcd name {sorted(rec['PublicIP'] for rec in leases.values())}, not the hosts {sorted(hosts)}")
        for subnet in leases:
            if not ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network(OV_RANGE)):
                raise Failed(f"lease {subnet} lies outside {OV_RANGE}")
        self.subnets = {hosts[rec["PublicIP"]]: subnet for subnet, rec in sorted(leases.items())}
        self.lease_records, self.vni = leases, vni
        status = self.show("status", expect=f"{OV}:")
        for name, subnet in self.subnets.items():
            if f"{OV}:{subnet}" not in status:
                raise Failed(f"qiao lab status does not show {name}'s lease {subnet}")
        mine = ", ".join(f"{s} for {n}" for n, s in sorted(self.subnets.items()))
        say(
            f"host1 stored the network once, cluster-wide, in etcd (/qiao/overlay/{OV}/config: {OV_RANGE}, VXLAN, VNI {vni}); every "
            f"qiaod saw it through its watch, made the network locally, and leased a /24 of its own with an etcd create transaction "
            f"(/qiao/overlay/{OV}/subnets/<subnet>, tied to the daemon's etcd lease, with its underlay address and VTEP MAC): {mine}."
        )

    def across_hosts(self) -> None:
        say = self.c.say
        subnets = self.subnets
        self.c.section("containers on two hosts talk directly, by name and by address")
        self.on("host1", "qiao", "run", "-d", "--name", "a", "--network", OV, "--", "python3", "-m", "http.server", "80")
        inspect = self.lab("exec", "host1", "--", "qiao", "inspect", "a").stdout
        a_ip = json.loads(inspect)[0]["NetworkSettings"]["Networks"][OV]["IPAddress"]
        if ipaddress.ip_address(a_ip) not in ipaddress.ip_network(subnets["host1"]):
            raise Failed(f"a's address {a_ip} is not in host1's lease {subnets['host1']}")
        self.c.wait_tcp(self.host("host1")["netns"], a_ip, 80)
        self.wait_name("host2", "a", a_ip)
        by_name = 'import socket, urllib.request as u; print(socket.gethostbyname("a"), u.urlopen("http://a", timeout=5).status)'
        self.on("host2", "qiao", "run", "--rm", "--network", OV, "--", "python3", "-c", by_name, expect=f"{a_ip} 200")
        say(
            f"a container on host2 fetched http://a from a on host1 (HTTP 200): host2's resolver knew the name a ({a_ip}, in host1's "
            f"subnet), because each qiaod publishes its containers' names in etcd (/qiao/overlay/{OV}/names/) and every host's "
            "resolver answers them."
        )
        by_ip = f'import urllib.request as u; print(u.urlopen("http://{a_ip}", timeout=5).status)'
        self.on("host2", "qiao", "run", "--rm", "--network", OV, "--", "python3", "-c", by_ip, expect="200")
        log = self.on("host1", "qiao", "logs", "a", expect="GET /")
        clients = [line.split()[0] for line in log.splitlines() if '"GET /' in line]
        if len(clients) != 2 or any(ipaddress.ip_address(c) not in ipaddress.ip_network(subnets["host2"]) for c in clients):
            raise Failed(f"a's clients were {clients}, not two addresses of host2's subnet {subnets['host2']}")
        seen = " and ".join(sorted(set(clients)))
        say(
            f"and by address. a's log shows who came: {seen}, the short-lived containers' own address(es) in host2's subnet "
            f"{subnets['host2']}: each container has its own independent IP and can talk across hosts — no NAT, no port mapping."
        )

    def wait_name(self, host: str, name: str, address: str) -> None:
        """Silently wait until HOST's resolver (on its overlay gateway) answers NAME with ADDRESS."""
        gateway = str(ipaddress.ip_network(self.subnets[host])[1])

        def answered() -> bool:
            with contextlib.suppress(OSError, ValueError), qnetns.entered(f"/run/netns/{self.host(host)['netns']}"):
                reply = DNSRecord.parse(DNSRecord.question(name).send(gateway, 53, timeout=1))
                return address in [str(rr.rdata) for rr in reply.rr]
            return False

        wait_for(f"{host}'s resolver to answer {name}", answered)

    def data_plane(self) -> None:
        say = self.c.say
        vni, leases = self.vni, self.lease_records
        h1 = self.host("host1")
        self.c.section("what qiaod set up on host1: one VXLAN device; per remote host a route, a neighbour, an FDB entry")
        with netlink(h1["netns"]) as ipr:
            underlay_mtu = link_named(ipr, "eth0").get("mtu")
            vxlans = [link for link in ipr.get_links() if link.get(("linkinfo", "kind")) == "vxlan"]
            if len(vxlans) != 1:
                raise Failed(f"host1 has {len(vxlans)} VXLAN devices, not 1")
            dev = vxlans[0].get("ifname")
        self.on("host1", "ip", "-d", "link", "show", dev, expect=f"vxlan id {vni}")
        self.check_vxlan(h1, dev, underlay_mtu - VXLAN_OVERHEAD)
        say(
            f"{dev}: VXLAN with VNI {vni}, UDP port {VXLAN_PORT} (the kernel's historical default, as flannel's), from host1's "
            f"underlay address {h1['address']} on eth0, learning off (nolearning): no entry is ever learnt from traffic; MTU "
            f"{underlay_mtu - VXLAN_OVERHEAD}, the underlay's {underlay_mtu} minus {VXLAN_OVERHEAD}."
        )
        self.on("host1", "ip", "route", "show", "dev", dev, expect="onlink")
        self.on("host1", "ip", "neigh", "show", "dev", dev, expect="PERMANENT")
        self.on("host1", "bridge", "fdb", "show", "dev", dev, expect="permanent")
        remotes = {s: rec for s, rec in leases.items() if rec["PublicIP"] != h1["address"]}
        self.check_peers(h1, dev, remotes)
        say(
            f"for each of the {len(remotes)} other hosts, one route (its /24 via its VTEP address, the .0 of its subnet, onlink), "
            "one permanent neighbour entry (VTEP address -> VTEP MAC) and one FDB entry (VTEP MAC -> its underlay address): flannel's "
            "scheme, all written by qiaod from the leases in etcd — no flooding, no multicast."
        )
        mtu = underlay_mtu - VXLAN_OVERHEAD
        self.on("host2", "qiao", "run", "--rm", "--network", OV, "--", "ip", "link", "show", "eth0", expect=f"mtu {mtu} ")
        say(
            f"inside a container on the overlay, eth0's MTU is {mtu}: the underlay's {underlay_mtu} minus 50 (outer IPv4 20 + UDP 8 + "
            "VXLAN 8 + inner Ethernet 14), so a full-size packet still fits in one underlay frame once encapsulated."
        )

    def check_vxlan(self, h: dict[str, Any], dev: str, mtu: int) -> None:
        with netlink(h["netns"]) as ipr:
            link = link_named(ipr, dev)
            data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            found = {
                "VNI": data.get_attr("IFLA_VXLAN_ID"),
                "port": data.get_attr("IFLA_VXLAN_PORT"),
                "learning": data.get_attr("IFLA_VXLAN_LEARNING"),
                "local": data.get_attr("IFLA_VXLAN_LOCAL"),
                "MTU": link.get("mtu"),
            }
        wanted = {"VNI": self.vni, "port": VXLAN_PORT, "learning": 0, "local": h["address"], "MTU": mtu}
        if found != wanted:
            raise Failed(f"{h['name']}'s {dev}: expected {wanted}, found {found}")

    def check_peers(self, h: dict[str, Any], dev: str, remotes: dict[str, dict[str, Any]]) -> None:
        """Exactly one route, permanent neighbour and FDB entry per remote lease, and nothing else."""
        wanted_routes, wanted_neigh, wanted_fdb = set(), set(), set()
        for subnet, rec in remotes.items():
            vtep = str(ipaddress.ip_network(subnet).network_address)
            mac = rec["BackendData"]["VtepMAC"]
            wanted_routes.add((subnet, vtep))
            wanted_neigh.add((vtep, mac))
            wanted_fdb.add((mac, rec["PublicIP"]))
        with netlink(h["netns"]) as ipr:
            index = link_named(ipr, dev)["index"]
            routes = {
                (f"{r.get('dst')}/{r['dst_len']}", r.get("gateway"))
                for r in ipr.get_routes(family=socket.AF_INET, table=254, oif=index)
                if r.get("gateway")
            }
            neigh = {
                (n.get("dst"), n.get("lladdr"))
                for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
                if n["state"] & NUD_PERMANENT
            }
            fdb = {(n.get("lladdr"), n.get("dst")) for n in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=index)}
        checks = (("routes", routes, wanted_routes), ("neighbours", neigh, wanted_neigh), ("FDB entries", fdb, wanted_fdb))
        for what, found, wanted in checks:
            if found != wanted:
                raise Failed(f"{h['name']}'s {what} on {dev}: expected {sorted(wanted)}, found {sorted(found)}")

    # -- teardown --------------------------------------------------------

    def teardown(self, narrate: bool) -> list[str]:
        """``qiao lab down`` (once), then check that nothing of the lab is left."""
        if self.done or not self.root:
            return []
        state_file = Path(self.root, "lab.json")
        if state_file.exists():
            with contextlib.suppress(OSError, ValueError):
                self.state = json.loads(state_file.read_text())  # also a lab that `up` left half-made
            if narrate:
                self.c.section("qiao lab down: nothing left")
                self.show("down", expect="down")
            else:
                self.lab("down", check=False)
        problems: list[str] = []
        namespaces = [ns for ns in self.state.get("namespaces", []) if os.path.exists(f"/run/netns/{ns}")]
        if namespaces:
            problems.append(f"namespaces {', '.join(namespaces)}")
        mountinfo = Path("/proc/self/mountinfo").read_text()
        if self.root in mountinfo or (self.state.get("id") and f"qlab-{self.state['id']}-" in mountinfo):
            problems.append("a mount")
        if os.path.exists(self.root):
            problems.append(self.root)
        if processes_naming(self.root):
            problems.append(f"processes {processes_naming(self.root)}")
        if narrate and not problems:
            self.c.say(
                f"lab {self.state.get('id')} is gone: its {len(self.state.get('namespaces', []))} namespaces with their links and "
                "containers, etcd and the three qiaods (by PID), and its root — no mount, no file, no process left."
            )
        self.done = True
        return problems
