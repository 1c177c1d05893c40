"""Images with Docker's own CLI: import, load (both layouts), images, image
inspect, tag, rmi, a pull that explains itself, and containers that run
in their image, isolated from the host's filesystem, on qiao's networks.

The client is the static Docker CLI at /usr/local/bin/docker (28.2.2 when
written), pointed at a test host's qiaod (``DOCKER_HOST=unix://ROOT/run/qiao.sock``)
with a configuration directory of the test's own.  The image is Debian's
static busybox, built offline by ``tests/integration/engines.py``.
Until Docker's attach is served, output is read with ``qiao logs``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RUN, Host, wait_for
from tests.integration.engines import BUSYBOX, _goarch, busybox_image, busybox_rootfs

DOCKER = "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="no Docker CLI at /usr/local/bin/docker"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="no static busybox (Debian's busybox-static)"),
]


class Docker:
    """Docker's CLI against one test host's qiaod."""

    def __init__(self, host: Host):
        self.host = host
        self.config = tempfile.mkdtemp(prefix=f"{RUN}-docker-config-")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{host.root}/run/qiao.sock", "DOCKER_CONFIG": self.config}

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, timeout=timeout, input=input)
        proc = subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace")
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def json(self, *args: str) -> list[dict]:
        return [json.loads(line) for line in self(*args).stdout.splitlines() if line.strip()]

    def close(self) -> None:
        shutil.rmtree(self.config, ignore_errors=True)


@pytest.fixture(scope="module")
def docker(host: Host) -> Iterator[Docker]:
    client = Docker(host)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The busybox image in every form the tests feed Docker's CLI."""
    d = tmp_path_factory.mktemp("images")
    rootfs = busybox_rootfs(Path(BUSYBOX).read_bytes())
    (d / "rootfs.tar").write_bytes(rootfs)
    (d / "rootfs.tar.gz").write_bytes(gzip.compress(rootfs))
    oci, _ref = busybox_image(d)
    (d / "docker-archive.tar").write_bytes(docker_archive(rootfs, "archived/busybox:gz"))
    return {"rootfs": d / "rootfs.tar", "rootfs.gz": d / "rootfs.tar.gz", "oci": oci, "docker-archive": d / "docker-archive.tar"}


def docker_archive(layer: bytes, tag: str) -> bytes:
    """``docker save``'s layout (manifest.json), its one layer gzip-compressed."""
    config = json.dumps({
        "architecture": _goarch(), "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()  # fmt: skip
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer0/layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((cfg_name, config), ("layer0/layer.tar", gzip.compress(layer)), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def busybox(docker: Docker, files: dict[str, Path]) -> str:
    """``busybox:latest``, imported once for the module with ``docker import``."""
    docker("import", "-c", 'CMD ["sh"]', str(files["rootfs"]), "busybox:latest")
    return "busybox:latest"


@pytest.fixture
def clean(host: Host, docker: Docker) -> Iterator[None]:
    yield
    host.remove_containers()


def run_output(docker: Docker, host: Host, *args: str) -> str:
    """``docker run -d ARGS``, waited for; what it printed."""
    cid = docker("run", "-d", *args).stdout.strip()
    docker("wait", cid)
    return host.qiao("logs", cid).stdout


# -- import, load, images, inspect -------------------------------------------------------


def test_docker_import_and_images(docker, files):
    image_id = docker(
        "import", "-m", "from a test", "-c", 'CMD ["sh"]', "-c", "ENV GREETING=hi", str(files["rootfs.gz"]), "imported:1"
    ).stdout.strip()
    assert image_id.startswith("sha256:")
    [row] = [r for r in docker.json("images", "--format", "json") if r["Repository"] == "imported"]
    assert (row["Tag"], row["ID"]) == ("1", image_id[7:19]) and row["Size"].endswith("MB")
    [doc] = json.loads(docker("image", "inspect", "imported:1").stdout)
    assert (doc["Id"], doc["RepoTags"], doc["Comment"], doc["Os"]) == (image_id, ["imported:1"], "from a test", "linux")
    assert doc["Config"]["Cmd"] == ["sh"] and doc["Config"]["Env"] == ["GREETING=hi"]
    assert doc["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(files["rootfs"].read_bytes()).hexdigest()]
    assert docker("rmi", "imported:1").stdout.splitlines() == ["Untagged: imported:1", f"Deleted: {image_id}"]


@pytest.mark.parametrize("layout, tag", [("oci", "localhost/busybox:local"), ("docker-archive", "archived/busybox:gz")])
def test_docker_load(docker, host, files, layout, tag):
    assert docker("load", "-i", str(files[layout])).stdout.strip() == f"Loaded image: {tag}"
    repo, _, version = tag.rpartition(":")
    assert any(r["Repository"] == repo and r["Tag"] == version for r in docker.json("images", "--format", "json"))
    assert docker("load", "-i", str(files[layout])).stdout.strip() == f"Loaded image: {tag}"  # again: the same image
    docker("rmi", tag)
    assert not os.listdir(Path(host.root, "lib", "images", "tmp"))


def test_docker_load_from_stdin_and_a_bad_archive(docker, files):
    assert docker("load", input=files["oci"].read_bytes()).stdout.strip() == "Loaded image: localhost/busybox:local"
    docker("rmi", "localhost/busybox:local")
    proc = docker("load", input=b"this is not an archive" * 100, check=False)
    assert proc.returncode != 0 and "invalid archive" in proc.stderr


def test_docker_tag_and_rmi_by_tag(docker, busybox):
    docker("tag", busybox, "other/name:v2")
    image_id = docker("image", "inspect", "--format", "{{.Id}}", "other/name:v2").stdout.strip()
    assert docker("image", "inspect", "--format", "{{.Id}}", busybox).stdout.strip() == image_id
    assert docker("rmi", "other/name:v2").stdout.strip() == "Untagged: other/name:v2"


def test_pull_of_a_missing_image_says_how_to_get_one(docker):
    proc = docker("pull", "nothing/here", check=False)
    assert proc.returncode != 0 and "qiao pulls no images" in proc.stderr and "docker load" in proc.stderr
    proc = docker("run", "--rm", "nothing/here", "true", check=False)
    assert proc.returncode == 125
    assert "Unable to find image 'nothing/here:latest' locally" in proc.stderr and "docker import" in proc.stderr


# -- containers in their image ---------------------------------------------------------------


@pytest.mark.usefixtures("clean")
def test_docker_run_echo_hi(docker, host, busybox):
    assert run_output(docker, host, busybox, "echo", "hi") == "hi\n"
    [ps] = docker.json("ps", "-a", "--format", "json")
    assert (ps["Image"], ps["Command"]) == (busybox, '"echo hi"')
    [doc] = json.loads(docker("inspect", ps["ID"]).stdout)
    image_id = docker("image", "inspect", "--format", "{{.Id}}", busybox).stdout.strip()
    assert (doc["Image"], doc["Config"]["Image"], doc["Path"], doc["Args"]) == (image_id, busybox, "echo", ["hi"])


@pytest.mark.usefixtures("clean")
def test_image_config_and_entrypoint(docker, host, files):
    docker("load", "-i", str(files["docker-archive"]))
    try:
        out = run_output(docker, host, "archived/busybox:gz", "sh", "-c", 'echo "$FROM_IMAGE $PATH $HOME"; pwd; id -u')
        assert out.splitlines() == ["yes /bin /root", "/www", "0"]
        out = run_output(docker, host, "-e", "FROM_IMAGE=user", "-w", "/made/for/it", "-u", "nobody", "archived/busybox:gz", "sh", "-c",
                         'echo "$FROM_IMAGE"; pwd; id -un')  # fmt: skip
        assert out.splitlines() == ["user", "/made/for/it", "nobody"]  # a working directory that is not there is made
        assert run_output(docker, host, "--entrypoint", "/bin/echo", "archived/busybox:gz", "a", "b") == "a b\n"
        proc = docker("run", "-d", "-u", "nosuchuser", "archived/busybox:gz", "true", check=False)
        assert proc.returncode != 0 and "unable to find user nosuchuser" in proc.stderr
    finally:
        host.remove_containers()
        docker("rmi", "archived/busybox:gz")


@pytest.mark.usefixtures("clean")
def test_container_sees_its_image_not_the_host(docker, host, busybox, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("only on the host")
    script = (
        f"ls {secret} 2>&1; ls {host.root} 2>&1; ls /; ls /dev; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
        " ps -o pid,comm | tail -n +2; grep -c . /proc/mounts > /dev/null && echo mounts;"
        " touch /sys/x 2>&1 | head -1; echo k > /proc/sys/kernel/hostname 2>&1 | head -1"
    )
    lines = run_output(docker, host, busybox, "sh", "-c", script).splitlines()
    assert lines[0].endswith(f"{secret}: No such file or directory") and lines[1].endswith(f"{host.root}: No such file or directory")
    listing = lines[2 : lines.index("zero") + 1]
    assert listing[: listing.index("www") + 1] == ["bin", "dev", "etc", "proc", "root", "sys", "tmp", "www"]
    dev = {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    assert set(listing[listing.index("www") + 1 :]) == dev
    rest = lines[lines.index("zero") + 1 :]
    assert rest[0].startswith("sh -c ") and rest[1].split() == ["1", "sh"]  # its own PID namespace: the command is pid 1
    assert "Read-only file system" in rest[-2] and "Read-only file system" in rest[-1]


@pytest.mark.usefixtures("clean")
def test_httpd_on_a_user_network_with_a_published_port(docker, host, busybox):
    net = f"{RUN}-imgnet"
    docker("network", "create", "--subnet", "10.77.0.0/24", net)
    try:
        cid = docker(
            "run", "-d", "--name", "web", "--network", net, "-p", "8080:80", busybox, "httpd", "-f", "-p", "80", "-h", "/www"
        ).stdout.strip()
        [doc] = json.loads(docker("inspect", cid).stdout)
        address = doc["NetworkSettings"]["Networks"][net]["IPAddress"]
        assert address.startswith("10.77.0.")

        def fetched() -> str:
            proc = host.sh("timeout", "3", BUSYBOX, "wget", "-qO-", "http://127.0.0.1:8080/", check=False)
            return proc.stdout if proc.returncode == 0 else ""

        assert wait_for("the published port", fetched) == "hello from busybox\n"
        assert host.sh("timeout", "3", BUSYBOX, "wget", "-qO-", f"http://{address}/").stdout == "hello from busybox\n"
        # another container on the network reaches it by name
        out = run_output(docker, host, "--network", net, busybox, "timeout", "5", "wget", "-qO-", "http://web/")
        assert out == "hello from busybox\n"
        docker("rm", "-f", cid)
    finally:
        host.remove_containers()
        docker("network", "rm", net)


@pytest.mark.usefixtures("clean")
def test_container_layer_survives_a_restart_and_goes_with_the_container(docker, host, busybox):
    cid = docker("create", busybox, "sh", "-c", "cat /kept 2>/dev/null; echo run >> /kept").stdout.strip()
    docker("start", cid)
    docker("wait", cid)
    docker("start", cid)
    docker("wait", cid)
    assert host.qiao("logs", cid).stdout == "run\n"
    layer = Path(host.root, "lib", "containers", cid, "fs")
    assert (layer / "upper" / "kept").read_text() == "run\nrun\n"
    image = Path(host.root, "lib", "images", docker("image", "inspect", "--format", "{{.Id}}", busybox).stdout.strip()[7:], "rootfs")
    assert not (image / "kept").exists()  # the image itself is never written
    docker("rm", cid)
    assert not layer.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert host.root not in mounts.replace(f"{host.root}/run/netns", "")  # no overlay left anywhere we can see


@pytest.mark.usefixtures("clean")
def test_rmi_refused_while_a_container_uses_the_image(docker, host, files):
    docker("import", str(files["rootfs"]), "inuse:1")
    cid = docker("run", "-d", "inuse:1", "sleep", "300").stdout.strip()
    proc = docker("rmi", "inuse:1", check=False)
    assert proc.returncode != 0 and f"container {cid[:12]} is using its referenced image" in proc.stderr
    image_id = docker("image", "inspect", "--format", "{{.Id}}", "inuse:1").stdout.strip()
    proc = docker("rmi", "-f", image_id, check=False)
    assert proc.returncode != 0 and "(cannot be forced) - image is being used by running container" in proc.stderr
    docker("stop", "-t", "0", cid)
    assert docker("rmi", "-f", "inuse:1").stdout.splitlines() == ["Untagged: inuse:1", f"Deleted: {image_id}"]
    docker("start", cid)  # its files stay while it exists
    docker("rm", "-f", cid)
    assert not Path(host.root, "lib", "images", image_id[7:]).exists()


@pytest.mark.usefixtures("clean")
def test_qiao_cli_images_and_run_image(host, busybox, files):
    assert host.qiao("image", "import", str(files["rootfs"]), "viaqiao:1").stdout.startswith("sha256:")
    assert "viaqiao" in host.qiao("image", "ls").stdout
    assert host.qiao("run", "--rm", "--image", "viaqiao:1", "--", "cat", "/www/index.html").stdout == "hello from busybox\n"
    cid = host.run_d("--image", busybox, "--", "sleep", "300")
    exec_out = host.exec(cid, "sh", "-c", "ps -o pid,comm | tail -n +2; ls /proc/self/fd > /dev/null && echo ok").stdout.split()
    assert exec_out[:2] == ["1", "sleep"] and exec_out[-1] == "ok"  # exec joins the container's PID namespace
    assert host.qiao("image", "rm", "viaqiao:1").stdout.splitlines()[0] == "Untagged: viaqiao:1"
