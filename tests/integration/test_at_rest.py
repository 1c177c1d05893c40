"""Secrets at rest: the store and the logs hold containers' environments, so
every file under qiao's root that holds them is root's alone (0600) and every
directory is 0700."""

from __future__ import annotations

import os
import stat

from tests.integration.conftest import Host


def test_store_logs_and_directories_are_root_only(make_host) -> None:
    host: Host = make_host("rest")
    cid = host.run_d("-e", "PASSWORD=hunter2", "--", "sh", "-c", "echo $PASSWORD; sleep 600")
    host.qiao("rm", "-f", host.run_d("--", "true"))
    lib, run = os.path.join(host.root, "lib"), os.path.join(host.root, "run")
    modes = {}
    for top in (lib, run):
        for dirpath, _dirnames, filenames in os.walk(top):
            modes[dirpath] = stat.S_IMODE(os.stat(dirpath).st_mode)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path) and stat.S_ISREG(os.lstat(path).st_mode):
                    modes[path] = stat.S_IMODE(os.lstat(path).st_mode)
    dirs = {p: m for p, m in modes.items() if os.path.isdir(p) and not p.startswith(os.path.join(run, "netns"))}
    assert all(m == 0o700 for m in dirs.values()), {p: oct(m) for p, m in dirs.items() if m != 0o700}
    secret_files = [p for p in modes if p.endswith(("qiao.db", "qiao.db-wal", "qiao.db-shm", "container.log", "qiaod.log"))]
    assert any(p.endswith("qiao.db") for p in secret_files) and any(p.endswith("container.log") for p in secret_files)
    assert all(modes[p] == 0o600 for p in secret_files), {p: oct(modes[p]) for p in secret_files if modes[p] != 0o600}
    assert host.qiao("logs", cid).stdout.strip() == "hunter2"
