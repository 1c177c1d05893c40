"""What a container's process may do, and what it must not see.

* **Capabilities** as Docker gives them: moby's default set, changed by
  ``--cap-add``/``--cap-drop`` (``ALL`` too) or replaced by ``--privileged``
  (moby ``oci/caps``: ``NormalizeLegacyCapabilities``, ``TweakCapabilities``).
* **User** (``--user``): ``user``, ``uid``, ``user:group``, ``uid:gid``,
  resolved against the host's /etc/passwd and /etc/group (a qiao container
  shares the host's filesystem), with supplementary groups as Docker's
  (runc's ``GetExecUser``).
* **Working directory** (``--workdir``): absolute; it must exist.
* **Hidden paths**: qiao's own root, covered in the container's mount namespace.

qiaod validates a create with :func:`check_process` and builds the shim's
spec keys with :func:`process_spec` and :func:`hidden_paths`; :func:`enter`
applies them in the process about to exec the command (the shim's child,
``qiao exec``).  The shim's spec keys:

``hide``         paths covered by an empty read-only tmpfs (after the /etc bind mounts)
``caps``         capability names: the bounding, permitted and effective sets
                 (as far as the shim holds them); inheritable and ambient are empty
``no_new_privs`` set PR_SET_NO_NEW_PRIVS (all but ``--privileged``)
``uid``, ``gid``, ``groups``  the process's user, group and supplementary groups
``user``         instead of those, for a container with an image: ``--user`` as given,
                 resolved by the shim against the image's /etc/passwd and /etc/group
``cwd``          its working directory

Standard library only, and light: the shim and the CLI import it.
"""

from __future__ import annotations

import os

from qiao.paths import DEFAULT_DATA, DEFAULT_RUN

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (shim and CLI start-up time)
if TYPE_CHECKING:
    from typing import Any

    from qiao.paths import Root

# Linux capabilities by number (linux/capability.h), as Docker names them.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
_NUMBER = {name: number for number, name in enumerate(CAPABILITIES)}

# moby oci/caps/defaults.go, in its order.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

MAX_ID = (1 << 31) - 1  # runc's range for uids and gids


class SecurityError(ValueError):
    """A capability, user or working directory that cannot be honoured (one line, for the user)."""


# -- capabilities ----------------------------------------------------------------


def normalize_caps(names: list[str]) -> list[str]:
    """Upper case with a ``CAP_`` prefix; ``ALL`` stays ``ALL``; unknown names are refused."""
    out = []
    for raw in names:
        name = str(raw).strip().upper()
        if name != "ALL":
            name = name if name.startswith("CAP_") else "CAP_" + name
            if name not in _NUMBER:
                raise SecurityError(f'unknown capability: "{name}"')
        if name not in out:
            out.append(name)
    return out


def capabilities(cap_add: list[str], cap_drop: list[str], privileged: bool) -> list[str]:
    """The container's capabilities (Docker's ``TweakCapabilities``): every
    one when privileged; with ``ALL`` added, all but the dropped; with ``ALL``
    dropped, only the added; otherwise the defaults minus the dropped plus the added."""
    if privileged:
        return list(CAPABILITIES)
    add, drop = normalize_caps(cap_add), normalize_caps(cap_drop)
    if "ALL" in add:
        return [c for c in CAPABILITIES if c not in drop]
    if "ALL" in drop:
        return [c for c in add if c != "ALL"]
    return [c for c in DEFAULT_CAPS if c not in drop] + [c for c in add if c not in DEFAULT_CAPS or c in drop]


def mask(names: list[str]) -> int:
    """Capability names as a mask (bit N = capability N); ``ALL`` and unknown names count for nothing."""
    return sum(1 << _NUMBER[n] for n in set(names) if n in _NUMBER)


def names(caps: int) -> list[str]:
    """A mask as capability names (numbers the table does not know as ``CAP_<N>``)."""
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else f"CAP_{n}" for n in range(caps.bit_length()) if caps >> n & 1]


def process_status(pid: int | str) -> dict[str, str]:
    """/proc/PID/status as a dict (``CapBnd``, ``CapEff``, ``NoNewPrivs``, ``Uid``, ...)."""
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


# -- user ------------------------------------------------------------------------


class User:
    """A resolved ``--user``.  (A plain class: ``dataclasses`` costs start-up time.)"""

    __slots__ = ("uid", "gid", "groups", "home")

    def __init__(self, uid: int, gid: int, groups: list[int], home: str):
        self.uid, self.gid, self.groups, self.home = uid, gid, groups, home

    def __eq__(self, other: object) -> bool:
        return isinstance(other, User) and (self.uid, self.gid, self.groups, self.home) == (other.uid, other.gid, other.groups, other.home)

    def __repr__(self) -> str:
        return f"User(uid={self.uid}, gid={self.gid}, groups={self.groups}, home={self.home!r})"


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _entries(text: str, fields: int) -> list[list[str]]:
    """The well-formed lines of a passwd or group file, split on ':'."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if line.strip() and not line.startswith("#") and len(parts) >= fields:
            out.append(parts)
    return out


def _number(text: str) -> int | None:
    """An id given as a number (ASCII digits, few enough for int(); the range is checked after); None for a name."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def resolve_user(spec: str, passwd: str | None = None, group: str | None = None) -> User:
    """``user``, ``uid``, ``user:group`` or ``uid:gid`` (empty: root) to ids, as runc's
    ``GetExecUser``: a name must exist; a number need not (its group is then 0); a
    user found in the passwd file brings its primary group, home and, unless a
    group is given, every group that lists it as a member."""
    passwd = _read("/etc/passwd") if passwd is None else passwd
    group = _read("/etc/group") if group is None else group
    user_arg, _, group_arg = spec.partition(":")
    uid_arg, gid_arg = _number(user_arg), _number(group_arg)
    if (uid_arg is not None and uid_arg > MAX_ID) or (gid_arg is not None and gid_arg > MAX_ID):
        raise SecurityError(f"invalid user {spec!r}: uids and gids must be in range 0-{MAX_ID}")
    uid, gid, home, matched = 0, 0, "/", ""
    for name, _pw, uid_text, gid_text, *rest in _entries(passwd, 4):
        if _number(uid_text) is None or _number(gid_text) is None:
            continue
        if int(uid_text) == uid_arg if uid_arg is not None else (name == user_arg if user_arg else int(uid_text) == 0):
            uid, gid, matched = int(uid_text), int(gid_text), name
            home = rest[1] if len(rest) > 1 and rest[1] else "/"
            break
    else:
        if user_arg and uid_arg is None:
            raise SecurityError(f"unable to find user {user_arg}: no matching entries in passwd file")
        uid = uid_arg or 0
    groups: list[int] = []
    if group_arg:
        for name, _pw, gid_text, *_members in _entries(group, 3):
            if _number(gid_text) is not None and (int(gid_text) == gid_arg if gid_arg is not None else name == group_arg):
                gid = int(gid_text)
                break
        else:
            if gid_arg is None:
                raise SecurityError(f"unable to find group {group_arg}: no matching entries in group file")
            gid = gid_arg
    elif matched:
        for _name, _pw, gid_text, *members in _entries(group, 3):
            if _number(gid_text) is not None and matched in (members[0].split(",") if members else []):
                groups.append(int(gid_text))
    return User(uid, gid, groups, home)


def check_workdir(path: str) -> str:
    """An absolute path (Docker's rule), normalised; empty means ``/``."""
    if path and not os.path.isabs(path):
        raise SecurityError(f"the working directory '{path}' is invalid, it needs to be an absolute path")
    return os.path.normpath(path) if path else ""


# -- the daemon's side -----------------------------------------------------------------


def check_process(
    user: str,
    workdir: str,
    cap_add: list[str],
    cap_drop: list[str],
    privileged: bool,
    available: int | None = None,
    check_user: bool = True,
) -> dict[str, Any]:
    """A container's user, working directory and capabilities, checked (unknown
    capability, user or group; a relative working directory; a capability qiaod
    itself lacks, ``available`` being its bounding set), as the Container fields
    ``user``, ``workdir``, ``cap_add``, ``cap_drop``, ``privileged``.  Without
    ``check_user`` (a container with an image) the user is looked up at start,
    in the image's files."""
    add = normalize_caps(cap_add)
    fields = {
        "user": user,
        "workdir": check_workdir(workdir),
        "cap_add": add,
        "cap_drop": normalize_caps(cap_drop),
        "privileged": privileged,
    }
    if check_user:
        resolve_user(user)
    if available is None:
        available = int(process_status("self").get("CapBnd", "0"), 16)
    missing = [c for c in add if c != "ALL" and not available >> _NUMBER[c] & 1]
    if missing and not privileged:
        raise SecurityError(f"cannot add {', '.join(missing)}: qiaod itself does not hold it (not in its bounding set)")
    return fields


def process_spec(
    user: str, workdir: str, cap_add: list[str], cap_drop: list[str], privileged: bool, in_image: bool = False
) -> dict[str, Any]:
    """The shim's spec keys for a container's process (see the module's doc), plus
    ``home``: the user's home directory, for HOME when the container sets none.
    For a container with an image (``in_image``) the spec names the user
    (``user``) for the shim to resolve inside the container."""
    spec: dict[str, Any] = {
        "cwd": workdir or "/",
        "caps": capabilities(cap_add, cap_drop, privileged),
        "no_new_privs": not privileged,
    }
    if in_image:
        return {**spec, "user": user}
    who = resolve_user(user)
    return {**spec, "uid": who.uid, "gid": who.gid, "groups": who.groups, "home": who.home}


def hidden_paths(root: Root) -> list[str]:
    """What no container may see: this daemon's root (store, logs, other
    containers' files; socket, pid file, namespace files) and the default root."""
    own = [root.base] if root.base else [root.data, root.run]
    inside = [p for p in own if p]
    for default in (DEFAULT_DATA, DEFAULT_RUN):
        if not any(default == p or default.startswith(p.rstrip("/") + "/") for p in inside):
            inside.append(default)
    return inside


# -- the process's side ------------------------------------------------------------------


def enter(cwd: str, caps: int, uid: int, gid: int, groups: list[int], no_new_privs: bool) -> None:
    """Become the container's process, just before exec: working directory;
    bounding set cut to ``caps`` (a mask; what this process does not hold is
    left out); no ambient or inheritable capabilities; user, group and
    supplementary groups; permitted and effective = ``caps`` for root, none
    for any other user (as Docker: its process gets none across exec either);
    ``no_new_privs``.  Raises SecurityError or OSError."""
    from qiao.kernel import linux

    cwd = cwd or "/"
    retry = False
    try:
        os.chdir(cwd)  # as root first, as runc: a directory root may enter but the user may not still works
    except PermissionError:
        retry = True
    except FileNotFoundError:
        raise SecurityError(
            f'the working directory "{cwd}" does not exist (qiao does not create it: the container shares the host\'s filesystem)'
        ) from None
    except OSError as exc:
        raise SecurityError(f'cannot use the working directory "{cwd}": {exc.strerror}') from None
    bounding = linux.bounding_set()
    _effective, permitted, _inheritable = linux.capget()
    keep = caps & bounding & permitted
    for cap in range(bounding.bit_length()):
        if bounding >> cap & 1 and not keep >> cap & 1:
            linux.drop_bounding(cap)
    linux.clear_ambient()
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # to a non-root uid: the kernel clears permitted and effective
    linux.capset(keep if uid == 0 else 0, keep if uid == 0 else 0, 0)
    if no_new_privs:
        linux.set_no_new_privs()
    if retry:
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise SecurityError(f'cannot use the working directory "{cwd}": {exc.strerror}') from None
