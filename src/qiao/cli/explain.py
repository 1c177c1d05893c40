"""``qiao explain [--json] [--from-scratch] COMMAND...``: what COMMAND would
do to the kernel, as ``ip``, ``nft`` and ``sysctl`` commands, each with one
sentence, changing nothing.

COMMAND is parsed by the real command's parser and turned into the very
request bodies the real command sends, so a command that would be refused is
refused the same way; qiaod runs them dry (``POST /qiao/explain``) and
answers the steps as data.  This module only prints them: numbered (the
default), as JSON (``--json``), or as a shell script for a host where qiao
never ran (``--from-scratch``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap

from qiao.cli.client import Client, DaemonError
from qiao.cli.main import UsageError, build_parser, connect_body, disconnect_body, network_create_body, run_body

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXPLAINED = "run, start, rm and network create|rm|connect|disconnect|prune"


def operations(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The requests the parsed command would make, for ``POST /qiao/explain``."""
    if a.command == "run":
        return [{"op": "run", "name": a.name, "body": run_body(a)}]
    if a.command == "start":
        return [{"op": "start", "target": name} for name in a.names]
    if a.command == "rm":
        return [{"op": "rm", "target": name, "force": a.force} for name in a.names]
    sub = getattr(a, "network_command", None) if a.command == "network" else None
    if sub == "create":
        return [{"op": "network-create", "body": network_create_body(a)}]
    if sub == "rm":
        return [{"op": "network-rm", "target": name} for name in a.names]
    if sub == "connect":
        return [{"op": "network-connect", "target": a.network, "body": connect_body(a)}]
    if sub == "disconnect":
        return [{"op": "network-disconnect", "target": a.network, "body": disconnect_body(a)}]
    if sub == "prune":
        return [{"op": "network-prune"}]
    what = " ".join(w for w in (a.command, sub) if w)
    raise UsageError(f"qiao explain: `qiao {what}` changes nothing to explain; it explains {EXPLAINED}")


def cmd_explain(c: Client, a: argparse.Namespace) -> int:
    argv = a.explained[1:] if a.explained[:1] == ["--"] else a.explained
    if not argv:
        raise UsageError(f"qiao explain: no command given (qiao explain [--json] [--from-scratch] COMMAND ...; it explains {EXPLAINED})")
    inner = build_parser(argv).parse_args(argv)  # the real command's parser: the real command's usage errors
    ops = operations(inner)
    try:
        steps = c.request("POST", "/qiao/explain", body={"ops": ops, "fresh": a.from_scratch})["steps"]
    except DaemonError as exc:  # in the real command's words and exit status
        if exc.body.get("Phase") == "start":
            print(f"qiao: {exc}", file=sys.stderr)
            return int(exc.body.get("ExitCode", 125))
        print(f"qiao: Error response from daemon: {exc}", file=sys.stderr)
        return 125 if inner.command == "run" else 1
    if a.json:
        print(json.dumps({"command": ["qiao", *argv], "fromScratch": a.from_scratch, "steps": steps}, indent=2))
    elif a.from_scratch:
        print(script(argv, steps), end="")
    else:
        print(text(argv, steps), end="")
    return 0


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """Lines of at most ``width``, names and addresses kept whole (br-0123..., a JSON value)."""
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False, break_long_words=False)


def _width() -> int:
    try:
        return max(60, min(int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(1).columns, 120))
    except (ValueError, OSError):
        return 100


def text(argv: list[str], steps: list[dict[str, Any]], width: int | None = None) -> str:
    """The steps, numbered: a sentence each, its commands indented below."""
    width = width or _width()
    out = [f"qiao {shlex.join(argv)}", f"would take these {len(steps)} steps (a dry run: nothing was changed)", ""]
    for number, step in enumerate(steps, 1):
        label = f"{number:>2}. {step['step']}: " if step["step"] else f"{number:>2}. "
        out += _wrap(step["why"], width, label, "    ")
        out += ["      " + line for command in step["commands"] for line in command.splitlines()]
    out += ["", "Generated names (container and endpoint ids, veth names, the bridge's MAC) are drawn again when it runs."]
    return "\n".join(out) + "\n"


def script(argv: list[str], steps: list[dict[str, Any]]) -> str:
    """A shell script: each step's sentence as a comment, then its commands."""
    out = [
        "#!/bin/sh",
        f"# qiao explain --from-scratch {shlex.join(argv)}",
        "# What qiao does on a host where it never ran, as commands. Run it as root: sh -e FILE.",
        "# Generated names (ids, veth names, the bridges' MACs) differ from those of qiao's own run.",
        "set -e",
    ]
    for step in steps:
        out.append("")
        label = f"{step['step']}: " if step["step"] else ""
        out += _wrap(label + step["why"], 100, "# ", "#   ")
        out += step["commands"]
    return "\n".join(out) + "\n"
