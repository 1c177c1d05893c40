"""One real probe packet, traced: :class:`LinuxTracing` marks it (a temporary
table per family, see :mod:`qiao.kernel.nftrace`), sends it from a network
namespace, reads what every nftables chain of the daemon's namespace did
with it, and notes how the sender's socket ended (connected, refused,
unreachable, answered, or nothing), then removes the tables, in a
``finally``: an interrupted trace leaves no rule behind.  A watch
(:meth:`LinuxTracing.watch`) marks and reads without sending, on the lab
host that another host's probe will reach; it lives as long as its caller
keeps it (the daemon: as long as the lab's connection, see
:mod:`qiao.daemon.observe_api`).

The probe is the first packet of a real conversation: a TCP SYN (the socket
connects, and is closed at once), one UDP datagram, or one ICMP echo
request, from a source port (or echo id) chosen at random, which the marking
rule matches with the addresses, so other traffic is never traced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from qiao.kernel import netns, nftrace
from qiao.kernel.nftjson import rule_text
from qiao.kernel.nftrace import Match, TraceEvent

log = logging.getLogger("qiao.trace")

SETTLE = 0.03  # s: once the outcome is known, events still in flight
QUIET = 0.25  # s: events seen, no outcome, and nothing new for this long: the packet went where no chain sees it
TIMEOUT = 0.8  # s: the longest a probe waits for any outcome


@dataclass(frozen=True)
class Probe:
    """One packet to send: from the namespace at ``netns`` ("" the daemon's own)."""

    netns: str
    proto: str  # tcp | udp | icmp
    daddr: str
    dport: int = 0
    saddr: str = ""  # bind to this source address ("": the kernel's choice)
    sport: int = 0  # 0: chosen here
    ident: int = 0  # ICMP echo id; 0: chosen here


@dataclass
class Capture:
    """What one traced probe did.  ``outcome``: connected | answered | refused |
    unreachable | no-route | silent | error (``detail`` says more); ``events``
    in the order the kernel sent them; ``rules``: "family table chain handle" ->
    {"text", "comment"} of every rule the events name; ``ifnames``: index ->
    name in the daemon's namespace."""

    outcome: str = "silent"
    detail: str = ""
    match: Match | None = None
    events: list[TraceEvent] = field(default_factory=list)
    rules: dict[str, dict[str, str]] = field(default_factory=dict)
    ifnames: dict[int, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    lost: bool = False


class Watch(Protocol):
    """Marking on, for a probe another host sends: its events, read as they come."""

    match: Match
    events: list[TraceEvent]
    lost: bool  # the reader overflowed: events are missing

    def fileno(self) -> int: ...
    def read(self, timeout: float) -> list[TraceEvent]: ...
    def close(self) -> None: ...


class Tracing(Protocol):
    def capture(self, probe: Probe, timeout: float = TIMEOUT) -> Capture: ...
    def watch(self, match: Match) -> Watch: ...
    def seen(self, watch: Watch, outcome: str, detail: str) -> Capture: ...
    def remove_leftovers(self) -> list[str]: ...


def rule_key(family: str, table: str, chain: str, handle: int) -> str:
    return f"{family} {table} {chain} {handle}"


def _echo(ident: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"qiao trace probe"
    data = header + payload
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return data[:2] + struct.pack("!H", ~total & 0xFFFF) + data[4:]


class _Sender:
    """The probe's socket and how it ended."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.outcome = ""
        self.detail = ""
        kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "icmp": socket.SOCK_RAW}[probe.proto]
        proto = socket.IPPROTO_ICMP if probe.proto == "icmp" else 0
        with netns.entered(probe.netns) if probe.netns else contextlib.nullcontext():
            self.sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC, proto)

    def send(self) -> None:
        p, s = self.probe, self.sock
        s.setblocking(False)
        try:
            if p.proto != "icmp":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((p.saddr or "0.0.0.0", p.sport if p.proto != "icmp" else 0))
            if p.proto == "icmp":
                s.sendto(_echo(p.ident), (p.daddr, 0))
                return
            err = s.connect_ex((p.daddr, p.dport))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            if p.proto == "udp":
                s.send(b"qiao trace probe\n")
        except OSError as exc:
            self._failed(exc.errno or 0, at_send=True)

    def _failed(self, code: int, at_send: bool = False) -> None:
        if code == errno.ECONNREFUSED:
            self.outcome, self.detail = "refused", "connection refused" if self.probe.proto == "tcp" else "ICMP port unreachable"
        elif code in (errno.ENETUNREACH, errno.EHOSTUNREACH) and at_send:
            self.outcome, self.detail = "no-route", os.strerror(code)
        elif code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM):
            self.outcome, self.detail = "unreachable", os.strerror(code)
        else:
            self.outcome, self.detail = "error", os.strerror(code) if code else "failed"

    def wants(self) -> tuple[list[socket.socket], list[socket.socket]]:
        if self.outcome:
            return [], []
        return ([], [self.sock]) if self.probe.proto == "tcp" else ([self.sock], [])

    def check(self) -> None:
        """After select said the socket is ready."""
        s = self.sock
        if self.probe.proto == "tcp":
            code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._failed(code)
            else:
                self.outcome, self.detail = "connected", "a listener accepted the connection"
            return
        while not self.outcome:
            try:
                data = s.recv(2048)
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(exc.errno or 0)
                return
            if self.probe.proto == "udp":
                self.outcome, self.detail = "answered", f"{len(data)} bytes came back"
            else:
                self._icmp(data)

    def _icmp(self, data: bytes) -> None:
        icmp = data[(data[0] & 0x0F) * 4 :]
        if len(icmp) < 8:
            return
        kind, code = icmp[0], icmp[1]
        if kind == 0 and struct.unpack_from("!H", icmp, 4)[0] == self.probe.ident:
            self.outcome, self.detail = "answered", "echo reply"
        elif kind == 3 and len(icmp) >= 8 + 28:  # an error quoting our echo request
            inner = icmp[8:]
            quoted = inner[(inner[0] & 0x0F) * 4 :]
            if len(quoted) >= 6 and struct.unpack_from("!H", quoted, 4)[0] == self.probe.ident:
                self.outcome, self.detail = "unreachable", f"ICMP destination unreachable (code {code})"

    def close(self) -> None:
        self.sock.close()


class _Armed:
    """The marking tables and a reader of their events (in the daemon's namespace);
    :meth:`close` removes the tables."""

    def __init__(self, tracing: LinuxTracing, match: Match) -> None:
        self.tracing, self.match = tracing, match
        self.name = nftrace.new_table_name()
        self.reader = nftrace.TraceReader()  # first: listening is what turns tracing on
        self.events: list[TraceEvent] = []
        try:
            tracing.apply(nftrace.arm_script(self.name, match))
        except BaseException:
            self.reader.close()
            raise

    def read(self, timeout: float) -> list[TraceEvent]:
        got = [e for e in self.reader.read(timeout) if self.match.sees(e.packet)]
        self.events += got
        return got

    def fileno(self) -> int:
        return self.reader.fileno()

    @property
    def lost(self) -> bool:
        return self.reader.lost

    def close(self) -> None:
        try:
            self.tracing.apply(nftrace.disarm_script(self.name))
        except Exception as exc:
            log.warning("removing trace table %s failed (%s): removed at the next start", self.name, exc)
        finally:
            self.reader.close()


class LinuxTracing:
    def __init__(self) -> None:
        import nftables

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        self._lock = threading.Lock()  # the libnftables context
        self._one = threading.Lock()  # one probe at a time: a second waits (each takes under a second)

    def apply(self, script: str) -> None:
        with self._lock:
            rc, _out, err = self._nft.cmd(script)
        if rc != 0:
            raise RuntimeError(f"nftables: {' '.join(err.split())[:300]}")

    def _list(self, what: str) -> list[dict[str, Any]]:
        with self._lock:
            rc, out, _err = self._nft.cmd(f"list {what}")
        return json.loads(out).get("nftables", []) if rc == 0 and out else []

    def remove_leftovers(self) -> list[str]:
        """Trace tables a killed daemon left (at start, before any trace of ours)."""
        tables = [(t["table"]["family"], t["table"]["name"]) for t in self._list("tables") if "table" in t]
        script = nftrace.leftover_script(tables)
        if script:
            self.apply(script)
        return [f"{f} {n}" for f, n in tables if nftrace.is_trace_table(f, n)]

    def capture(self, probe: Probe, timeout: float = TIMEOUT) -> Capture:
        probe = Probe(
            probe.netns, probe.proto, probe.daddr, probe.dport, probe.saddr,
            probe.sport or 32768 + secrets.randbelow(28000), probe.ident or 1 + secrets.randbelow(65534),
        )  # fmt: skip
        match = Match(probe.proto, probe.saddr, probe.daddr, probe.sport, probe.dport, probe.ident)
        with self._one:
            sender = _Sender(probe)
            try:
                armed = _Armed(self, match)
            except BaseException:
                sender.close()
                raise
            start = time.monotonic()
            try:
                sender.send()
                self._wait(armed, sender, start + timeout)
            finally:
                sender.close()
                armed.close()
            capture = Capture(sender.outcome or "silent", sender.detail, match, armed.events, elapsed_ms=(time.monotonic() - start) * 1000)
            capture.lost = armed.lost
        return self._describe(capture)

    @staticmethod
    def _wait(armed: _Armed, sender: _Sender, deadline: float) -> None:
        settle_at: float | None = None
        last_event = 0.0
        while True:
            now = time.monotonic()
            if sender.outcome and settle_at is None:  # known at once (no route): only events in flight are left
                settle_at = now + SETTLE
            if settle_at is not None and now >= settle_at:
                return
            if now >= deadline or (settle_at is None and last_event and now - last_event >= QUIET):
                return
            until = min(x for x in (deadline, settle_at, last_event + QUIET if last_event else None) if x is not None)
            rd, wr = sender.wants()
            ready_r, ready_w, _ = select.select(
                [armed.fileno(), *(s.fileno() for s in rd)], [s.fileno() for s in wr], [], max(0.0, until - now)
            )
            if armed.fileno() in ready_r:
                got = armed.read(0)
                if got:
                    last_event = time.monotonic()
                if any(e.verdict == "drop" for e in got) and settle_at is None:
                    settle_at = time.monotonic() + SETTLE
            if sender.sock.fileno() in ready_r or sender.sock.fileno() in ready_w:
                sender.check()
            if sender.outcome and settle_at is None:
                settle_at = time.monotonic() + SETTLE

    def _describe(self, capture: Capture) -> Capture:
        """The rules and interfaces the events name, looked up once."""
        tables = {(e.family, e.table) for e in capture.events if not nftrace.is_trace_table(e.family, e.table)}
        for family, table in sorted(tables):
            for obj in self._list(f"table {family} {table}"):
                rule = obj.get("rule")
                if rule:
                    key = rule_key(family, table, rule["chain"], rule["handle"])
                    capture.rules[key] = {"text": rule_text(rule.get("expr", [])), "comment": rule.get("comment", "")}
        for index in sorted({i for e in capture.events for i in (e.iif, e.oif) if i}):
            with contextlib.suppress(OSError):
                capture.ifnames[index] = socket.if_indextoname(index)
        return capture

    # -- watches: another host's probe, seen here ---------------------------

    def watch(self, match: Match) -> _Armed:
        """Mark ``match`` here and read its events, sending nothing; the caller closes it."""
        return _Armed(self, match)

    def seen(self, watch: Watch, outcome: str, detail: str) -> Capture:
        """What a closed watch saw, with how the sender's socket ended (``outcome``, ``detail``)."""
        capture = Capture(outcome, detail, watch.match, list(watch.events), lost=watch.lost)
        return self._describe(capture)


class StubTracing:
    """Gives back prepared captures (unit tests)."""

    def __init__(self, captures: list[Capture] | None = None) -> None:
        self.captures = list(captures or [])
        self.probes: list[Probe] = []
        self.watches: list[StubWatch] = []

    def capture(self, probe: Probe, timeout: float = TIMEOUT) -> Capture:
        self.probes.append(probe)
        return self.captures.pop(0) if self.captures else Capture()

    def watch(self, match: Match) -> StubWatch:
        self.watches.append(StubWatch(match, self.captures.pop(0).events if self.captures else []))
        return self.watches[-1]

    def seen(self, watch: Watch, outcome: str, detail: str) -> Capture:
        return Capture(outcome, detail, watch.match, list(watch.events))

    def remove_leftovers(self) -> list[str]:
        return []


class StubWatch:
    """Hands out prepared events at the first read; ``closed`` once closed (unit tests)."""

    def __init__(self, match: Match, events: list[TraceEvent]) -> None:
        self.match = match
        self.lost = False
        self._pending = list(events)
        self.events: list[TraceEvent] = []
        self.closed = False
        self._r, self._w = os.pipe()  # readable while events are pending
        if self._pending:
            os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def read(self, timeout: float) -> list[TraceEvent]:
        got, self._pending = self._pending, []
        if got:
            os.read(self._r, 1)
        self.events += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._r)
            os.close(self._w)
        self.closed = True
