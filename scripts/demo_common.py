"""What every part of ``make demo`` shares: printing and running commands."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute

from qiao.kernel import netns as qnetns

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
QIAO = str(BIN / "qiao")
PY = str(BIN / "python") if (BIN / "python").exists() else sys.executable  # for the demo's own silent probes


class Failed(Exception):
    """A claim of the demo did not hold (or a command failed): one line for the user."""


class Part(Protocol):
    """One part of the demo: its story, then the removal of all it made."""

    def run(self) -> None: ...

    def teardown(self, narrate: bool) -> list[str]:
        """Remove what the part made (a no-op the second time); returns what could not be removed."""
        ...


class Style:
    def __init__(self, on: bool):
        self.on = on

    def _w(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def cmd(self, text: str) -> str:
        return self._w("1;36", text)

    def note(self, text: str) -> str:
        return self._w("32", text)

    def title(self, text: str) -> str:
        return self._w("1;33", text)

    def dim(self, text: str) -> str:
        return self._w("2", text)

    def bad(self, text: str) -> str:
        return self._w("1;31", text)


class Console:
    def __init__(self) -> None:
        self.style = Style(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))

    # -- printing --------------------------------------------------------

    def out(self, text: str = "") -> None:
        print(text, flush=True)

    def part(self, text: str) -> None:
        self.out()
        self.out(self.style.title(text))

    def section(self, text: str) -> None:
        self.out()
        self.out(self.style.title(f"== {text} =="))

    def say(self, text: str) -> None:
        for line in textwrap.wrap(text, 118, initial_indent="# ", subsequent_indent="#   "):
            self.out(self.style.note(line))

    def dim(self, text: str) -> None:
        self.out(self.style.dim(text))

    # -- running ---------------------------------------------------------

    def sh(
        self, args: list[str], ns: str | None = None, check: bool = True, timeout: float = 15, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (in the network namespace ``ns``, a name under /run/netns), output captured."""
        full = ["nsenter", f"--net=/run/netns/{ns}", "--", *args] if ns else args
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        if check and proc.returncode != 0:
            raise Failed(f"{shlex.join(args)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:600]}")
        return proc

    def show(
        self,
        shown: list[str],
        run: Callable[[], subprocess.CompletedProcess[str]],
        prompt: str = "$ ",
        expect: str | None = None,
        transform: Callable[[str], str] | None = None,
    ) -> str:
        """Print ``$ SHOWN``, run it (``run``), print its real output; fail unless ``expect`` is in it.
        Returns its stdout, then its stderr."""
        self.out(self.style.cmd(prompt + shlex.join(shown)))
        proc = run()
        text = proc.stdout
        shown_text = transform(text) if transform else text
        if shown_text:
            self.out(shown_text.rstrip("\n"))
        if proc.stderr.strip():
            self.out(proc.stderr.rstrip("\n"))
        text += proc.stderr  # both streams: `qiao logs` keeps a container's stderr apart, as `docker logs`
        if expect is not None and expect not in text:
            raise Failed(f"{shlex.join(shown)}: expected {expect!r} in its output")
        return text

    def wait_tcp(self, ns: str, address: str, port: int, timeout: float = 10) -> None:
        """Silently wait until something listens on address:port (seen from namespace ns)."""
        probe = (
            "import socket, sys, time\n"
            f"end = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    try:\n"
            f"        socket.create_connection(({address!r}, {port}), 1).close(); break\n"
            "    except OSError:\n"
            "        if time.monotonic() > end: sys.exit(1)\n"
            "        time.sleep(0.05)\n"
        )
        if self.sh([PY, "-c", probe], ns=ns, check=False, timeout=timeout + 5).returncode != 0:
            raise Failed(f"nothing listens on {address}:{port} after {timeout} s")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll ``check`` until it returns something truthy (returned); Failed after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def netlink(ns: str) -> Iterator[Any]:
    """A pyroute2 IPRoute inside the network namespace /run/netns/NS (what the demo checks, it reads this way)."""
    with qnetns.entered(f"/run/netns/{ns}"), IPRoute() as ipr:
        yield ipr


def link_named(ipr: Any, name: str) -> Any:
    links = ipr.get_links(ifname=name)
    if not links:
        raise Failed(f"no interface {name}")
    return links[0]


def processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a root of this run: qiaod, shims, etcd)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found
