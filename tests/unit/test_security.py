"""qiao.runtime.security: Docker's capability arithmetic, user resolution as
runc's, working directories, the create body, the shim's spec keys, the
hidden paths; and (as root, in a forked child) what ``enter`` leaves a process."""

from __future__ import annotations

import json
import os

import pytest

from qiao.paths import Root
from qiao.runtime import security
from qiao.runtime.security import DEFAULT_CAPS, SecurityError, User

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
alice:x:1000:1000:Alice:/home/alice:/bin/bash
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
nohome:x:1001:1001::
"""
GROUP = """\
root:x:0:
adm:x:4:alice,daemon
users:x:100:alice
alice:x:1000:
nogroup:x:65534:
staff:x:50:root
"""

ALL_BITS = (1 << len(security.CAPABILITIES)) - 1


# -- capabilities ----------------------------------------------------------------------


def test_the_default_set_is_mobys() -> None:
    assert DEFAULT_CAPS == (
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    )  # fmt: skip
    assert security.capabilities([], [], False) == list(DEFAULT_CAPS)
    assert security.CAPABILITIES[12] == "CAP_NET_ADMIN" and security.CAPABILITIES[21] == "CAP_SYS_ADMIN"
    assert security.CAPABILITIES[40] == "CAP_CHECKPOINT_RESTORE"


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        (["net_admin"], ["CAP_NET_ADMIN"]),
        (["CAP_net_raw", "NET_RAW"], ["CAP_NET_RAW"]),  # one entry per capability
        (["all"], ["ALL"]),
        (["Sys_Time", "ALL"], ["CAP_SYS_TIME", "ALL"]),
    ],
)
def test_names_are_normalised_as_dockers(given, normal) -> None:
    assert security.normalize_caps(given) == normal


@pytest.mark.parametrize("name", ["NET_ADMINS", "CAP_", "cap_all", "", "FOO"])
def test_unknown_names_are_refused(name) -> None:
    with pytest.raises(SecurityError, match="unknown capability"):
        security.normalize_caps([name])


@pytest.mark.parametrize(
    ("add", "drop", "privileged", "want"),
    [
        (["NET_ADMIN"], [], False, [*DEFAULT_CAPS, "CAP_NET_ADMIN"]),
        ([], ["chown", "MKNOD"], False, [c for c in DEFAULT_CAPS if c not in ("CAP_CHOWN", "CAP_MKNOD")]),
        (["NET_ADMIN"], ["ALL"], False, ["CAP_NET_ADMIN"]),
        ([], ["ALL"], False, []),
        (["ALL"], ["SYS_ADMIN"], False, [c for c in security.CAPABILITIES if c != "CAP_SYS_ADMIN"]),
        (["ALL"], ["ALL"], False, list(security.CAPABILITIES)),  # as Docker: an added ALL wins
        (["KILL"], ["KILL"], False, [*(c for c in DEFAULT_CAPS if c != "CAP_KILL"), "CAP_KILL"]),  # added back after the drop
        (["CHOWN"], [], False, list(DEFAULT_CAPS)),  # already there: not twice
        ([], ["ALL"], True, list(security.CAPABILITIES)),  # privileged ignores both lists
    ],
)
def test_capabilities_follow_dockers_tweak(add, drop, privileged, want) -> None:
    assert security.capabilities(add, drop, privileged) == want


def test_masks_and_names() -> None:
    assert security.mask(["CAP_CHOWN", "CAP_NET_ADMIN", "ALL"]) == 1 | 1 << 12
    assert security.names(1 | 1 << 12 | 1 << 45) == ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_45"]
    assert security.mask(list(security.CAPABILITIES)) == ALL_BITS
    assert security.names(security.mask(list(DEFAULT_CAPS))) == sorted(DEFAULT_CAPS, key=security.CAPABILITIES.index)


# -- users -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "user"),
    [
        ("", User(0, 0, [50], "/root")),  # root, in the groups that list it
        ("root", User(0, 0, [50], "/root")),
        ("0", User(0, 0, [50], "/root")),
        ("alice", User(1000, 1000, [4, 100], "/home/alice")),
        ("1000", User(1000, 1000, [4, 100], "/home/alice")),
        ("nobody", User(65534, 65534, [], "/nonexistent")),
        ("alice:users", User(1000, 100, [], "/home/alice")),  # an explicit group: no supplementary groups
        ("alice:4", User(1000, 4, [], "/home/alice")),
        ("alice:4242", User(1000, 4242, [], "/home/alice")),  # a number need not exist
        ("4242", User(4242, 0, [], "/")),
        ("4242:4243", User(4242, 4243, [], "/")),
        ("nohome", User(1001, 1001, [], "/")),
    ],
)
def test_users_resolve_as_runc(spec, user) -> None:
    assert security.resolve_user(spec, PASSWD, GROUP) == user


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("bob", "unable to find user bob: no matching entries in passwd file"),
        ("alice:wheel", "unable to find group wheel: no matching entries in group file"),
        ("99999999999", "uids and gids must be in range 0-2147483647"),
        ("alice:99999999999", "uids and gids must be in range"),
    ],
)
def test_unknown_users_and_groups_are_one_clear_error(spec, fragment) -> None:
    with pytest.raises(SecurityError, match=fragment):
        security.resolve_user(spec, PASSWD, GROUP)


def test_users_come_from_the_hosts_files_by_default() -> None:
    assert security.resolve_user("root").uid == 0
    assert security.resolve_user("nobody").uid == 65534


# -- working directory, create body, spec ------------------------------------------------------


def test_working_directories_must_be_absolute() -> None:
    assert security.check_workdir("") == ""
    assert security.check_workdir("/tmp/../srv/") == "/srv"
    with pytest.raises(SecurityError, match="the working directory 'tmp' is invalid, it needs to be an absolute path"):
        security.check_workdir("tmp")


def check(user: str = "", workdir: str = "", cap_add=(), cap_drop=(), privileged: bool = False, available: int = ALL_BITS):
    return security.check_process(user, workdir, list(cap_add), list(cap_drop), privileged, available)


def test_process_fields() -> None:
    assert check("nobody", "/tmp", ["net_admin"], ["ALL"]) == {
        "user": "nobody",
        "workdir": "/tmp",
        "cap_add": ["CAP_NET_ADMIN"],
        "cap_drop": ["ALL"],
        "privileged": False,
    }
    assert check(available=0) == {"user": "", "workdir": "", "cap_add": [], "cap_drop": [], "privileged": False}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"cap_add": ["NET_ADMINS"]}, 'unknown capability: "CAP_NET_ADMINS"'),
        ({"cap_drop": ["bogus"]}, "unknown capability"),
        ({"user": "no-such-user-here"}, "unable to find user no-such-user-here"),
        ({"workdir": "relative/dir"}, "needs to be an absolute path"),
        ({"cap_add": ["SYS_TIME", "NET_ADMIN"]}, "cannot add CAP_SYS_TIME: qiaod itself does not hold it"),
    ],
)
def test_process_errors(fields, fragment) -> None:
    with pytest.raises(SecurityError, match=fragment):
        check(**fields, available=ALL_BITS & ~(1 << 25))


def test_privileged_and_all_need_not_be_held_in_full() -> None:
    """--privileged and --cap-add ALL get what qiaod holds; only a named capability must be held."""
    assert check(cap_add=["SYS_TIME"], privileged=True, available=1)["privileged"]
    assert check(cap_add=["ALL"], available=1)["cap_add"] == ["ALL"]


def test_process_spec_keys() -> None:
    spec = security.process_spec("nobody", "", [], ["MKNOD"], False)
    assert spec == {
        "uid": 65534,
        "gid": 65534,
        "groups": spec["groups"],
        "home": "/nonexistent",
        "cwd": "/",
        "caps": [c for c in DEFAULT_CAPS if c != "CAP_MKNOD"],
        "no_new_privs": True,
    }
    json.dumps(spec)  # it travels as JSON
    privileged = security.process_spec("", "/srv", [], [], True)
    assert (privileged["uid"], privileged["cwd"], privileged["no_new_privs"]) == (0, "/srv", False)
    assert privileged["caps"] == list(security.CAPABILITIES)


def test_hidden_paths_cover_the_root_and_the_default_root() -> None:
    assert security.hidden_paths(Root.resolve("/tmp/h1")) == ["/tmp/h1", "/var/lib/qiao", "/run/qiao"]
    assert security.hidden_paths(Root("/var/lib/qiao", "/run/qiao")) == ["/var/lib/qiao", "/run/qiao"]
    assert security.hidden_paths(Root.resolve("/run/qiao/x")) == ["/run/qiao/x", "/var/lib/qiao", "/run/qiao"]
    assert security.hidden_paths(Root.resolve("/var/lib")) == ["/var/lib", "/run/qiao"]  # the default data dir is inside


# -- enter (root only: it changes credentials, in a forked child) ---------------------------------


def entered(*args) -> dict:
    """/proc/self/status and the cwd of a forked child after ``enter(*args)``, or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            security.enter(*args)
            out = {"status": security.process_status("self"), "cwd": os.getcwd()}
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = json.loads(f.read())
    os.waitpid(pid, 0)
    return data


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes credentials: needs root")


@needs_root
def test_enter_as_root_with_the_default_set() -> None:
    held = int(security.process_status("self")["CapBnd"], 16)
    want = security.mask(list(DEFAULT_CAPS))
    out = entered("/tmp", want, 0, 0, [], True)
    status = out["status"]
    assert int(status["CapBnd"], 16) == want & held
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == want & held
    assert int(status["CapInh"], 16) == int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1" and out["cwd"] == "/tmp"
    assert status["Uid"].split() == ["0"] * 4 and status["Groups"] == ""


@needs_root
def test_enter_as_another_user_leaves_no_effective_capabilities() -> None:
    want = security.mask(list(DEFAULT_CAPS))
    status = entered("/", want, 65534, 65534, [4, 100], True)["status"]
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].split() == ["4", "100"]
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == want & int(security.process_status("self")["CapBnd"], 16)


@needs_root
def test_enter_refuses_a_missing_working_directory() -> None:
    out = entered("/no/such/dir", 0, 0, 0, [], True)
    assert out["error"] == (
        'SecurityError: the working directory "/no/such/dir" does not exist '
        "(qiao does not create it: the container shares the host's filesystem)"
    )
