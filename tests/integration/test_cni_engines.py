"""qiao's CNI plugin driven by engines no one here wrote: containerd 1.6
(``ctr run --cni``) and Podman 4 with its CNI backend, each in a throw-away
test host with qiaod, using the conflist that ``qiao cni install`` writes.

* ctr: eth0 on qiao's bridge; a container reaches another by name (qiao's
  resolver, given to the container as the result's ``dns`` says) and an
  outside machine through NAT; the task's exit runs DEL and nothing is left;
* a chain ``qiao`` -> reference ``portmap`` -> reference ``tuning`` works
  (qiao's result is their ``prevResult``), and DEL runs through it;
* Podman: ``podman run --network qnet`` gets qiao's address, and names resolve.

The harness (private containerd, CNI dirs, busybox image) is in engines.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import QIAO, RUN, Host, sh, wait_for
from tests.integration.engines import BUSYBOX, CNI_PLUGINS, Containerd, PrivateMounts, busybox_image, link_plugins
from tests.integration.test_user_networks import PY, SERVER

NEEDS = [shutil.which(tool) for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2")]
SUBNET, GATEWAY = "10.89.0.0/24", "10.89.0.1"
NETWORK = f"{RUN}q"

pytestmark = [
    pytest.mark.skipif(not all(NEEDS), reason="containerd, ctr and runc are not installed (scripts/setup.sh installs them)"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason=f"no {BUSYBOX} (busybox-static)"),
]


@dataclass
class Node:
    """A test host running qiaod and a containerd whose ctr uses qiao's conflist."""

    host: Host
    ctrd: Containerd
    tmp: Path
    ref: str
    conf_dir: Path
    bin_dir: Path
    resolv: Path  # what a runtime would write from the result's dns: qiao's resolver

    def attached(self) -> list[str]:
        """Names of what is attached to the network, as ``qiao network inspect`` lists it."""
        got = json.loads(self.host.qiao("network", "inspect", NETWORK).stdout)[0]["Containers"]
        return sorted(c["Name"] for c in got.values())

    def run(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        mount = f"type=bind,src={self.resolv},dst=/etc/resolv.conf,options=rbind:ro"
        return self.ctrd.ctr("run", "--cni", "--rm", "--mount", mount, self.ref, name, *cmd, check=check)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    host = Host("cq")
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-cq-"))
    ctrd: Containerd | None = None
    try:
        conf_dir, bin_dir = tmp / "net.d", tmp / "bin"
        installed = sh(QIAO, "--root", host.root, "cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
                       "--network", NETWORK, "--subnet", SUBNET)  # fmt: skip
        assert Path(installed.stdout.strip()).parent == conf_dir
        resolv = tmp / "resolv.conf"
        resolv.write_text(f"nameserver {GATEWAY}\n")
        archive, ref = busybox_image(tmp)
        ctrd = Containerd(host, tmp, conf_dir, bin_dir)
        ctrd.import_image(archive)
        yield Node(host, ctrd, tmp, ref, conf_dir, bin_dir, resolv)
    finally:
        if ctrd is not None:
            ctrd.close()
        host.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def no_containers(node: Node) -> Iterator[None]:
    yield
    node.ctrd.remove_containers()


pytestmark.append(pytest.mark.usefixtures("no_containers"))


def test_conflist_from_qiao_cni_install(node: Node) -> None:
    [path] = node.conf_dir.iterdir()
    conf = json.loads(path.read_text())
    assert conf["plugins"] == [
        {
            "type": "qiao",
            "network": NETWORK,
            "subnet": SUBNET,
            "qiaoRoot": node.host.root,
            "capabilities": {"portMappings": True, "ips": True, "mac": True},
        }
    ]
    assert os.readlink(node.bin_dir / "qiao").endswith("/qiao-cni")
    again = sh(QIAO, "cni", "install", "--bin-dir", str(node.bin_dir), "--conf-dir", str(node.conf_dir), "--network", NETWORK,
               "--subnet", SUBNET, "--root", node.host.root, check=False)  # fmt: skip
    assert again.returncode != 0  # --root after the subcommand is not an option of it: one usage error
    foreign = node.conf_dir / f"10-qiao-{RUN}x.conflist"
    foreign.write_text("{}")
    try:
        refused = sh(QIAO, "cni", "install", "--bin-dir", str(node.bin_dir), "--conf-dir", str(node.conf_dir), "--network", f"{RUN}x",
                     check=False)  # fmt: skip
        assert refused.returncode == 1 and "did not write it" in refused.stderr and foreign.read_text() == "{}"
    finally:
        foreign.unlink()


def test_ctr_run_gets_eth0_on_qiaos_bridge_and_del_runs_on_exit(node: Node) -> None:
    out = node.run("t1", "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert " 10.89.0." in out and "/24" in out, out
    mac = node.run("t2", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac.startswith("02:42:0a:59:00:")
    assert node.attached() == []  # ctr's DEL after each exit


def test_containers_reach_each_other_by_name_and_the_outside_through_nat(node: Node) -> None:
    outside = node.host.add_outside(f"o{len(node.host.links)}", subnet="198.51.100")
    server_out = outside.popen(PY, "-c", SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv = node.ctrd.ctr_popen("run", "--cni", "--rm", node.ref, "srv", "httpd", "-f", "-p", "80", "-h", "/www")
        node.ctrd.wait_running("srv", srv)
        name = node.ctrd.cni_id("srv")  # ctr's CNI_CONTAINERID: qiao's DNS name for it
        assert node.attached() == [name]
        got = node.run("cli", "timeout", "10", "wget", "-q", "-O", "-", f"http://{name}/")
        assert got.stdout == "hello from busybox\n"
        seen = node.run("nat", "sh", "-c", "timeout 10 nc 198.51.100.2 7000 </dev/null").stdout
        assert seen.strip() == "198.51.100.1"  # masqueraded by the host
        node.ctrd.ctr("tasks", "kill", "--signal", "SIGKILL", "srv")
        assert srv.wait(30) == 137, srv.communicate()
        srv.communicate(timeout=5)
        wait_for("DEL of srv", lambda: node.attached() == [])
        veths = [line for line in node.host.sh("ip", "-o", "link", "show", "type", "veth").stdout.splitlines() if ": veth" in line]
        assert not veths, veths  # qiao's (the outside machine's link stays)
    finally:
        server_out.kill()
        server_out.wait()


def test_chain_qiao_then_reference_portmap_and_tuning(node: Node) -> None:
    chain_dir = node.tmp / "net.d-chain"
    chain_dir.mkdir(exist_ok=True)
    plugins = [
        {"type": "qiao", "network": NETWORK, "subnet": SUBNET, "qiaoRoot": node.host.root},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}, "mtu": 1400},
    ]
    (chain_dir / "10-chain.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "plugins": plugins}))
    link_plugins(node.bin_dir, ["portmap", "tuning"], CNI_PLUGINS)
    node.ctrd.cni_conf_dir = str(chain_dir)
    try:
        out = node.run("ch", "sh", "-c", "cat /proc/sys/net/core/somaxconn /sys/class/net/eth0/mtu; ip -o -4 addr show dev eth0").stdout
        somaxconn, mtu, addr = out.splitlines()
        assert (somaxconn, mtu) == ("512", "1400") and " 10.89.0." in addr  # tuning found eth0 in qiao's result
        assert node.attached() == []  # DEL ran through the chain (tuning, portmap, qiao)
    finally:
        node.ctrd.cni_conf_dir = str(node.conf_dir)
        for name in ("portmap", "tuning"):
            (node.bin_dir / name).unlink(missing_ok=True)


# -- Podman ------------------------------------------------------------------------

PODMAN = shutil.which("podman")


def test_podman_with_its_cni_backend(node: Node) -> None:
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/setup.sh installs it)")
    base = node.tmp / "podman"
    base.mkdir(exist_ok=True)
    conf = base / "containers.conf"
    conf.write_text(
        f"""[network]
network_backend = "cni"
cni_plugin_dirs = ["{node.bin_dir}"]
network_config_dir = "{node.conf_dir}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
"""
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "XDG_CONFIG_HOME": str(base / "xdg")}
    # Podman's blob cache and libcni's result cache are machine paths: the test's own dirs there
    dirs = {"/var/lib/containers": base / "lib", "/var/lib/cni": base / "cni"}
    for d in (*dirs.values(), base / "layers"):
        d.mkdir(exist_ok=True)
    argv = [PODMAN, "--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs"]
    mounts = PrivateMounts(node.host.path, base / "layers", dirs)  # one for all commands: Podman's netns mounts live there

    # Podman asks runc for more open files and processes than a sandbox's hard limits may allow (runc then fails)
    limits = ["--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"]

    def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[0] == "run":
            args = ("run", *limits, *args[1:])
        return sh(*mounts.argv([*argv, *args]), check=check, env=env, timeout=120)

    try:
        rootfs = _rootfs_tar(node.tmp)
        podman("import", str(rootfs), "localhost/bbp:local")
        first = podman("run", "--rm", "--network", NETWORK, "localhost/bbp:local", "ip", "-o", "addr", "show", "dev", "eth0", check=False)
        if first.returncode != 0:
            pytest.skip(f"podman cannot start containers here: {first.stderr.strip().splitlines()[-1]}")
        assert " 10.89.0." in first.stdout
        podman("run", "-d", "--name", "pa", "--network", NETWORK, "localhost/bbp:local", "httpd", "-f", "-p", "80", "-h", "/www")
        assert "pa" in node.attached()  # Podman passes K8S_POD_NAME: the container's name
        got = podman(
            "run", "--rm", "--network", NETWORK, "--dns", GATEWAY, "localhost/bbp:local", "timeout", "10", "wget", "-qO-", "http://pa/"
        )
        assert got.stdout == "hello from podman\n"
    finally:
        try:
            podman("rm", "-f", "-a", "-t", "0", check=False)
            wait_for("podman's DELs", lambda: node.attached() == [], timeout=20)
            podman("system", "reset", "-f", check=False)
        finally:
            mounts.close()


def _rootfs_tar(tmp: Path) -> Path:
    """A plain root filesystem tar (what ``podman import`` takes) with busybox and a page to serve."""
    import tarfile

    from tests.integration.engines import APPLETS

    path = tmp / "rootfs.tar"
    if path.exists():
        return path
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc", "www", "proc", "sys", "dev", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for name, data in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("www/index.html", b"hello from podman\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    return path
