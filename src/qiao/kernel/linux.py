"""Thin ctypes bindings for the namespace, mount, prctl and capability
syscalls Python 3.11 lacks.

Standard library only: the container shim and ``qiao exec`` import this and must start fast.
Namespace switches with ``setns``/``unshare`` affect only the calling thread
(task), which is what lets the daemon work inside a sandbox from a worker
thread without disturbing the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

NSFS_MAGIC = 0x6E736673

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_STRICTATIME = 1 << 24

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_SYMLINKS = 0x10

# Syscalls glibc has no wrapper for, by machine (open_tree and move_mount have one number everywhere).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "open_tree": 428, "move_mount": 429},
    "aarch64": {"pivot_root": 41, "open_tree": 428, "move_mount": 429},
}

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


# dlopen(NULL): the C library the interpreter already runs on.  Not
# ctypes.util.find_library("c"): importing ctypes.util costs ~15 ms (shutil,
# subprocess, tempfile) and the lookup runs ldconfig: a third of a shim's start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def _syscall(name: str, *args: object) -> int:
    number = _SYSCALLS.get(os.uname().machine, {}).get(name)
    if number is None:
        raise OSError(38, f"{name}: not supported on {os.uname().machine} by qiao")
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


def pivot_root(new_root: str, put_old: str) -> None:
    _syscall("pivot_root", ctypes.c_char_p(os.fsencode(new_root)), ctypes.c_char_p(os.fsencode(put_old)))


def open_tree(path: str, flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC) -> int:
    """A detached copy of the mount of ``path`` (a bind mount not yet attached
    anywhere), as a descriptor: it can be attached after ``pivot_root``, when
    ``path`` is no longer reachable by name."""
    return _syscall("open_tree", ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint(flags))


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount ``fd`` (from :func:`open_tree`) at ``target``."""
    _syscall(
        "move_mount",
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(os.fsencode(target)),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, 0, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl {option}: {os.strerror(err)}")
    return int(result)


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to us rather than to PID 1."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_no_new_privs() -> None:
    """execve can no longer grant privileges (setuid bits, file capabilities)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def bounding_set() -> int:
    """The calling thread's capability bounding set, as a mask (bit N = capability N)."""
    return sum(1 << cap for cap in range(cap_last_cap() + 1) if prctl(PR_CAPBSET_READ, cap) == 1)


def drop_bounding(cap: int) -> None:
    prctl(PR_CAPBSET_DROP, cap)


def clear_ambient() -> None:
    with contextlib.suppress(OSError):  # EINVAL before Linux 4.3: no ambient set to clear
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")

    def mask(field: str) -> int:
        return int(getattr(data[0], field)) | int(getattr(data[1], field)) << 32

    return mask("effective"), mask("permitted"), mask("inheritable")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        data[i].effective = effective >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inheritable >> (32 * i) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def is_netns_mount(path: str) -> bool:
    """True when ``path`` is a bind mount of a network namespace (an nsfs inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    # nsfs inodes live on one anonymous device shared by every namespace file.
    own = os.stat("/proc/self/ns/net")
    return st.st_dev == own.st_dev
