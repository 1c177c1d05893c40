"""containerd 1.6 and ``ctr run --cni`` in a throw-away test host, with Debian's
reference CNI plugins (``bridge`` + ``host-local``): the proof that the harness
in ``engines.py`` works, before a plugin of qiao's is pointed at it.

The conflist and the plugin dir are the test's own (see ``engines.py`` for how
ctr is made to use them); the bridge lives in the test host's namespace only,
and host-local keeps its leases in the test's temp dir.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import RUN, Namespace, sh
from tests.integration.engines import BUSYBOX, CNI_PLUGINS, Containerd, busybox_archive, busybox_image, link_plugins

PLUGINS = ("bridge", "host-local", "loopback", "portmap", "tuning")
SUBNET = ipaddress.ip_network("10.77.7.0/24")
NEEDS = [shutil.which(tool) for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2")]

pytestmark = [
    pytest.mark.skipif(not all(NEEDS), reason="containerd, ctr and runc are not installed (scripts/setup.sh installs them)"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason=f"no {BUSYBOX} (busybox-static)"),
    pytest.mark.skipif(
        not all(os.path.exists(os.path.join(CNI_PLUGINS, p)) for p in PLUGINS),
        reason=f"no CNI reference plugins in {CNI_PLUGINS} (containernetworking-plugins)",
    ),
    pytest.mark.usefixtures("no_containers"),
]


@dataclass
class Engine:
    ctrd: Containerd
    host: Namespace
    ref: str  # the busybox image
    network: str  # the conflist's name
    bridge: str
    leases: Path  # host-local's dataDir for this network

    def addresses(self) -> dict[str, str]:
        """host-local's leases: address -> CNI container id."""
        if not self.leases.is_dir():
            return {}
        return {name: (self.leases / name).read_text().splitlines()[0] for name in os.listdir(self.leases) if _is_address(name)}

    def ports(self) -> list[str]:
        """The interfaces plugged into the bridge, in the test host."""
        out = self.host.sh("ip", "-o", "link", "show", "master", self.bridge).stdout
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]

    def cached_results(self) -> list[str]:
        """libcni's ADD results that no DEL has removed yet (ctr's /var/lib/cni/results)."""
        results = self.ctrd.cni_cache / "results"
        return sorted(os.listdir(results)) if results.is_dir() else []


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def conflist(name: str, bridge: str, data_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(SUBNET)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            }
        ],
    }


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    host = Namespace("ctr")
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-ctr-"))
    ctrd: Containerd | None = None
    try:
        conf_dir = tmp / "net.d"
        conf_dir.mkdir()
        bin_dir = link_plugins(tmp / "bin", PLUGINS)
        network, bridge = f"{RUN}-ref", f"{RUN}-cni0"
        (conf_dir / "10-ref.conflist").write_text(json.dumps(conflist(network, bridge, tmp / "ipam"), indent=2))
        archive, ref = busybox_image(tmp)
        ctrd = Containerd(host, tmp, conf_dir, bin_dir)
        ctrd.import_image(archive)
        yield Engine(ctrd, host, ref, network, bridge, tmp / "ipam" / network)
    finally:
        if ctrd is not None:
            ctrd.close()
        host.delete()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def no_containers(engine: Engine) -> Iterator[None]:
    """No container outlives its test (the engine is shared by the module)."""
    yield
    engine.ctrd.remove_containers()


def eth0_address(pid: int) -> ipaddress.IPv4Interface:
    """The IPv4 address on eth0 in the netns of process ``pid`` (a task's)."""
    out = sh("nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    return ipaddress.IPv4Interface(out.split()[3])


def test_image_is_deterministic(engine: Engine) -> None:
    blob = Path(BUSYBOX).read_bytes()
    assert busybox_archive(blob, engine.ref) == busybox_archive(blob, engine.ref)
    assert engine.ref in engine.ctrd.ctr("images", "ls", "-q").stdout.split()


def test_run_gets_an_address_from_the_subnet(engine: Engine) -> None:
    out = engine.ctrd.ctr("run", "--cni", "--rm", engine.ref, "addr", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    addr = ipaddress.IPv4Interface(out.split()[3])
    assert addr.network == SUBNET and addr.ip != SUBNET[1], out  # .1 is the bridge's (isGateway)
    gateway = engine.host.sh("ip", "-4", "-o", "addr", "show", "dev", engine.bridge).stdout
    assert f"{SUBNET[1]}/{SUBNET.prefixlen}" in gateway
    # foreground: ctr ran DEL after the exit, and --rm removed the container
    assert engine.addresses() == {}
    assert engine.cached_results() == []
    assert engine.ports() == []
    assert "addr" not in engine.ctrd.containers()
    # the bridge is in the test host only
    assert sh("ip", "link", "show", engine.bridge, check=False).returncode != 0


def test_server_reachable_by_address_and_del_on_exit(engine: Engine) -> None:
    ctrd = engine.ctrd
    server = ctrd.ctr_popen("run", "--cni", "--rm", engine.ref, "srv", "httpd", "-f", "-p", "80", "-h", "/www")
    pid = ctrd.wait_running("srv", server)
    addr = eth0_address(pid)
    assert addr.network == SUBNET
    assert engine.addresses() == {str(addr.ip): ctrd.cni_id("srv")}
    assert engine.cached_results() == [f"{engine.network}-{ctrd.cni_id('srv')}-eth0"]
    [veth] = engine.ports()

    client = ctrd.ctr("run", "--cni", "--rm", engine.ref, "cli", "timeout", "10", "wget", "-q", "-O", "-", f"http://{addr.ip}/")
    assert client.stdout == "hello from busybox\n"
    assert list(engine.addresses().values()) == [ctrd.cni_id("srv")]  # the client's lease is released

    ctrd.ctr("tasks", "kill", "--signal", "SIGKILL", "srv")
    try:
        assert server.wait(30) == 137, server.communicate()
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.communicate(timeout=5)
    # ctr saw the exit and ran DEL: lease and cached result gone; the veth went with the netns
    assert engine.addresses() == {}
    assert engine.cached_results() == []
    assert veth not in engine.ports() and engine.ports() == []
    assert "srv" not in ctrd.containers()
