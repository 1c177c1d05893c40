"""Other container engines inside a test's throw-away host: Debian's containerd 1.6,
and Debian's dockerd 20.10 (``Dockerd``: see the section "dockerd" at the end).

``Containerd`` runs a private ``containerd`` (its own root, state, socket and
config under a temp dir) in a test host's network namespace, and ``ctr`` against
it; ``busybox_image`` builds, offline, a busybox image that ``ctr images
import`` takes.  A CNI plugin under test (qiao's, or the reference ``bridge``)
is given to ``ctr run --cni`` through two directories of the test's own: a conf
dir (one conflist) and a plugin dir.

How the pieces sit::

    test host netns (nsenter --net=/run/netns/RUN-...)
    +- containerd   own mount namespace (private): a tmpfs on /run, so its shims'
    |  |            sockets (/run/containerd/s, hardcoded) and runc's state
    |  |            (/run/containerd/runc) never touch the machine's /run;
    |  |            --root/--state/--address and its config under DIR/containerd
    |  +- containerd-shim-runc-v2 (one per container, re-parented away from
    |     containerd: found again through `-address SOCK` in its argv)
    |     +- runc -> the container: own netns, pidns, mount ns, cgroup /NS/ID
    +- ctr          own mount namespace (private): the test's conf dir on
                    /etc/cni/net.d, its plugin dir on /opt/cni/bin, a dir of
                    this object's on /var/lib/cni (libcni's result cache);
                    the CNI plugins run as its children, in the test host netns

How ``ctr`` 1.6 calls CNI (``cmd/ctr/commands/run/run.go``, go-cni
``WithDefaultConf``):

* The ``ctr`` CLIENT process execs the plugins, not containerd, and only with
  the hardcoded default dirs: the first conflist (by file name) in
  ``/etc/cni/net.d``, plugins from ``/opt/cni/bin``; libcni caches each ADD's
  result in ``/var/lib/cni/results`` until DEL.  Hence the private mount
  namespace above around every ``ctr`` this module runs.  A path that does not
  exist on the machine (``/opt/cni`` usually) is made inside an overlay of its
  nearest existing ancestor, whose upper layer is a tmpfs of that namespace:
  nothing under the machine's real ``/etc/cni``, ``/opt`` or ``/var/lib/cni``
  is created or changed, and nothing there is hidden either (but mounts
  below that ancestor, which an overlay does not show).
* ADD runs after the task is created and before it starts, on
  ``/proc/PID/ns/net`` of the task (runc made a new netns for it), with
  ``CNI_CONTAINERID`` = ``"<ctr namespace>-<container id>"`` and
  ``CNI_IFNAME`` = ``eth0``.  A task shown RUNNING has been through ADD.
  ctr adds no loopback network (runc itself brings ``lo`` up in the new netns).
* Foreground ``ctr run --cni`` (no ``-d``) calls DEL when the task exits (it
  waits for the exit, deletes the task, then DEL), with an EMPTY
  ``CNI_NETNS``: the netns is already gone, and with it the container's end of
  the veth and so the host's end too; the bridge plugin then only releases the
  IPAM lease.  The client forwards every signal it gets to the task, and exits
  with the task's code (137 after SIGKILL).
* ``ctr run -d --cni`` never calls DEL: nothing ever releases that address.
  Killing such a task leaves the IPAM lease (and the plugin's other state) behind.
* If ADD fails, ``ctr run`` fails (exit 1, ``ctr: plugin type="X" failed
  (add): MSG`` on stderr).  In foreground mode it still calls DEL, but in both
  modes the task is left CREATED (its ``runc init`` waiting) and the container
  stays: ``close`` removes them.
* Debian's ctr passes ``CNI_PATH=/opt/cni/bin:/usr/lib/cni``: a plugin missing
  from the test's plugin dir is still found in Debian's ``/usr/lib/cni``.

Every ``ctr`` that creates IO FIFOs (``run``, ``task start``, ``task exec``) gets
``--fifo-dir DIR/containerd/fifo`` added: ctr's default, ``/run/containerd/fifo``,
lies in the machine's ``/run`` for ctr and in the tmpfs for the shim.

The containerd namespace is the test host's name (``RUN-NAME``, with the test
run's prefix), so runc's cgroups are ``/sys/fs/cgroup/*/RUN-NAME/ID``; ``close``
removes them (runc leaves the namespace's own).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tests.integration.conftest import RUN, Host, Namespace, sh, wait_for

BUSYBOX = "/bin/busybox"
BUSYBOX_REF = "localhost/busybox:local"
APPLETS = (
    "[", "arp", "awk", "cat", "cut", "date", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id",
    "ifconfig", "ip", "kill", "ls", "mkdir", "nc", "netstat", "nslookup", "ping", "ping6", "printf", "ps", "rm",
    "route", "sed", "seq", "sh", "sleep", "tail", "test", "timeout", "touch", "tr", "true", "uname", "wc", "wget",
)  # fmt: skip
CNI_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins

# A mount namespace with the test's dirs bound over paths that an engine
# hardcodes (ctr and libcni: /etc/cni/net.d, /opt/cni/bin, /var/lib/cni;
# Podman: /var/lib/containers, /var/lib/cni).  A path that does not exist is
# made in an overlay of its nearest existing ancestor (upper layer on a tmpfs
# of this namespace), so nothing is hidden and nothing is created outside.
# Arguments: RUN LAYERS_DIR N TARGET1 SOURCE1 ... TARGETn SOURCEn ARGV...
_PRIVATE_DIRS = r"""
run=$1 layers=$2 n=$3
shift 3
private() {  # private TARGET SOURCE
    target=$1 parent=$1
    while [ ! -d "$parent" ]; do parent=$(dirname "$parent"); done
    if [ "$parent" != "$target" ]; then
        mountpoint -q "$layers" || mount -t tmpfs -o mode=0700 "$run-layers" "$layers"
        mkdir -p "$layers$parent/upper" "$layers$parent/work"
        mount -t overlay -o "lowerdir=$parent,upperdir=$layers$parent/upper,workdir=$layers$parent/work" "$run-overlay" "$parent"
        mkdir -p "$target"
    fi
    mount --bind "$2" "$target"
}
while [ "$n" -gt 0 ]; do private "$1" "$2"; shift 2; n=$((n - 1)); done
exec "$@"
"""


PathLike = str | os.PathLike[str]


class NetnsHost(Protocol):
    """What an engine needs of its host: the path of a network namespace file (a
    test's ``Namespace``, or a benchmark's own)."""

    @property
    def path(self) -> str: ...


def private_dirs_argv(netns: str, layers: PathLike, dirs: Mapping[str, PathLike], argv: Sequence[str]) -> list[str]:
    """``argv`` run in the network namespace ``netns`` and a private mount
    namespace where each key of ``dirs`` (a path the engine hardcodes) is the
    test's directory given as its value; ``layers``: an empty directory of the
    test's, for the overlays of paths that do not exist on the machine."""
    pairs = [str(p) for target, source in dirs.items() for p in (target, source)]
    return [
        "nsenter", f"--net={netns}", "--", "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-ec", _PRIVATE_DIRS, "sh", RUN, str(layers), str(len(dirs)), *pairs, *argv,
    ]  # fmt: skip


class PrivateMounts:
    """One long-lived mount namespace of ``private_dirs_argv`` for an engine
    whose commands must share it (Podman keeps its network namespaces as bind
    mounts under /run/netns, made by one command and used by the next): a
    ``sleep`` holds it, every ``argv`` enters it.  ``close`` ends the holder.
    ``new_session``: the holder runs in a session of its own (a Ctrl-C at the
    terminal does not reach it)."""

    def __init__(self, netns: str, layers: PathLike, dirs: Mapping[str, PathLike], *, new_session: bool = False):
        self.netns = netns
        own = os.stat("/proc/self/ns/mnt").st_ino
        self.holder = subprocess.Popen(
            private_dirs_argv(netns, layers, dirs, ["sleep", "infinity"]), stdin=subprocess.DEVNULL, start_new_session=new_session
        )

        def ready() -> bool:
            if self.holder.poll() is not None:
                raise AssertionError(f"the mount namespace's holder exited {self.holder.returncode}")
            with contextlib.suppress(OSError), open(f"/proc/{self.holder.pid}/comm") as f:
                return f.read().strip() == "sleep" and os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino != own
            return False

        try:
            wait_for("the private mount namespace", ready)
        except BaseException:
            self.close()
            raise

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--net={self.netns}", "--", *cmd]

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


# containerd's mount namespace: a tmpfs on /run.  Arguments: RUN ARGV...
_PRIVATE_RUN = r"""
mount -t tmpfs -o mode=0755 "$1-run" /run
shift
exec "$@"
"""
# ctr subcommands whose IO FIFOs the shim opens by path.
_FIFO_COMMANDS = {("run",), ("task", "start"), ("tasks", "start"), ("t", "start"), ("task", "exec"), ("tasks", "exec"), ("t", "exec")}


# -- the image -------------------------------------------------------------------

_archives: dict[tuple[str, int, int], bytes] = {}  # (busybox, size, mtime) -> archive, built once per session


def busybox_image(dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write an OCI image layout tar of Debian's static busybox into ``dir``; returns (archive, reference).

    One uncompressed layer: ``/bin/busybox`` with a symlink per applet in
    ``APPLETS``, ``/etc`` (passwd, group, hosts, an empty resolv.conf),
    ``/www/index.html``, and empty ``/dev``, ``/proc``, ``/sys``, ``/tmp``,
    ``/root``.  Built with tarfile/hashlib/json only, byte for byte the same
    every time (fixed owners and times); the bytes are built once per session.
    ``ctr images import`` names the image ``localhost/busybox:local``.
    Debian's busybox 1.35 ``wget -T N`` segfaults (exit 139): use ``timeout N wget ...``.
    """
    st = os.stat(BUSYBOX)
    key = (BUSYBOX, st.st_size, st.st_mtime_ns)
    if key not in _archives:
        _archives[key] = busybox_archive(Path(BUSYBOX).read_bytes(), BUSYBOX_REF)
    path = Path(dir) / "busybox-local.oci.tar"
    path.write_bytes(_archives[key])
    return path, BUSYBOX_REF


def _tar(entries: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes | None = None, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    info.size = len(data) if data is not None else 0
    return info, data


def busybox_rootfs(busybox: bytes) -> bytes:
    """The busybox root filesystem as one uncompressed tar (the layer of
    ``busybox_archive``; ``docker import`` takes it as is), for the busybox binary ``busybox``."""
    etc = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": b"",
        "www/index.html": b"hello from busybox\n",
    }
    dirs = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "root": 0o700, "sys": 0o555, "tmp": 0o1777, "www": 0o755}
    files: list[tuple[tarfile.TarInfo, bytes | None]] = [_entry(d + "/", tarfile.DIRTYPE, mode) for d, mode in dirs.items()]
    files.append(_entry("bin/busybox", mode=0o755, data=busybox))
    files += [_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox") for applet in APPLETS]
    files += [_entry(name, data=data) for name, data in etc.items()]
    return _tar(sorted(files, key=lambda e: e[0].name))


def busybox_archive(busybox: bytes, ref: str = BUSYBOX_REF) -> bytes:
    """The bytes of the archive ``busybox_image`` writes, for the busybox binary ``busybox``."""
    layer = busybox_rootfs(busybox)

    def blob(data: bytes, media_type: str) -> tuple[dict[str, object], bytes]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}, data

    def dump(obj: object) -> bytes:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    arch_name = _goarch()
    layer_desc, _ = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = dump({
        "architecture": arch_name,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"tests/integration/engines.py from {BUSYBOX}"}],
    })  # fmt: skip
    config_desc, _ = blob(config, "application/vnd.oci.image.config.v1+json")
    manifest = dump(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_desc, "layers": [layer_desc]}
    )
    manifest_desc, _ = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rpartition(":")[2]}
    manifest_desc["platform"] = {"architecture": arch_name, "os": "linux"}
    index = dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]})

    outer = [_entry("blobs/", tarfile.DIRTYPE, 0o755), _entry("blobs/sha256/", tarfile.DIRTYPE, 0o755)]
    for data in (layer, config, manifest):
        outer.append(_entry("blobs/sha256/" + hashlib.sha256(data).hexdigest(), data=data))
    outer += [_entry("index.json", data=index), _entry("oci-layout", data=dump({"imageLayoutVersion": "1.0.0"}))]
    return _tar(outer)


# -- CNI plugin dirs -------------------------------------------------------------


def link_plugins(bin_dir: str | os.PathLike[str], names: Sequence[str], source: str = CNI_PLUGINS) -> Path:
    """A CNI plugin dir for ``Containerd``: ``bin_dir`` (made if needed) with a symlink to ``source/NAME`` per name."""
    path = Path(bin_dir)
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = os.path.join(source, name)
        if not os.path.exists(target):
            raise FileNotFoundError(target)
        (path / name).symlink_to(target)
    return path


# -- containerd ------------------------------------------------------------------


class Containerd:
    """A containerd of a test's own, in the test host ``host`` (anything with
    ``.path``, a network namespace file), with everything under ``dir/containerd``.
    Its containerd namespace (``ctr --namespace``) is ``namespace``, by default the
    host's name (``RUN-NAME``).

    ``cni_conf_dir`` becomes ctr's ``/etc/cni/net.d`` and ``cni_bin_dir`` its
    ``/opt/cni/bin`` (see the module docstring); either may be changed between
    ``ctr`` calls (``self.cni_conf_dir = ...``).  ``snapshotter`` is passed to
    ctr as ``CONTAINERD_SNAPSHOTTER`` (ctr's default: overlayfs).
    ``close()`` ends everything it started; it is safe to call at any point,
    more than once, and after any failure.
    """

    def __init__(
        self,
        host: Namespace,
        dir: str | os.PathLike[str],
        cni_conf_dir: str | os.PathLike[str],
        cni_bin_dir: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        snapshotter: str | None = None,
        start_timeout: float = 20,
    ):
        self.netns = host.path
        self.cni_conf_dir = str(cni_conf_dir)
        self.cni_bin_dir = str(cni_bin_dir)
        self.namespace = namespace or os.path.basename(host.path)  # RUN-NAME
        self.snapshotter = snapshotter
        self.dir = Path(dir) / "containerd"
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.fifo_dir = self.dir / "fifo"
        self.cni_cache = self.dir / "cni-cache"  # ctr's /var/lib/cni
        self.layers = self.dir / "layers"  # mount point for the tmpfs of ctr's overlays
        self.address = str(self.dir / "containerd.sock")
        self.config = self.dir / "config.toml"
        self.log = self.dir / "containerd.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self._clients: list[subprocess.Popen[str]] = []
        self._closed = False
        for d in (self.root, self.state, self.fifo_dir, self.cni_cache, self.layers):
            d.mkdir(parents=True, mode=0o711)
        self.config.write_text(self._config_toml())
        try:
            self._start(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- the daemon ------------------------------------------------------

    def _config_toml(self) -> str:
        def q(path: object) -> str:
            return json.dumps(str(path))  # a TOML basic string

        return f"""\
# containerd for a test: no CRI, nothing outside {q(self.dir)}.
version = 2
root = {q(self.root)}
state = {q(self.state)}
# cri: Kubernetes, not wanted; opt: installs into /opt/containerd; the snapshotters
# that need a special filesystem or device.  (runtime.v1.linux stays: 1.6's tasks
# service does not load without it, although ctr's default runtime is io.containerd.runc.v2.)
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {q(self.address)}

[ttrpc]
  address = {q(self.address + ".ttrpc")}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.runtime.v2.task"]
  platforms = ["linux/{_goarch()}"]
"""

    def _start(self, timeout: float) -> None:
        argv = ["containerd", "--config", str(self.config), "--root", str(self.root), "--state", str(self.state), "--address", self.address]
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", "--", "unshare", "--mount", "--propagation", "private", "--",
                 "sh", "-ec", _PRIVATE_RUN, "sh", RUN, *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

        def up() -> bool:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"containerd exited {self.daemon.returncode}:\n{self.log_tail()}")
            return os.path.exists(self.address) and self.ctr("version", check=False, timeout=10).returncode == 0

        wait_for("containerd to answer", up, timeout=timeout, interval=0.05)
        tasks = self.ctr("tasks", "ls", check=False)
        if tasks.returncode != 0:
            raise AssertionError(f"containerd has no tasks service: {tasks.stderr}\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of containerd's log (stdout and stderr)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- ctr -------------------------------------------------------------

    def ctr_argv(self, *args: str) -> list[str]:
        """The argv that runs ``ctr ARGS`` against this containerd, in the test
        host's netns and a mount namespace with the test's CNI dirs."""
        dirs: dict[str, PathLike] = {"/etc/cni/net.d": self.cni_conf_dir, "/opt/cni/bin": self.cni_bin_dir, "/var/lib/cni": self.cni_cache}
        ctr = ["ctr", "--address", self.address, "--namespace", self.namespace, *self._with_fifo_dir(args)]
        return private_dirs_argv(self.netns, self.layers, dirs, ctr)

    def _with_fifo_dir(self, args: Sequence[str]) -> list[str]:
        args = list(args)
        for n in (1, 2):
            if tuple(args[:n]) in _FIFO_COMMANDS and not any(a == "--fifo-dir" or a.startswith("--fifo-dir=") for a in args):
                return [*args[:n], "--fifo-dir", str(self.fifo_dir), *args[n:]]
        return args

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.snapshotter:
            env["CONTAINERD_SNAPSHOTTER"] = self.snapshotter
        return env

    def ctr(self, *args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
        """Run ``ctr ARGS`` and wait; raises AssertionError (with its output) on a non-zero exit when ``check``."""
        kw = {"stdin": subprocess.DEVNULL, "env": self._env(), **kw}
        proc = subprocess.run(self.ctr_argv(*args), capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def ctr_popen(self, *args: str, **kw) -> subprocess.Popen[str]:
        """Start ``ctr ARGS`` (e.g. a foreground ``run --cni --rm``) and return it;
        stdin is /dev/null, stdout and stderr are text pipes unless ``kw`` says
        otherwise.  The Popen's pid is ctr's own (nsenter, unshare and sh exec
        it): signals sent to it are forwarded to a foreground task.  ``close``
        ends it if it is still running."""
        kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": self._env(), **kw}
        proc: subprocess.Popen[str] = subprocess.Popen(self.ctr_argv(*args), **kw)
        self._clients.append(proc)
        return proc

    def import_image(self, archive: str | os.PathLike[str]) -> None:
        """``ctr images import ARCHIVE`` (unpacked into the snapshotter)."""
        self.ctr("images", "import", str(archive), timeout=120)

    # -- tasks -----------------------------------------------------------

    def cni_id(self, container: str) -> str:
        """The CNI_CONTAINERID ctr gives the plugins for ``container``."""
        return f"{self.namespace}-{container}"

    def tasks(self) -> dict[str, tuple[int, str]]:
        """``ctr task ls``: container id -> (pid, status)."""
        out = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        return {f[0]: (int(f[1]), f[2]) for f in (line.split() for line in out) if len(f) >= 3}

    def wait_running(self, container: str, proc: subprocess.Popen[str] | None = None, timeout: float = 30) -> int:
        """Wait until ``container``'s task is RUNNING (after ctr's CNI ADD); returns its pid.
        With ``proc`` (the ``ctr run`` that starts it), fail as soon as that exits."""

        def running() -> int | None:
            if proc is not None and proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"ctr exited {proc.returncode} before {container} ran\nstdout: {out}\nstderr: {err}")
            pid, status = self.tasks().get(container, (0, ""))
            return pid if status == "RUNNING" else None

        return wait_for(f"task {container} to run", running, timeout=timeout, interval=0.05)

    def containers(self) -> list[str]:
        return self.ctr("containers", "ls", "-q").stdout.split()

    # -- teardown --------------------------------------------------------

    def remove_containers(self, timeout: float = 15) -> None:
        """Kill every task (SIGKILL, all its processes), let the ``ctr`` clients
        this object started end (a foreground ``run --cni`` then calls DEL; one
        still running after ``timeout`` is killed), then remove every task and
        container.  Errors are ignored."""
        ids: list[str] = []
        with contextlib.suppress(Exception):
            ids = self.containers()
        for cid in ids:
            with contextlib.suppress(Exception):
                self.ctr("tasks", "kill", "--signal", "SIGKILL", "--all", cid, check=False, timeout=timeout)
        _end_clients(self._clients, timeout)
        for cid in ids:
            with contextlib.suppress(Exception):
                self.ctr("tasks", "rm", "--force", cid, check=False, timeout=timeout)
            with contextlib.suppress(Exception):
                self.ctr("containers", "rm", cid, check=False, timeout=timeout)

    def close(self, timeout: float = 15) -> None:
        """``remove_containers``, stop containerd (SIGTERM, then SIGKILL, by the
        pid of its Popen), kill any shim it left and the shim's container (found
        by our socket in the shim's argv), remove the namespace's cgroups, any
        mount under our dir, and the dir.  Never raises; safe to call twice,
        and after any failure (containerd dead or never up included)."""
        if self._closed:
            return
        self._closed = True
        if self.daemon is not None and self.daemon.poll() is None:
            self.remove_containers(timeout)
        else:
            _end_clients(self._clients, 0)
        self._stop_daemon(timeout)
        with contextlib.suppress(Exception):
            self._end_shims(timeout)
        with contextlib.suppress(Exception):
            self._remove_cgroups()
        with contextlib.suppress(Exception):
            for mountpoint in reversed(_mounts_under(self.dir)):
                sh("umount", "-l", mountpoint, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_daemon(self, timeout: float) -> None:
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def shim_pids(self) -> list[int]:
        """The shims of this containerd still running (``-address SOCK`` in their argv)."""
        return _shim_pids(self.address)

    def _end_shims(self, timeout: float) -> None:
        _kill_shims(self.address, timeout)

    def _remove_cgroups(self, timeout: float = 5) -> None:
        """runc leaves ``/sys/fs/cgroup/*/NAMESPACE`` after the namespace's last task, and
        ``.../NAMESPACE/ID`` too when a shim died without ``runc delete``: remove them,
        deepest first, once their processes are gone."""
        _remove_cgroups(self.namespace, timeout)


def _shim_pids(address: str) -> list[int]:
    """The containerd shims still running for the containerd at ``address`` (``-address SOCK`` in their argv)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"-address" in argv and address.encode() in argv and b"containerd-shim" in argv[0]:
                    pids.append(int(entry))
    return pids


def _kill_shims(address: str, timeout: float) -> None:
    """SIGKILL the shims of the containerd at ``address`` and everything below them
    (the containers, pid 1 of their pid namespace, first); wait until the shims are gone."""
    shims = _shim_pids(address)
    if not shims:
        return
    for pid in _descendants(shims) + shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for("containerd's shims to end", lambda: not _shim_pids(address), timeout=timeout)


def _cgroup_tops(name: str) -> list[str]:
    """``/sys/fs/cgroup/<each hierarchy>/NAME``, whether it exists or not."""
    tops = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] in ("cgroup", "cgroup2"):
            tops.append(os.path.join(fields[4], name))
    return tops


def _remove_cgroups(name: str, timeout: float = 5) -> None:
    """Remove the cgroup ``NAME`` (directly under each hierarchy's root) and
    everything below it, deepest first, once their processes are gone."""
    tops = _cgroup_tops(name)

    def removed() -> bool:
        for top in tops:
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        return not any(os.path.exists(top) for top in tops)

    wait_for(f"the cgroups of {name} to empty", removed, timeout=timeout, interval=0.05)


def _end_clients(clients: list[subprocess.Popen[str]], timeout: float) -> None:
    """Let the CLI clients a harness started end within ``timeout`` (a foreground
    ``ctr run`` then runs its DEL), then kill what is left, by the Popen's PID."""
    deadline = time.monotonic() + timeout
    for proc in clients:
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):  # ValueError: the caller read its pipes
            proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    clients.clear()


def _goarch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _descendants(pids: Sequence[int]) -> list[int]:
    """Every descendant of ``pids`` (from /proc/*/stat), children before their parents' parents."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = list(pids)
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _mounts_under(path: Path) -> list[str]:
    """Mount points (in our own mount namespace) at or under ``path``, in mount order."""
    prefix = str(path)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


# -- dockerd ---------------------------------------------------------------------
#
# Debian's dockerd 20.10 (package docker.io) in a test host, fully private:
#
#     test host netns (nsenter --net=/run/netns/RUN-...)
#     +- sleep infinity   holds dockerd's mount namespace (PrivateMounts): private,
#     |                   with the test's dirs on the paths dockerd hardcodes:
#     |                     /run                 <- DIR/docker/run (so /var/run too)
#     |                     /run/docker/plugins  <- plugin_dir (the test's)
#     |                     /etc/docker          <- DIR/docker/etc (key.json, daemon.json,
#     |                                             plugins/*.spec|*.json)
#     |                     /opt/containerd      <- DIR/docker/opt (containerd's "opt"
#     |                                             plugin makes bin/ and lib/ there)
#     +- dockerd          entered into that namespace; --data-root, --exec-root,
#        |                --pidfile, -H unix:// all under DIR/docker
#        +- containerd    dockerd's own (it starts one when not given --containerd):
#           |             --config EXEC/containerd/containerd.toml, socket
#           |             EXEC/containerd/containerd.sock; setsid, with a parent-death
#           |             signal: it dies with dockerd, also on SIGKILL
#           +- containerd-shim-runc-v2 (re-parented; `-address SOCK` in its argv)
#              +- runc -> the container; cgroup /NAME/ID (--cgroup-parent)
#
# The namespace outlives dockerd, so `restart()` finds everything where it left it:
# the shims' sockets (/run/containerd/s/...), runc's state, the sandboxes' netns bind
# mounts (EXEC/netns/ID) and the overlay2 mounts; --live-restore works across it.
#
# Serving a network plugin to dockerd: dockerd looks plugins up by name, lazily, in
# /run/docker/plugins/NAME.sock and /run/docker/plugins/NAME/NAME.sock (then
# NAME.spec / NAME.json in /etc/docker/plugins and /usr/lib/docker/plugins; the
# latter is the machine's own).  The test binds a unix socket at
# ``PLUGIN_DIR/NAME.sock`` (``Dockerd.plugin_socket(NAME)``) from anywhere (path
# sockets are not tied to a network namespace), then ``docker network create -d NAME``.
# Create and delete sockets INSIDE plugin_dir; do not replace plugin_dir itself (the
# bind mount holds the directory it was given).  Paths that dockerd hands a plugin
# (a sandbox key EXEC/netns/ID: a bind mount in dockerd's namespace only, an empty
# file outside) are opened from outside as ``Dockerd.inside(PATH)`` (/proc/HOLDER/root/PATH).
#
# What 20.10 does with a plugin (measured here):
# * The lookup is lazy: the first call that needs the driver (`network create -d NAME`;
#   after a restart, whatever first touches a network of NAME's: not dockerd's start).
#   A missing socket is looked for again 1, 3, 7 and 15 s after the request, then the
#   call fails: `plugin "NAME" not found` after ~15 s.  A socket served meanwhile is
#   found at the next of those ticks.  Once found: Plugin.Activate,
#   NetworkDriver.GetCapabilities, then the call (CreateNetwork), within ~5 ms.
# * Once activated, a driver whose socket vanished is not retried: `rm -f` and
#   `network rm` succeed at once and DeleteEndpoint/DeleteNetwork are lost.  After a
#   restart (not activated yet) they wait the 15 s and fail: close the Dockerd before
#   the plugin server.
# * A Join answer without "Gateway" (nor "DisableGatewayService": true) on a network
#   that is not --internal makes libnetwork add a second interface, eth1 on its
#   `docker_gwbridge` (172.17.0.0/16 from the default pools), in the test host netns.

DOCKER = "/usr/bin/docker"  # Debian's 20.10 client; /usr/local/bin/docker may be a newer static one
DOCKERD = "dockerd"
DOCKER_BUSYBOX_REF = "busybox:local"

_rootfs: dict[tuple[str, int, int], bytes] = {}  # (busybox, size, mtime) -> rootfs tar, built once per session


class DockerApiError(AssertionError):
    """An Engine API answer with status >= 400, from ``Dockerd.api``."""

    def __init__(self, method: str, path: str, status: int, message: str):
        super().__init__(f"{method} {path} -> {status}: {message}")
        self.status = status
        self.message = message


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Dockerd:
    """Debian's dockerd 20.10 of a test's own in the test host ``host``
    (anything with ``.path``, a network namespace file), everything under
    ``dir/docker``, in a private mount namespace (see the comment above).

    ``plugin_dir`` (a directory of the test's; default ``dir/docker/plugins``) is
    dockerd's ``/run/docker/plugins``.  ``args`` are added to dockerd's command
    line; ``live_restore`` adds ``--live-restore``; ``storage_driver`` defaults
    to overlay2 (vfs when the kernel has no overlayfs).  ``name`` (default
    ``RUN-HOST-dockerd``) is the containerd namespace (plugins: ``NAME-plugins``)
    and the cgroup parent ``/NAME``.  ``docker`` is the client binary.

    Docker's bridge driver still makes user networks (``network create -d
    bridge``) with ``--bridge=none``; there is no default ``bridge`` network, so
    ``docker run`` needs ``--network``.  With ``--iptables=false`` nothing is
    written to the host's firewall: no NAT, no published ports' DNAT, no
    isolation between networks; the embedded DNS (127.0.0.11) still works (its
    NAT rules are in each container's own netns).  ``--ip-forward=false`` makes
    ``docker run`` on a bridge network print "WARNING: IPv4 forwarding is
    disabled" on stderr; containers on one bridge reach each other all the same.

    ``close()`` removes every container, stops dockerd, ends its containerd and
    shims and every process left in its mount namespace, removes its cgroups
    and its dirs (not a ``plugin_dir`` given by the test).  Never raises; safe
    to call twice and after any failure.  Close it before a plugin server it
    uses (see above: a plugin gone can cost 15 s per call).

    ``args`` come after the harness's own flags, and for dockerd the last of a
    repeated flag wins: ``args=["--iptables=true", "--userland-proxy=true"]``
    turns Docker's defaults back on (its iptables rules then stay in the test
    host's namespace).  ``new_session`` starts dockerd and the mount namespace's
    holder in sessions of their own, so that a Ctrl-C at the terminal reaches
    only the caller (a benchmark), which then closes the Dockerd in order.
    """

    def __init__(
        self,
        host: NetnsHost,
        dir: PathLike,
        *,
        plugin_dir: PathLike | None = None,
        args: Sequence[str] = (),
        live_restore: bool = False,
        storage_driver: str | None = None,
        name: str | None = None,
        docker: str = DOCKER,
        dockerd: str = DOCKERD,
        start_timeout: float = 30,
        new_session: bool = False,
    ):
        self.netns = host.path
        self.new_session = new_session
        self.name = name or f"{os.path.basename(host.path)}-dockerd"
        self.args = list(args)
        self.live_restore = live_restore
        self.storage_driver = storage_driver or ("overlay2" if _has_overlayfs() else "vfs")
        self.docker_bin = docker
        self.dockerd_bin = dockerd
        self.dir = Path(dir) / "docker"
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.run_dir = self.dir / "run"  # dockerd's /run
        self.etc_dir = self.dir / "etc"  # dockerd's /etc/docker
        self.opt_dir = self.dir / "opt"  # containerd's /opt/containerd
        self.layers = self.dir / "layers"  # mount point for the tmpfs of the overlays
        self.client_config = self.dir / "client"  # DOCKER_CONFIG of the client
        self.plugin_dir = Path(plugin_dir) if plugin_dir is not None else self.dir / "plugins"
        self.socket = self.dir / "docker.sock"
        self.host_url = f"unix://{self.socket}"
        self.pidfile = self.dir / "dockerd.pid"
        self.config_file = self.etc_dir / "daemon.json"
        self.log = self.dir / "dockerd.log"
        self.containerd_address = str(self.exec_root / "containerd" / "containerd.sock")
        self.mounts: PrivateMounts | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self._clients: list[subprocess.Popen[str]] = []
        self._closed = False
        private: dict[str, PathLike] = {"/run": self.run_dir, "/run/docker/plugins": self.plugin_dir}
        private |= {"/etc/docker": self.etc_dir, "/opt/containerd": self.opt_dir}
        for d in (self.data_root, self.exec_root, self.run_dir / "docker" / "plugins", self.etc_dir, self.opt_dir, self.layers):
            d.mkdir(parents=True, mode=0o711)
        self.client_config.mkdir(mode=0o700)
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("{}\n")
        try:
            self.mounts = PrivateMounts(self.netns, self.layers, private, new_session=new_session)
            self._start(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- the daemon ------------------------------------------------------

    def dockerd_argv(self) -> list[str]:
        """dockerd's own command line (without the namespace entering in front)."""
        argv = [
            self.dockerd_bin,
            "--config-file", str(self.config_file),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.host_url,
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--bridge=none", "--userland-proxy=false",
            "--containerd-namespace", self.name,
            "--containerd-plugins-namespace", f"{self.name}-plugins",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--cgroup-parent", f"/{self.name}",
            "--storage-driver", self.storage_driver,
        ]  # fmt: skip
        if self.live_restore:
            argv.append("--live-restore")
        return [*argv, *self.args]

    def _start(self, timeout: float) -> None:
        assert self.mounts is not None
        with open(self.log, "ab") as log:
            self.daemon = subprocess.Popen(
                self.mounts.argv(self.dockerd_argv()), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=self.new_session
            )

        def up() -> bool:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"dockerd exited {self.daemon.returncode}:\n{self.log_tail()}")
            if not self.socket.exists():
                return False
            with contextlib.suppress(OSError, http.client.HTTPException, DockerApiError):
                return self.api("GET", "/_ping", timeout=5) == "OK"
            return False

        wait_for("dockerd to answer", up, timeout=timeout, interval=0.05)

    @property
    def pid(self) -> int:
        """dockerd's pid (the Popen's: nsenter execs it)."""
        assert self.daemon is not None
        return self.daemon.pid

    def log_tail(self, chars: int = 4000) -> str:
        """The end of dockerd's log (its stdout and stderr, with its containerd's)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def plugin_socket(self, name: str) -> Path:
        """Where a test binds the unix socket of plugin ``name`` (dockerd's /run/docker/plugins/NAME.sock)."""
        return self.plugin_dir / f"{name}.sock"

    def inside(self, path: PathLike) -> str:
        """``path`` as dockerd sees it (its mount namespace), for opening from outside: /proc/HOLDER/root/PATH."""
        assert self.mounts is not None
        return f"/proc/{self.mounts.holder.pid}/root{os.path.abspath(path)}"

    def restart(self, *, live_restore: bool | None = None, timeout: float = 60) -> None:
        """Stop dockerd (SIGTERM; without live-restore it stops the running
        containers first, each within its stop timeout: ``docker run --init`` or
        ``--stop-timeout N`` keeps that short) and start it again with the same
        dirs, in the same mount namespace.  ``live_restore`` changes the option
        for the new dockerd (a dockerd stopped with it on leaves its containers
        running; one started with it adopts them)."""
        self._stop_daemon(timeout)
        if live_restore is not None:
            self.live_restore = live_restore
        self._start(timeout)

    # -- the client ------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**env, "DOCKER_HOST": self.host_url, "DOCKER_CONFIG": str(self.client_config)}

    def docker_argv(self, *args: str) -> list[str]:
        """The argv that runs ``docker ARGS`` in the test host's netns (with ``_env()``: DOCKER_HOST is ours)."""
        return ["nsenter", f"--net={self.netns}", "--", self.docker_bin, *args]

    def docker(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this dockerd and wait; raises AssertionError (with its output) on a non-zero exit when ``check``."""
        stdin = None if input is not None else subprocess.DEVNULL
        proc = subprocess.run(
            self.docker_argv(*args), input=input, stdin=stdin, capture_output=True, text=True, timeout=timeout, env=self._env()
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def docker_popen(self, *args: str, **kw) -> subprocess.Popen[str]:
        """Start ``docker ARGS`` and return it; stdin is /dev/null, stdout and
        stderr are text pipes unless ``kw`` says otherwise.  Its pid is the
        client's (nsenter execs it).  ``close`` ends it if it still runs."""
        kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": self._env(), **kw}
        proc: subprocess.Popen[str] = subprocess.Popen(self.docker_argv(*args), **kw)
        self._clients.append(proc)
        return proc

    def api(self, method: str, path: str, body: object = None, *, timeout: float = 60) -> Any:
        """One Engine API request on dockerd's socket (``path`` as the API has
        it, e.g. ``/containers/json?all=1``; unversioned paths get the current
        version); ``body`` is sent as JSON.  Returns the decoded JSON answer, the
        text of a non-JSON one, or None when empty; raises ``DockerApiError``
        for a status >= 400."""
        conn = _UnixHTTPConnection(str(self.socket), timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        value: Any = None
        if raw:
            json_answer = "json" in (resp.getheader("Content-Type") or "")
            value = json.loads(raw) if json_answer else raw.decode(errors="replace")
        if resp.status >= 400:
            message = value.get("message", str(value)) if isinstance(value, dict) else str(value)
            raise DockerApiError(method, path, resp.status, message)
        return value

    def import_busybox(self, ref: str = DOCKER_BUSYBOX_REF) -> str:
        """``docker import`` the busybox root filesystem (``busybox_rootfs``: the
        applets of ``APPLETS``, /www/index.html "hello from busybox", built offline
        from Debian's static busybox) as ``ref``, with ``CMD ["sh"]``; returns ``ref``."""
        st = os.stat(BUSYBOX)
        key = (BUSYBOX, st.st_size, st.st_mtime_ns)
        if key not in _rootfs:
            _rootfs[key] = busybox_rootfs(Path(BUSYBOX).read_bytes())
        tar = self.dir / "busybox-rootfs.tar"
        tar.write_bytes(_rootfs[key])
        self.docker("import", "--change", 'CMD ["sh"]', str(tar), ref, timeout=120)
        tar.unlink()
        return ref

    def containers(self) -> list[str]:
        """The ids of all containers (running or not)."""
        return [c["Id"] for c in self.api("GET", "/containers/json?all=1")]

    # -- teardown --------------------------------------------------------

    def remove_containers(self, timeout: float = 30) -> None:
        """``docker rm -f`` every container, and end the clients of ``docker_popen``
        (one still running after ``timeout`` is killed).  Errors are ignored."""
        ids: list[str] = []
        with contextlib.suppress(Exception):
            ids = self.containers()
        for cid in ids:
            with contextlib.suppress(Exception):
                self.api("DELETE", f"/containers/{cid}?force=1&v=1", timeout=timeout)
        _end_clients(self._clients, timeout)

    def close(self, timeout: float = 15) -> None:
        """``remove_containers``, stop dockerd (SIGTERM, then SIGKILL, by its pid),
        end its containerd (by the config path in its argv), its shims (by our
        containerd socket in their argv) and what runs below them, then every
        process still in dockerd's mount namespace (all ours), remove the cgroups
        under ``/NAME``, end the namespace's holder, unmount what is left under our
        dir and remove the dir.  Never raises; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.daemon is not None and self.daemon.poll() is None:
            self.remove_containers(timeout)
        else:
            _end_clients(self._clients, 0)
        for step in (
            lambda: self._stop_daemon(timeout),
            lambda: _kill_shims(self.containerd_address, timeout),
            self._end_namespace_processes,
            self._remove_cgroups,
        ):
            with contextlib.suppress(Exception):
                step()
        if self.mounts is not None:
            with contextlib.suppress(Exception):
                self.mounts.close()
        with contextlib.suppress(Exception):
            for mountpoint in reversed(_mounts_under(self.dir)):
                sh("umount", "-l", mountpoint, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_daemon(self, timeout: float) -> None:
        """dockerd: SIGTERM, SIGKILL after ``timeout``; then its containerd, should
        it still run (dockerd stops it on its way out, and it has a parent-death
        signal): SIGTERM, then SIGKILL."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        left = self.containerd_pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            wait_for("dockerd's containerd to end", lambda: not self.containerd_pids(), timeout=timeout)
        except AssertionError:
            for pid in self.containerd_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_for("dockerd's containerd to die", lambda: not self.containerd_pids(), timeout=timeout)

    def containerd_pids(self) -> list[int]:
        """dockerd's containerd (``containerd --config EXEC/containerd/containerd.toml``), if it runs."""
        config = str(self.exec_root / "containerd" / "containerd.toml").encode()
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                    if os.path.basename(argv[0]) == b"containerd" and config in argv:
                        pids.append(int(entry))
        return pids

    def shim_pids(self) -> list[int]:
        """The shims of dockerd's containerd still running."""
        return _shim_pids(self.containerd_address)

    def namespace_pids(self) -> list[int]:
        """Every process in dockerd's mount namespace but its holder: dockerd,
        its containerd, the shims, and what a test entered there."""
        if self.mounts is None:
            return []
        holder = self.mounts.holder.pid
        try:
            ns = os.stat(f"/proc/{holder}/ns/mnt").st_ino
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != holder:
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/mnt").st_ino == ns:
                        pids.append(int(entry))
        return pids

    def _end_namespace_processes(self, timeout: float = 10) -> None:
        for pid in self.namespace_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for("dockerd's mount namespace to empty", lambda: not self.namespace_pids(), timeout=timeout)

    def _remove_cgroups(self, timeout: float = 5) -> None:
        """The containers' cgroups ``/sys/fs/cgroup/*/NAME/ID``: any process still
        in one is a container of ours (SIGKILL); then remove them."""
        for top in _cgroup_tops(self.name):
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError, ValueError):
                        for pid in Path(dirpath, "cgroup.procs").read_text().split():
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(int(pid), signal.SIGKILL)
        _remove_cgroups(self.name, timeout)


def _has_overlayfs() -> bool:
    with contextlib.suppress(OSError):
        return any(line.split()[-1] == "overlay" for line in Path("/proc/filesystems").read_text().splitlines() if line.strip())
    return False


def qiao_serving_dockerd(name: str, tmp: Path, *, live_restore: bool = False) -> tuple[Host, Dockerd]:
    """A test host whose qiaod serves Docker's plugin protocol (set in ROOT/daemon.json, as a user
    would: ``docker-plugin``, ``docker-host``) and a dockerd that uses it; close the dockerd first."""
    plugins = tmp / "plugins"
    plugins.mkdir()
    host = Host(name, start=False)
    docker: Dockerd | None = None
    try:
        docker_sock = tmp / "docker" / "docker.sock"  # where the harness puts dockerd's API socket
        Path(host.root, "daemon.json").write_text(
            json.dumps({"docker-plugin": str(plugins / "qiao.sock"), "docker-host": f"unix://{docker_sock}"})
        )
        host.start_daemon()
        docker = Dockerd(host, tmp, plugin_dir=plugins, live_restore=live_restore)
        assert Path(docker.socket) == docker_sock
        return host, docker
    except BaseException:
        if docker is not None:
            docker.close()
        host.cleanup()
        raise
