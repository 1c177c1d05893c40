"""Thin ctypes bindings for the namespace and mount syscalls Python 3.11 lacks.

Standard library only: the container shim imports this and must start fast.
Namespace switches with ``setns``/``unshare`` affect only the calling thread
(task), which is what lets the daemon work inside a sandbox from a worker
thread without disturbing the others.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

NSFS_MAGIC = 0x6E736673

# dlopen(NULL): the C library the interpreter already runs on.  Not
# ctypes.util.find_library("c"): importing ctypes.util costs ~15 ms (shutil,
# subprocess, tempfile) and the lookup runs ldconfig: a third of a shim's start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


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


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, None), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def is_netns_mount(path: str) -> bool:
    """True when ``path`` is a bind mount of a network namespace (an nsfs inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    # nsfs inodes live on one anonymous device shared by every namespace file.
    own = os.stat("/proc/self/ns/net")
    return st.st_dev == own.st_dev
