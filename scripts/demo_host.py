"""Part one of ``make demo``: one host, Docker's network modes and user networks.

Everything happens on a simulated host made for this run and removed at the
end, also after a failure or Ctrl-C:

* ``qdemo-<rand>-host``: a network namespace playing the host, with a qiao
  root of its own in a temporary directory ``/tmp/qdemo-<rand>-*``; its uplink
  ``eth0`` is 198.51.100.1/24 with a default route via 198.51.100.2;
* ``qdemo-<rand>-out``: an "outside" machine on the other end of that link
  (``eth0`` 198.51.100.2/24), running a tiny TCP server that answers with the
  source address it saw.

Every ``$ qiao ...`` here is ``nsenter --net=/run/netns/qdemo-<rand>-host --
.venv/bin/qiao --root DIR ...``; the first one starts qiaod in the background.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from demo_common import PY, QIAO, Console, Failed, link_named, netlink, processes_naming

UPLINK_HOST, UPLINK_OUT, ECHO_PORT = "198.51.100.1", "198.51.100.2", 7000

# The outside machine's server: answers every connection with the source address it saw.
ECHO_SERVER = (
    f'import socket; s = socket.create_server(("", {ECHO_PORT})); print("listening", flush=True); '
    "[(c.sendall(a[0].encode()), c.close()) for c, a in iter(s.accept, None)]"
)


def refused_probe(address: str, port: int) -> str:
    """Python for a container: prints "connected" or "no answer" (1 s) for address:port."""
    return (
        f'import socket; s = socket.socket(); s.settimeout(1); print("no answer" if s.connect_ex(("{address}", {port})) else "connected")'
    )


class HostDemo:
    def __init__(self, console: Console, tag: str) -> None:
        self.c = console
        self.tag = tag
        self.host_ns, self.out_ns = f"{tag}-host", f"{tag}-out"
        self.root = ""
        self.namespaces: list[str] = []
        self.server: subprocess.Popen[str] | None = None
        self.facts: dict[str, str] = {}
        self.done = False

    # -- running ---------------------------------------------------------

    def qiao(self, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return self.c.sh([QIAO, "--root", self.root, *args], ns=self.host_ns, check=check, timeout=timeout)

    def setup_cmd(self, *args: str) -> None:
        self.c.dim("+ " + shlex.join(args))
        self.c.sh(list(args))

    def show(
        self,
        *args: str,
        where: str = "host",
        expect: str | None = None,
        transform: Callable[[str], str] | None = None,
        check: bool = True,
    ) -> str:
        """Print ``$ ARGS``, run it on the host (or the outside machine), print its real output
        (``check=False``: a failing exit status is part of what is shown)."""
        ns = self.out_ns if where == "outside" else self.host_ns

        def run() -> subprocess.CompletedProcess[str]:
            return self.qiao(*args[1:], check=check) if args[0] == "qiao" else self.c.sh(list(args), ns=ns, check=check)

        return self.c.show(list(args), run, prompt="outside$ " if where == "outside" else "$ ", expect=expect, transform=transform)

    # -- the simulated host ----------------------------------------------

    def run(self) -> None:
        self.build()
        self.bridge_mode()
        self.other_modes()
        self.user_networks()
        self.nat_out()
        self.published_port()
        self.overview()
        self.understanding()

    def build(self) -> None:
        self.root = tempfile.mkdtemp(prefix=f"{self.tag}-")
        os.chmod(self.root, 0o711)
        self.c.part("Part 1: one host — Docker's network modes, NAT, published ports and user networks")
        self.c.dim(f"setting up {self.host_ns} (the host), {self.out_ns} (an outside machine), root {self.root}")
        for ns in (self.host_ns, self.out_ns):
            self.setup_cmd("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.c.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # One veth link between the two: eth0 on each side, created straight in the namespaces.
        self.setup_cmd("ip", "link", "add", "eth0", "netns", self.host_ns, "type", "veth", "peer", "name", "eth0", "netns", self.out_ns)
        self.setup_cmd("ip", "-n", self.host_ns, "addr", "add", f"{UPLINK_HOST}/24", "dev", "eth0")
        self.setup_cmd("ip", "-n", self.out_ns, "addr", "add", f"{UPLINK_OUT}/24", "dev", "eth0")
        for ns in (self.host_ns, self.out_ns):
            self.c.sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.setup_cmd("ip", "-n", self.host_ns, "route", "add", "default", "via", UPLINK_OUT)
        self.c.dim(f"`$ qiao` below = nsenter --net=/run/netns/{self.host_ns} -- .venv/bin/qiao --root {self.root}")
        self.c.dim(f"`$ ip ...` runs on the host ({self.host_ns}); `outside$ ...` on the outside machine ({self.out_ns})")

    def start_echo_server(self) -> None:
        self.c.out(self.c.style.cmd("outside$ " + shlex.join(["python3", "-c", ECHO_SERVER]) + " &"))
        self.server = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.out_ns}", "--", PY, "-c", ECHO_SERVER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the demo, which then ends the server by PID
        )
        assert self.server.stdout is not None
        ready, _, _ = select.select([self.server.stdout], [], [], 10)
        if not ready or self.server.stdout.readline().strip() != "listening":
            raise Failed("the outside machine's TCP server did not start")

    # -- the story -------------------------------------------------------

    def bridge_mode(self) -> None:
        say = self.c.say
        self.c.section("bridge mode (the default): the docker0 bridge and a veth pair")
        self.show("qiao", "run", "-d", "--name", "web", "--", "python3", "-m", "http.server", "80")
        say(
            "qiaod (started in the background by this first command) created the default network `bridge` on the qiao0 bridge, "
            "then gave web a network namespace of its own, plugged in by a veth pair, and started the web server in it."
        )
        info = json.loads(self.qiao("inspect", "web").stdout)[0]["NetworkSettings"]
        ip, mac, gw = info["IPAddress"], info["MacAddress"], info["Gateway"]
        self.facts["web"] = ip
        self.show("ip", "addr", "show", "qiao0", expect="172.17.0.1/16")
        say(f"the docker0 bridge: qiao0, up, with {gw}/16 — the gateway of every container on the default bridge network.")
        self.show("ip", "link", "show", "master", "qiao0", expect="veth")
        with netlink(self.host_ns) as ipr:
            qiao0 = link_named(ipr, "qiao0")["index"]
            ports = [link.get("ifname") for link in ipr.get_links() if link.get("master") == qiao0]
        if len(ports) != 1 or not ports[0].startswith("veth"):
            raise Failed(f"expected one veth on qiao0, found {ports}")
        host_end = ports[0]
        say(
            f"a veth pair: one end in the container as eth0, the other ({host_end}) on the bridge; "
            "its alias qiao:<endpoint id> marks it as qiao's."
        )
        self.show("qiao", "exec", "web", "ip", "addr", expect=mac)
        octets = ".".join(mac.split(":")[2:])
        say(
            f"inside web: lo and eth0 with {ip}/16 (the first free address after the gateway) and MAC {mac}: "
            f"02:42 followed by the IPv4 address's bytes ({octets} = {ip}), as Docker did before 28.0."
        )
        self.show("qiao", "exec", "web", "ip", "route", expect=f"default via {gw} dev eth0")
        say(f"its default route leads to the bridge: via {gw} (the host), which forwards and NATs for it.")
        self.c.wait_tcp(self.host_ns, ip, 80)
        fetch = f'import urllib.request as u; print(u.urlopen("http://{ip}/", timeout=5).status)'
        self.show("qiao", "run", "--rm", "--", "python3", "-c", fetch, expect="200")
        say(f"another container on the same bridge fetched http://{ip}/ from web (HTTP 200): container to container, across qiao0.")

    def other_modes(self) -> None:
        say = self.c.say
        ip = self.facts["web"]
        self.c.section("--network none, host and container:web")
        self.show("qiao", "run", "--rm", "--network", "none", "--", "ip", "addr", expect="lo:")
        say("--network none: a network namespace of its own with nothing but the loopback interface lo — no eth0, no route.")
        self.show("qiao", "run", "--rm", "--network", "host", "--", "ip", "-br", "addr", expect=UPLINK_HOST)
        say(f"--network host: no namespace of its own — the host's own interfaces: eth0 ({UPLINK_HOST}), qiao0 and web's veth.")
        self.show("qiao", "run", "--rm", "--network", "container:web", "--", "ip", "-br", "addr", "show", "eth0", expect=ip)
        say(f"--network container:web: web's own network namespace, so the same eth0 and the same address {ip} ...")
        self.show(
            "qiao", "run", "--rm", "--network", "container:web", "--",
            "python3", "-c", 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:80/", timeout=5).status)',
            expect="200",
        )  # fmt: skip
        say("... so web's server answers on 127.0.0.1:80 (HTTP 200): two containers, one network stack, as in a Kubernetes pod.")

    def user_networks(self) -> None:
        say = self.c.say
        self.c.section("user-defined networks: a bridge each, names by DNS, isolation; --link on the default bridge")
        self.show("qiao", "network", "create", "--subnet", "10.88.0.0/24", "mynet")
        bridge = "br-" + json.loads(self.qiao("network", "inspect", "mynet").stdout)[0]["Id"][:12]
        say(f"a user-defined bridge network: a new bridge {bridge} (br- + 12 hex of the network id) with the gateway 10.88.0.1/24.")
        self.show("qiao", "run", "-d", "--name", "app", "--network", "mynet", "--", "python3", "-m", "http.server", "8000")
        self.show("qiao", "exec", "app", "ip", "-br", "addr", "show", "eth0", expect="10.88.0.2/24")
        self.show("ip", "-br", "link", "show", "type", "bridge", expect=bridge)
        say(f"app is on mynet with 10.88.0.2/24, the first free address of the subnet given; one bridge per network: qiao0 and {bridge}.")
        self.c.wait_tcp(self.host_ns, "10.88.0.2", 8000)
        self.show("qiao", "run", "--rm", "--network", "mynet", "--", "cat", "/etc/resolv.conf", expect="nameserver 10.88.0.1")
        fetch = 'import socket, urllib.request as u; print(socket.gethostbyname("app"), u.urlopen("http://app:8000/", timeout=5).status)'
        self.show("qiao", "run", "--rm", "--network", "mynet", "--", "python3", "-c", fetch, expect="10.88.0.2 200")
        say(
            "a second container on mynet reached app by its name: its resolv.conf names the gateway 10.88.0.1, where qiaod's "
            "embedded resolver (port 53, in the host's namespace) answers the names of mynet's containers from memory."
        )
        self.show("qiao", "network", "create", "--subnet", "10.99.0.0/24", "other")
        probe = refused_probe("10.88.0.2", 8000)
        self.show("qiao", "run", "--rm", "--network", "other", "--", "python3", "-c", probe, expect="no answer")
        say(
            "a container on the network `other` cannot reach app (the host itself can): mynet's forward chain drops what comes "
            "in from another bridge — Docker's isolation between networks."
        )
        link = (
            'import urllib.request as u; print(open("/etc/hosts").read().splitlines()[-1]); print(u.urlopen("http://w/", timeout=5).status)'
        )
        text = self.show("qiao", "run", "--rm", "--link", "web:w", "--", "python3", "-c", link, expect="200")
        line = text.splitlines()[0].split()
        if line[:1] != [self.facts["web"]] or not {"w", "web"} <= set(line[1:]):
            raise Failed(f"--link web:w: expected a line in /etc/hosts naming {self.facts['web']} w and web, got {line}")
        say(
            f"--link web:w (default bridge only, as in Docker): a line in /etc/hosts names web's {self.facts['web']} as w, "
            "its short id and web; and http://w/ answers."
        )

    def nat_out(self) -> None:
        say = self.c.say
        self.c.section("NAT out: MASQUERADE through the host's uplink")
        self.start_echo_server()
        say(f"the outside machine ({UPLINK_OUT}) runs a tiny TCP server on port {ECHO_PORT}: it replies with the address it saw.")
        self.show(
            "qiao", "run", "--rm", "--", "python3", "-c",
            f'import socket; print(socket.create_connection(("{UPLINK_OUT}", {ECHO_PORT}), 5).recv(64).decode())',
            expect=UPLINK_HOST,
        )  # fmt: skip
        say(f"the outside machine saw {UPLINK_HOST}, the host's uplink address, not the container's 172.17.0.x: NAT out, MASQUERADE.")
        self.show("nft", "list", "chain", "inet", "qiao", "nat-out-qiao0", expect="masquerade")
        say(
            "the rule that did it, in qiao's own table `inet qiao` (reached from postrouting through a verdict map keyed by bridge name): "
            "masquerade what leaves 172.17.0.0/16 by any interface but qiao0."
        )

    def published_port(self) -> None:
        say = self.c.say
        self.c.section("a published port (-p): NAT in, without a proxy process")
        self.show("qiao", "run", "-d", "--name", "pub", "-p", "8080:80", "--", "python3", "-m", "http.server", "80")
        pub_ip = json.loads(self.qiao("inspect", "pub").stdout)[0]["NetworkSettings"]["IPAddress"]
        self.c.wait_tcp(self.host_ns, pub_ip, 80)
        fetch = f'import urllib.request as u; print(u.urlopen("http://{UPLINK_HOST}:8080/", timeout=5).status)'
        self.show("python3", "-c", fetch, where="outside", expect="200")
        say(
            f"the outside machine reached pub ({pub_ip}:80) through the host's port 8080: a DNAT by one element of qiao's nft map "
            "`published_any` — no docker-proxy process."
        )
        self.show("qiao", "logs", "pub", expect=UPLINK_OUT)
        say(f"pub's log shows the real client, {UPLINK_OUT}: DNAT only, the source address is kept.")

    def overview(self) -> None:
        self.c.section("what qiao knows: ps, network ls, network inspect")
        self.show("qiao", "ps", expect="web")
        self.show("qiao", "network", "ls", expect="mynet")

        def abridge(text: str) -> str:
            net = json.loads(text)[0]
            keep = {k: net[k] for k in ("Name", "Id", "Driver", "IPAM", "Containers") if k in net}
            keep["Options"] = {k: v for k, v in net.get("Options", {}).items() if k.endswith((".name", ".enable_ip_masquerade"))}
            more_keys, more_options = len(net) - len(keep), len(net.get("Options", {})) - len(keep["Options"])
            return json.dumps([keep], indent=4) + f"\n(abridged: {more_keys} more keys and {more_options} more options)"

        self.show("qiao", "network", "inspect", "bridge", expect='"Name": "bridge"', transform=abridge)
        self.c.say("Docker's JSON, Docker's keys: web and pub are on `bridge`, each with its address and 02:42 MAC (app is on mynet).")

    def understanding(self) -> None:
        say = self.c.say
        self.c.section("seeing it: qiao explain, qiao topology, qiao trace")
        run = ("run", "-d", "--name", "api", "--network", "mynet", "-p", "8081:8000", "--", "python3", "-m", "http.server")
        self.show("qiao", "explain", *run, expect="ip link add")
        say("explain: the kernel steps a run would take, as real ip/nft commands, each with a sentence; nothing was changed.")
        self.show("qiao", "topology", expect="qiao0")
        say("topology: what exists now, read from the kernel and the store: bridges, veth pairs, containers, ports.")
        self.show("qiao", "run", "-d", "--name", "stranger", "--network", "other", "--", "sleep", "300")
        self.show("qiao", "trace", "stranger", "app:8000", expect="isolated: different networks", check=False)
        say("trace: one real probe with nftables tracing on for it alone; the rule that dropped it, in Docker's terms.")
        self.show("qiao", "trace", "outside", "pub:80", expect="delivered")
        say("from the outside machine to pub's published port: the DNAT by the map element, and the SYN delivered to pub.")

    # -- teardown --------------------------------------------------------

    def teardown(self, narrate: bool) -> list[str]:
        """Remove everything this part made (once); returns what could not be removed."""
        if self.done:
            return []
        problems: list[str] = []
        sock = os.path.join(self.root, "run", "qiao.sock") if self.root else ""
        if sock and os.path.exists(sock):
            if narrate:
                self.c.section("teardown of the host")
            with contextlib.suppress(Exception):
                ids = self.qiao("ps", "-aq", check=False, timeout=10).stdout.split()
                names = [json.loads(self.qiao("inspect", i, check=False).stdout or "[{}]")[0].get("Name", i).lstrip("/") for i in ids]
                if names:
                    if narrate:
                        self.show("qiao", "rm", "-f", *names)
                    else:
                        self.qiao("rm", "-f", *names, check=False, timeout=40)
            with contextlib.suppress(Exception):
                if narrate:
                    self.show("qiao", "daemon", "stop", expect="stopped")
                else:
                    self.qiao("daemon", "stop", check=False, timeout=15)
        if self.server is not None:
            self.server.kill()
            self.server.wait()
            if self.server.stdout:
                self.server.stdout.close()
        if self.root:
            self._kill_leftovers()
            netns_dir = os.path.join(self.root, "run", "netns")
            if os.path.isdir(netns_dir):
                for entry in os.listdir(netns_dir):
                    subprocess.run(["umount", "-l", os.path.join(netns_dir, entry)], capture_output=True)
        for ns in reversed(self.namespaces):
            if narrate:
                self.c.out(self.c.style.cmd(f"$ ip netns del {ns}"))
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.root:
            if narrate:
                self.c.out(self.c.style.cmd(f"$ rm -r {self.root}"))
            shutil.rmtree(self.root, ignore_errors=True)
        # What is left, if anything?
        mountinfo = Path("/proc/self/mountinfo").read_text()
        if any(f"/run/netns/{ns} " in mountinfo or os.path.exists(f"/run/netns/{ns}") for ns in self.namespaces):
            problems.append("a network namespace")
        if self.root and self.root in mountinfo:
            problems.append("a mount")
        if self.root and os.path.exists(self.root):
            problems.append(self.root)
        if self.root and processes_naming(self.root):
            problems.append(f"processes {processes_naming(self.root)}")
        if narrate and not problems:
            self.c.say(f"nothing of {self.tag}-host is left: no namespace (nor the links in them), no mount, no file, no process.")
        self.done = True
        return problems

    def _kill_leftovers(self) -> None:
        """End, by PID, what this run started and something failed to stop: container
        processes and shims (from our store), then our qiaod (from our pid file)."""
        pids: list[int] = []
        db = os.path.join(self.root, "lib", "qiao.db")
        if os.path.exists(db):
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db)) as conn:
                for (body,) in conn.execute("SELECT body FROM containers"):
                    ctr = json.loads(body)
                    if ctr.get("status") == "running":
                        pids += [p for p in (ctr.get("pid"), ctr.get("shim_pid")) if p]
        with contextlib.suppress(OSError, ValueError):
            daemon = int(Path(self.root, "run", "qiaod.pid").read_text().strip())
            cmdline = Path(f"/proc/{daemon}/cmdline").read_bytes()
            if self.root.encode() in cmdline and b"qiao.daemon" in cmdline:
                pids.append(daemon)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
