"""Network namespaces held by bind mounts, as Docker's sandboxes are.

A namespace file under qiao's root keeps the namespace alive with no process
in it.  All switching is per thread (see :mod:`qiao.kernel.linux`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from qiao.kernel import linux


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the network namespace at ``path``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(target, linux.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


def create(path: str) -> None:
    """Create a new, empty network namespace and bind-mount it at ``path``."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.unshare(linux.CLONE_NEWNET)
        try:
            linux.mount("/proc/thread-self/ns/net", path, None, linux.MS_BIND)
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(own)


def adopt(path: str, pid: int) -> None:
    """Re-attach ``path`` to the namespace of a live process (after a mount namespace change)."""
    if not os.path.exists(path):
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    linux.mount(f"/proc/{pid}/ns/net", path, None, linux.MS_BIND)


def pin(source: str, path: str) -> None:
    """Bind-mount the namespace at ``source`` (``/proc/self/fd/N``: one another
    process passed) at ``path``, so this mount namespace can name it."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    try:
        linux.mount(source, path, None, linux.MS_BIND)
    except BaseException:
        os.unlink(path)
        raise


def identity(path: str) -> int:
    """The inode of the network namespace at ``path`` (a bind mount,
    ``/proc/PID/ns/net`` or ``/proc/self/fd/N``); 0 when the path is missing or
    is not a namespace (inodes are unique within nsfs, the one device they share)."""
    try:
        st = os.stat(path)
        return st.st_ino if st.st_dev == os.stat("/proc/self/ns/net").st_dev else 0
    except OSError:
        return 0


NETNS_RUN_DIR = "/run/netns"


def run_dir_mounted() -> bool:
    """Whether /run/netns is a mount point (iproute2 bind-mounts it onto itself
    the first time a named namespace is made, and never undoes it)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == NETNS_RUN_DIR for line in f)


def release_run_dir(was_mounted: bool) -> None:
    """Undo iproute2's bind mount of /run/netns if we caused it and it is empty again."""
    if not was_mounted and run_dir_mounted() and not os.listdir(NETNS_RUN_DIR):
        with contextlib.suppress(OSError):
            linux.umount(NETNS_RUN_DIR)


def destroy(path: str) -> None:
    """Unmount and remove a namespace file; missing files are not an error."""
    with contextlib.suppress(OSError):
        linux.umount(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
