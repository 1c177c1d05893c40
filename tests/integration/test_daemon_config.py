"""qiaod reads ROOT/daemon.json at start: a bad file is one line on stderr and exit 1, nothing started."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from tests.integration.conftest import QIAOD, RUN, Namespace, one_line_error


def test_a_bad_daemon_json_is_one_clear_error_at_start() -> None:
    ns = Namespace("cfg")
    root = tempfile.mkdtemp(prefix=f"{RUN}-cfg-")
    try:
        for content, words in (("{oops", "not valid JSON"), (json.dumps({"cluster_store": "x"}), "unknown option 'cluster_store'")):
            with open(os.path.join(root, "daemon.json"), "w") as f:
                f.write(content)
            proc = ns.sh(QIAOD, "--root", root, check=False, timeout=30)
            assert words in one_line_error(proc) and proc.returncode == 1
            assert not os.path.exists(os.path.join(root, "run", "qiao.sock"))
        with open(os.path.join(root, "daemon.json"), "w") as f:
            json.dump({"resolv-conf": "/etc/resolv.conf"}, f)
        proc = ns.sh(QIAOD, "--root", root, "--resolv-conf", "/etc/resolv.conf", check=False, timeout=30)
        assert "--resolv-conf" in one_line_error(proc)
    finally:
        ns.delete()
        shutil.rmtree(root, ignore_errors=True)
