"""``make demo``: Docker's network modes, working live, on a throw-away host.

Run as root (``.venv/bin/python scripts/demo.py``).  Everything happens on a
simulated host made for this run and removed at the end, also after a
failure or Ctrl-C:

* ``qdemo-<rand>-host``: a network namespace playing the host, with a qiao
  root of its own in a temporary directory ``/tmp/qdemo-<rand>-*``; its uplink
  ``eth0`` is 198.51.100.1/24 with a default route via 198.51.100.2;
* ``qdemo-<rand>-out``: an "outside" machine on the other end of that link
  (``eth0`` 198.51.100.2/24), running a tiny TCP server that answers with the
  source address it saw.

Every ``$ qiao ...`` below is ``nsenter --net=/run/netns/qdemo-<rand>-host --
.venv/bin/qiao --root DIR ...``; the first one starts qiaod in the background.
Traffic goes only to 127.0.0.0/8 and to the namespaces this script makes.
Only processes this script started are ended, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
QIAO = str(BIN / "qiao")
PY = str(BIN / "python") if (BIN / "python").exists() else sys.executable  # for the demo's own silent probes

UPLINK_HOST, UPLINK_OUT, ECHO_PORT = "198.51.100.1", "198.51.100.2", 7000

# The outside machine's server: answers every connection with the source address it saw.
ECHO_SERVER = (
    f'import socket; s = socket.create_server(("", {ECHO_PORT})); print("listening", flush=True); '
    "[(c.sendall(a[0].encode()), c.close()) for c, a in iter(s.accept, None)]"
)


class Failed(Exception):
    pass


class Style:
    def __init__(self, on: bool):
        self.on = on

    def _w(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def cmd(self, text: str) -> str:
        return self._w("1;36", text)

    def note(self, text: str) -> str:
        return self._w("32", text)

    def title(self, text: str) -> str:
        return self._w("1;33", text)

    def dim(self, text: str) -> str:
        return self._w("2", text)

    def bad(self, text: str) -> str:
        return self._w("1;31", text)


class Demo:
    def __init__(self) -> None:
        self.tag = "qdemo-" + secrets.token_hex(2)
        self.host_ns, self.out_ns = f"{self.tag}-host", f"{self.tag}-out"
        self.root = ""
        self.namespaces: list[str] = []
        self.server: subprocess.Popen[str] | None = None
        self.style = Style(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
        self.facts: dict[str, str] = {}

    # -- printing --------------------------------------------------------

    def out(self, text: str = "") -> None:
        print(text, flush=True)

    def section(self, text: str) -> None:
        self.out()
        self.out(self.style.title(f"== {text} =="))

    def say(self, text: str) -> None:
        for line in textwrap.wrap(text, 118, initial_indent="# ", subsequent_indent="#   "):
            self.out(self.style.note(line))

    # -- running ---------------------------------------------------------

    def sh(self, args: list[str], ns: str | None = None, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        full = ["nsenter", f"--net=/run/netns/{ns}", "--", *args] if ns else args
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise Failed(f"{shlex.join(args)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:600]}")
        return proc

    def qiao(self, *args: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        return self.sh([QIAO, "--root", self.root, *args], ns=self.host_ns, check=check, timeout=timeout)

    def setup_cmd(self, *args: str) -> None:
        self.out(self.style.dim("+ " + shlex.join(args)))
        self.sh(list(args))

    def show(self, *args: str, where: str = "host", expect: str | None = None, transform=None) -> str:
        """Print ``$ ARGS``, run it on the host (or the outside machine), print its real output."""
        prompt = "outside$ " if where == "outside" else "$ "
        self.out(self.style.cmd(prompt + shlex.join(args)))
        ns = self.out_ns if where == "outside" else self.host_ns
        proc = self.qiao(*args[1:]) if args[0] == "qiao" else self.sh(list(args), ns=ns)
        text = proc.stdout
        shown = transform(text) if transform else text
        if shown:
            self.out(shown.rstrip("\n"))
        if proc.stderr.strip():
            self.out(proc.stderr.rstrip("\n"))
        if expect is not None and expect not in text:
            raise Failed(f"{shlex.join(args)}: expected {expect!r} in its output")
        return text

    def wait_tcp(self, ns: str, address: str, port: int, timeout: float = 10) -> None:
        """Silently wait until something listens on address:port (seen from namespace ns)."""
        probe = (
            "import socket, sys, time\n"
            f"end = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    try:\n"
            f"        socket.create_connection(({address!r}, {port}), 1).close(); break\n"
            "    except OSError:\n"
            "        if time.monotonic() > end: sys.exit(1)\n"
            "        time.sleep(0.05)\n"
        )
        if self.sh([PY, "-c", probe], ns=ns, check=False, timeout=timeout + 5).returncode != 0:
            raise Failed(f"nothing listens on {address}:{port} after {timeout} s")

    # -- the simulated host ----------------------------------------------

    def build(self) -> None:
        self.root = tempfile.mkdtemp(prefix=f"{self.tag}-")
        os.chmod(self.root, 0o711)
        self.out(self.style.title("qiao demo: Docker's container networking, live, on a throw-away host"))
        self.out(self.style.dim(f"setting up {self.host_ns} (the host), {self.out_ns} (an outside machine), root {self.root}"))
        for ns in (self.host_ns, self.out_ns):
            self.setup_cmd("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        # One veth link between the two: eth0 on each side, created straight in the namespaces.
        self.setup_cmd("ip", "link", "add", "eth0", "netns", self.host_ns, "type", "veth", "peer", "name", "eth0", "netns", self.out_ns)
        self.setup_cmd("ip", "-n", self.host_ns, "addr", "add", f"{UPLINK_HOST}/24", "dev", "eth0")
        self.setup_cmd("ip", "-n", self.out_ns, "addr", "add", f"{UPLINK_OUT}/24", "dev", "eth0")
        for ns in (self.host_ns, self.out_ns):
            self.sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.setup_cmd("ip", "-n", self.host_ns, "route", "add", "default", "via", UPLINK_OUT)
        self.out(self.style.dim(f"`$ qiao` below = nsenter --net=/run/netns/{self.host_ns} -- .venv/bin/qiao --root {self.root}"))
        self.out(self.style.dim(f"`$ ip ...` runs on the host ({self.host_ns}); `outside$ ...` on the outside machine ({self.out_ns})"))

    def start_echo_server(self) -> None:
        self.out(self.style.cmd("outside$ " + shlex.join(["python3", "-c", ECHO_SERVER]) + " &"))
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
        self.section("bridge mode (the default): the docker0 bridge and a veth pair")
        self.show("qiao", "run", "-d", "--name", "web", "--", "python3", "-m", "http.server", "80")
        self.say(
            "qiaod (started in the background by this first command) created the default network `bridge` on the qiao0 bridge, "
            "then gave web a network namespace of its own, plugged in by a veth pair, and started the web server in it."
        )
        info = json.loads(self.qiao("inspect", "web").stdout)[0]["NetworkSettings"]
        ip, mac, gw = info["IPAddress"], info["MacAddress"], info["Gateway"]
        self.facts["web"] = ip
        self.show("ip", "addr", "show", "qiao0", expect="172.17.0.1/16")
        self.say(f"the docker0 bridge: qiao0, up, with {gw}/16 — the gateway of every container on the default bridge network.")
        veth = self.show("ip", "link", "show", "master", "qiao0", expect="veth")
        host_end = veth.split(": ")[1].split("@")[0]
        self.say(
            f"a veth pair: one end in the container as eth0, the other ({host_end}) on the bridge; "
            "its alias qiao:<endpoint id> marks it as qiao's."
        )
        self.show("qiao", "exec", "web", "ip", "addr", expect=mac)
        octets = ".".join(mac.split(":")[2:])
        self.say(
            f"inside web: lo and eth0 with {ip}/16 (the first free address after the gateway) and MAC {mac}: "
            f"02:42 followed by the IPv4 address's bytes ({octets} = {ip}), as Docker did before 28.0."
        )
        self.show("qiao", "exec", "web", "ip", "route", expect=f"default via {gw} dev eth0")
        self.say(f"its default route leads to the bridge: via {gw} (the host), which forwards and NATs for it.")
        self.wait_tcp(self.host_ns, ip, 80)
        fetch = f'import urllib.request as u; print(u.urlopen("http://{ip}/", timeout=5).status)'
        self.show("qiao", "run", "--rm", "--", "python3", "-c", fetch, expect="200")
        self.say(f"another container on the same bridge fetched http://{ip}/ from web (HTTP 200): container to container, across qiao0.")

    def other_modes(self) -> None:
        ip = self.facts["web"]
        self.section("--network none, host and container:web")
        self.show("qiao", "run", "--rm", "--network", "none", "--", "ip", "addr", expect="lo:")
        self.say("--network none: a network namespace of its own with nothing but the loopback interface lo — no eth0, no route.")
        self.show("qiao", "run", "--rm", "--network", "host", "--", "ip", "-br", "addr", expect=UPLINK_HOST)
        self.say(f"--network host: no namespace of its own — the host's own interfaces: eth0 ({UPLINK_HOST}), qiao0 and web's veth.")
        self.show("qiao", "run", "--rm", "--network", "container:web", "--", "ip", "-br", "addr", "show", "eth0", expect=ip)
        self.say(f"--network container:web: web's own network namespace, so the same eth0 and the same address {ip} ...")
        self.show(
            "qiao", "run", "--rm", "--network", "container:web", "--",
            "python3", "-c", 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:80/", timeout=5).status)',
            expect="200",
        )  # fmt: skip
        self.say("... so web's server answers on 127.0.0.1:80 (HTTP 200): two containers, one network stack, as in a Kubernetes pod.")

    def user_network(self) -> None:
        self.section("a user-defined network")
        self.show("qiao", "network", "create", "--subnet", "10.88.0.0/24", "mynet")
        bridge = json.loads(self.qiao("network", "inspect", "mynet").stdout)[0]["Options"].get("com.docker.network.bridge.name", "")
        if not bridge:
            bridge = "br-" + json.loads(self.qiao("network", "inspect", "mynet").stdout)[0]["Id"][:12]
        self.say(f"a user-defined bridge network: a new bridge {bridge} (br- + 12 hex of the network id) with the gateway 10.88.0.1/24.")
        self.show("qiao", "run", "-d", "--name", "app", "--network", "mynet", "--", "python3", "-m", "http.server", "8000")
        self.show("qiao", "exec", "app", "ip", "-br", "addr", "show", "eth0", expect="10.88.0.2/24")
        self.say("app is on mynet: its eth0 has 10.88.0.2/24, the first free address of the subnet given.")
        self.show("ip", "-br", "link", "show", "type", "bridge", expect=bridge)
        self.say(f"two bridges on the host now, one per network: qiao0 (bridge) and {bridge} (mynet).")
        self.wait_tcp(self.host_ns, "10.88.0.2", 8000)
        probe = (
            'import socket; s = socket.socket(); s.settimeout(1); print("no answer" if s.connect_ex(("10.88.0.2", 8000)) else "connected")'
        )
        self.show("qiao", "run", "--rm", "--", "python3", "-c", probe, expect="no answer")
        self.say(
            f"a container on the default bridge cannot reach app on mynet (the host itself can): qiao's forward chain for {bridge} drops "
            "what comes in from another bridge — Docker's isolation between networks."
        )

    def nat_out(self) -> None:
        self.section("NAT out: MASQUERADE through the host's uplink")
        self.start_echo_server()
        self.say(f"the outside machine ({UPLINK_OUT}) runs a tiny TCP server on port {ECHO_PORT}: it replies with the address it saw.")
        self.show(
            "qiao", "run", "--rm", "--", "python3", "-c",
            f'import socket; print(socket.create_connection(("{UPLINK_OUT}", {ECHO_PORT}), 5).recv(64).decode())',
            expect=UPLINK_HOST,
        )  # fmt: skip
        self.say(f"the outside machine saw {UPLINK_HOST}, the host's uplink address, not the container's 172.17.0.x: NAT out, MASQUERADE.")
        self.show("nft", "list", "chain", "inet", "qiao", "nat-out-qiao0", expect="masquerade")
        self.say(
            "the rule that did it, in qiao's own table `inet qiao` (reached from postrouting through a verdict map keyed by bridge name): "
            "masquerade what leaves 172.17.0.0/16 by any interface but qiao0."
        )

    def published_port(self) -> None:
        self.section("a published port (-p): NAT in, without a proxy process")
        self.show("qiao", "run", "-d", "--name", "pub", "-p", "8080:80", "--", "python3", "-m", "http.server", "80")
        pub_ip = json.loads(self.qiao("inspect", "pub").stdout)[0]["NetworkSettings"]["IPAddress"]
        self.wait_tcp(self.host_ns, pub_ip, 80)
        fetch = f'import urllib.request as u; print(u.urlopen("http://{UPLINK_HOST}:8080/", timeout=5).status)'
        self.show("python3", "-c", fetch, where="outside", expect="200")
        self.say(
            f"the outside machine reached pub ({pub_ip}:80) through the host's port 8080: a DNAT by one element of qiao's nft map "
            "`published_any` — no docker-proxy process."
        )
        self.show("qiao", "logs", "pub", expect=UPLINK_OUT)
        self.say(f"pub's log shows the real client, {UPLINK_OUT}: DNAT only, the source address is kept.")

    def overview(self) -> None:
        self.section("what qiao knows: ps, network ls, network inspect")
        self.show("qiao", "ps", expect="web")
        self.show("qiao", "network", "ls", expect="mynet")

        def abridge(text: str) -> str:
            net = json.loads(text)[0]
            keep = {k: net[k] for k in ("Name", "Id", "Driver", "IPAM", "Containers") if k in net}
            keep["Options"] = {k: v for k, v in net.get("Options", {}).items() if k.endswith((".name", ".enable_ip_masquerade"))}
            more_keys, more_options = len(net) - len(keep), len(net.get("Options", {})) - len(keep["Options"])
            return json.dumps([keep], indent=4) + f"\n(abridged: {more_keys} more keys and {more_options} more options)"

        self.show("qiao", "network", "inspect", "bridge", expect='"Name": "bridge"', transform=abridge)
        self.say("Docker's JSON, Docker's keys: web and pub are on `bridge`, each with its address and 02:42 MAC (app is on mynet).")

    # -- teardown --------------------------------------------------------

    def teardown(self, narrate: bool) -> list[str]:
        """Remove everything this run made; returns what could not be removed."""
        problems: list[str] = []
        sock = os.path.join(self.root, "run", "qiao.sock") if self.root else ""
        if sock and os.path.exists(sock):
            if narrate:
                self.section("teardown")
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
                self.out(self.style.cmd(f"$ ip netns del {ns}"))
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.root:
            if narrate:
                self.out(self.style.cmd(f"$ rm -r {self.root}"))
            shutil.rmtree(self.root, ignore_errors=True)
        # What is left, if anything?
        if self.tag in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
            problems.append("a network namespace")
        if self.tag in Path("/proc/self/mountinfo").read_text():
            problems.append("a mount")
        if self.root and os.path.exists(self.root):
            problems.append(self.root)
        if self.root and self._processes():
            problems.append(f"processes {self._processes()}")
        if narrate and not problems:
            self.say(f"nothing of {self.tag} is left: no namespace (nor the links in them), no mount, no file, no process.")
        return problems

    def _processes(self) -> list[int]:
        """PIDs whose command line names this run's root (qiaod, shims)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if self.root.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(int(entry))
        return found

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


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces): sudo make demo", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "nsenter", "nft") if shutil.which(tool) is None]
    if missing or not os.path.exists(QIAO):
        print(f"demo: missing {', '.join(missing) or QIAO}; run `make setup` first", file=sys.stderr)
        return 1

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (a background job)
        signal.signal(sig, interrupted)
    demo = Demo()
    started = time.monotonic()
    status = 0
    try:
        demo.build()
        demo.bridge_mode()
        demo.other_modes()
        demo.user_network()
        demo.nat_out()
        demo.published_port()
        demo.overview()
    except KeyboardInterrupt:
        print(demo.style.bad("\ndemo: interrupted; cleaning up"), flush=True)
        status = 130
    except (Failed, subprocess.TimeoutExpired, OSError) as exc:
        print(demo.style.bad(f"demo: FAILED: {exc}"), flush=True)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # let the teardown finish
        problems = demo.teardown(narrate=status == 0)
        if problems:
            print(demo.style.bad(f"demo: could not remove: {', '.join(problems)}"), flush=True)
            status = status or 1
    if status == 0:
        print(demo.style.title(f"\ndemo finished in {time.monotonic() - started:.1f} s"))
    return status


if __name__ == "__main__":
    sys.exit(main())
