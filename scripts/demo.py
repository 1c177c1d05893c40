"""``make demo``: Docker's container networking, working live, on throw-away hosts.

Run as root (``.venv/bin/python scripts/demo.py``).  Two parts, each made for
this run and removed at its end, also after a failure or Ctrl-C:

1. one simulated host and an "outside" machine (scripts/demo_host.py): the
   network modes, container to container, NAT out, a published port, user
   networks with names by DNS, isolation between networks, ``--link``;
2. a ``qiao lab`` of three hosts (scripts/demo_overlay.py): an overlay
   network across them, VXLAN over the underlay with a subnet per host
   leased from etcd, containers talking across hosts by name and address.

Every step prints ``$ command`` and its real output, and checks what it
claims: the demo stops with one line ``demo: FAILED: ...`` when a claim does
not hold.  Traffic goes only to 127.0.0.0/8 and to the namespaces this script
makes.  Only processes this script (or its lab) started are ended, by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

from demo_common import QIAO, Console, Failed, Part
from demo_host import HostDemo
from demo_overlay import OverlayDemo

from qiao.kernel import netns as qnetns

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Be the parent of what this run starts in the background (qiaod, the lab's
    etcd and daemons, shims) once their starter exits, so that the demo reaps
    them when they end instead of leaving them as init's zombies for a while."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates network namespaces): sudo make demo", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "bridge", "nsenter", "nft", "etcd") if shutil.which(tool) is None]
    if missing or not os.path.exists(QIAO):
        print(f"demo: missing {', '.join(missing) or QIAO}; run `make setup` first", file=sys.stderr)
        return 1

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (a background job)
        signal.signal(sig, interrupted)
    adopt_orphans()
    console = Console()
    tag = "qdemo-" + secrets.token_hex(2)
    run_dir_was_mounted = qnetns.run_dir_mounted()
    parts: list[Part] = [HostDemo(console, tag), OverlayDemo(console, tag)]
    console.out(console.style.title("qiao demo: Docker's container networking, live, on throw-away hosts"))
    started = time.monotonic()
    status = 0
    try:
        for part in parts:
            part.run()
            problems = part.teardown(narrate=True)
            if problems:
                raise Failed(f"could not remove: {', '.join(problems)}")
    except KeyboardInterrupt:
        print(console.style.bad("\ndemo: interrupted; cleaning up"), flush=True)
        status = 130
    except (Failed, subprocess.TimeoutExpired, OSError) as exc:
        print(console.style.bad(f"demo: FAILED: {exc}"), flush=True)
        status = 1
    except Exception as exc:  # a bug of the demo itself: still one line, and still the cleanup
        print(console.style.bad(f"demo: FAILED (internal error): {type(exc).__name__}: {exc}"), flush=True)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # let the teardown finish
        problems = [p for part in reversed(parts) for p in part.teardown(narrate=False)]
        qnetns.release_run_dir(run_dir_was_mounted)
        reap()
        if problems:
            print(console.style.bad(f"demo: could not remove: {', '.join(problems)}"), flush=True)
            status = status or 1
    if status == 0:
        print(console.style.title(f"\ndemo finished in {time.monotonic() - started:.1f} s"))
    return status


if __name__ == "__main__":
    sys.exit(main())
