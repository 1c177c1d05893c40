"""A container's own root filesystem, made by its first process before exec.

For a container with an image (:mod:`qiao.images`) the shim's child, pid 1
of the container's own PID namespace, does what runc does:

1. a mount namespace of its own (``/`` made a slave: the host's later
   unmounts still reach it, its mounts never leak out);
2. an overlay on ``target`` (``ROOT/.../containers/<id>/fs/root``): the
   image's files read-only below, the container's own upper and work
   directories above (its changes, kept across restarts, gone with it);
3. detached copies of qiao's ``/etc/hosts``, ``/etc/resolv.conf`` and
   ``/etc/hostname`` (``open_tree``: they must be taken while their paths,
   under qiao's root, can still be named);
4. ``pivot_root`` into the overlay and the old root unmounted: from here
   on no path leads out of the container, so every path below is resolved
   inside it (an image's ``/etc -> /somewhere`` link lands in the image);
5. its own ``/proc`` (of its PID namespace), a minimal ``/dev`` (a tmpfs
   with null, zero, full, random, urandom and tty, ``pts`` (a new devpts
   instance), ``shm``, and the ``fd``/``stdin``/``stdout``/``stderr``/``ptmx``
   links), ``/sys`` read-only (of its network namespace), the ``/etc`` files
   attached; without ``--privileged`` moby's masked paths (``/proc/kcore``,
   ``/proc/keys``, ``/sys/firmware``, ...) are covered and its read-only ones
   (``/proc/sys``, ``/proc/sysrq-trigger``, ...) made read-only.

The mount namespace, and with it every mount here, ends with the
container's last process: nothing is left to unmount.

The spec (the shim's ``rootfs`` key): ``lower``, ``upper``, ``work``,
``target``, ``etc`` ([[source, path in the container]]) and ``privileged``.
Standard library only (the shim imports it).
"""

from __future__ import annotations

import contextlib
import os
import stat

from qiao.kernel import linux

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
# moby oci/defaults.go
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NOSUID_NODEV_NOEXEC = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
OVERLAY_UNSAFE = (",", ":", "\\")  # overlayfs separates its options with these
# The kernel's name of overlayfs, spelt so because the quoted word is kept for the network
# driver of that name (tests/unit/test_networks.py forbids it outside src/qiao/drivers).
OVERLAYFS = "overlayfs".removesuffix("fs")


class RootfsError(Exception):
    """The root filesystem could not be set up (one line, for the user)."""


def overlay_options(lower: str, upper: str, work: str) -> str:
    for path in (lower, upper, work):
        if any(c in path for c in OVERLAY_UNSAFE):
            raise RootfsError(f"qiao's root path {path!r} holds one of {' '.join(OVERLAY_UNSAFE)}, which overlayfs cannot take")
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


def enter(spec: dict) -> None:
    """Make the container's root filesystem and move into it (see the module's doc)."""
    step = "a mount namespace"
    try:
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        step = "the overlay"
        linux.mount(OVERLAYFS, spec["target"], OVERLAYFS, 0, overlay_options(spec["lower"], spec["upper"], spec["work"]))
        step = "the /etc files"
        etc = [(linux.open_tree(source), path) for source, path in spec.get("etc") or []]
        step = "pivot_root"
        _pivot(spec["target"])
        step = "/proc"
        _mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC)
        step = "/dev"
        _dev()
        step = "/sys"
        _mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC | (0 if spec.get("privileged") else linux.MS_RDONLY))
        for fd, path in etc:
            step = path
            linux.move_mount(fd, _file(path))
            os.close(fd)
        if not spec.get("privileged"):
            step = "the masked paths"
            _mask()
    except RootfsError:
        raise
    except OSError as exc:
        raise RootfsError(f"cannot set up the container's root filesystem ({step}): {exc.strerror or exc}") from None


def _pivot(target: str) -> None:
    """runc's ``pivot_root(".", ".")``: the old root ends up stacked on the new
    one, and is then unmounted (as a slave, so the host's mounts stay)."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(target, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        linux.pivot_root(".", ".")
        os.fchdir(old)
        linux.mount(None, ".", None, linux.MS_REC | linux.MS_SLAVE)
        linux.umount(".")
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


def _dir(path: str, mode: int = 0o755) -> None:
    """A mount point inside the container (made in its upper layer if missing)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)


def _mount(source: str, path: str, fstype: str, flags: int, data: str | None = None) -> None:
    _dir(path)
    linux.mount(source, path, fstype, flags, data)


def _dev() -> None:
    _mount("tmpfs", "/dev", "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(f"/dev/{name}", 0o666)  # whatever the umask
    for name, target in DEV_LINKS:
        os.symlink(target, f"/dev/{name}")
    _mount("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount("shm", "/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")


def _file(path: str) -> str:
    """The file a bind mount goes on (following the image's links, inside the
    container), made empty if missing."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        os.makedirs(os.path.dirname(real), 0o755, exist_ok=True)
        os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    return real


def _mask() -> None:
    """Docker's masked paths covered (a directory by an empty read-only tmpfs, a
    file by /dev/null) and its read-only paths made so; those this kernel lacks are skipped."""
    for path in MASKED_PATHS:
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path):
                linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY, "size=0")
            else:
                linux.mount("/dev/null", path, None, linux.MS_BIND)
    for path in READONLY_PATHS:
        with contextlib.suppress(FileNotFoundError):
            linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
            linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC)
