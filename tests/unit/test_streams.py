"""A container's streams without root: Docker's frames, the log file, the
attach relay (detach keys, stdin semantics), the logs body, and the shim
holding pipes or a terminal (real shims from the supervisor, no namespaces)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from qiao.engine import attach, logs
from qiao.engine.errors import InvalidParameter
from qiao.proc import alive, start_time
from qiao.runtime import console, frames, logfile
from qiao.runtime.supervisor import StartError, Supervisor

# -- frames ------------------------------------------------------------------------------


def test_frame_is_dockers_header() -> None:
    assert frames.frame(frames.STDERR, b"oops\n") == b"\x02\x00\x00\x00\x00\x00\x00\x05oops\n"
    assert frames.frame(frames.STDOUT, b"x" * 256)[:8] == b"\x01\x00\x00\x00\x00\x00\x01\x00"


def test_decoder_takes_frames_in_any_pieces() -> None:
    stream = frames.frame(1, b"hello") + frames.frame(2, b"") + frames.frame(2, b"err\n") + frames.resize(24, 80)
    for size in (1, 3, 8, 9, len(stream)):
        decoder = frames.Decoder()
        got = []
        for i in range(0, len(stream), size):
            got += decoder.feed(stream[i : i + size])
        assert got == [(1, b"hello"), (2, b""), (2, b"err\n"), (frames.RESIZE, b"\x00\x18\x00\x50")]
        assert decoder.pending == 0
    assert frames.size_of(got[-1][1]) == (24, 80)


def test_decoder_refuses_a_huge_frame() -> None:
    with pytest.raises(frames.BadFrame):
        frames.Decoder().feed(b"\x01\x00\x00\x00\xff\xff\xff\xff")


# -- the log file --------------------------------------------------------------------------


def write_log(path: Path, entries: list[tuple[int, bytes, int]]) -> None:
    """(stream, data, time_ns) written as the shim writes them."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = logfile.Writer(fd)
    for stream, data, stamp in entries:
        writer._append(logfile.encode(stream, data, stamp))
    os.close(fd)


def read_all(path: Path, offset: int = 0) -> list[tuple[int, int, bytes]]:
    with open(path, "rb") as f:
        return [(s, t, d) for s, t, d, _after in logfile.records(f, offset)]


def test_log_records_one_line_each_with_stream_and_time(tmp_path) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"a\nb\npart", 10), (2, b"err\n", 20), (1, b"ial\n", 30)])
    assert path.read_bytes().startswith(logfile.MAGIC)
    assert read_all(path) == [(1, 10, b"a\n"), (1, 10, b"b\n"), (1, 10, b"part"), (2, 20, b"err\n"), (1, 30, b"ial\n")]


def test_log_writer_is_binary_safe_and_skips_nothing(tmp_path) -> None:
    path = tmp_path / "log"
    data = bytes(range(256)) * 3
    write_log(path, [(1, data, 1)])
    assert b"".join(d for _s, _t, d in read_all(path)) == data


@pytest.mark.parametrize(
    "lines, expected",
    [
        (0, []),
        (1, [b"c"]),  # an unfinished last line is a line
        (2, [b"b\n", b"c"]),
        (3, [b"a\n", b"b\n", b"c"]),
        (-1, [b"a\n", b"b\n", b"c"]),
        (99, [b"a\n", b"b\n", b"c"]),
    ],
)
def test_tail_counts_lines_from_the_end(tmp_path, lines, expected) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"a\nb\nc", 1)])
    with open(path, "rb") as f:
        offset = logfile.tail_offset(f, lines)
    assert [d for _s, _t, d in read_all(path, offset)] == expected


def test_tail_keeps_a_line_written_in_pieces_whole(tmp_path) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"one\nt", 1), (2, b"err\n", 2), (1, b"w", 3), (1, b"o\n", 4)])
    with open(path, "rb") as f:
        offset = logfile.tail_offset(f, 1)
    assert [d for _s, _t, d in read_all(path, offset)] == [b"w", b"o\n"]


def test_tail_with_since_and_until(tmp_path) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"old\n", 10), (1, b"mid\n", 20), (1, b"new\n", 30)])
    with open(path, "rb") as f:
        assert logfile.tail_offset(f, 5, since=15) == logfile.tail_offset(f, 2)  # "old" ends the search
        assert [d for _s, _t, d in read_all(path, logfile.tail_offset(f, 1, until=25))] == [b"mid\n", b"new\n"]  # "new" is not counted


def test_many_records_are_read_across_blocks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(logfile, "READ_BLOCK", 7)
    monkeypatch.setattr(logfile, "BACK_BLOCK", 5)
    path = tmp_path / "log"
    write_log(path, [(1 + i % 2, b"line %d\n" % i, i) for i in range(200)])
    assert [d for _s, _t, d in read_all(path)] == [b"line %d\n" % i for i in range(200)]
    with open(path, "rb") as f:
        assert [d for _s, _t, d in read_all(path, logfile.tail_offset(f, 3))] == [b"line 197\n", b"line 198\n", b"line 199\n"]


def test_a_torn_record_ends_reading_and_repair_cuts_it_off(tmp_path) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"whole\n", 1)])
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(logfile.encode(1, b"torn\n", 2)[:-3])  # a shim killed mid-write
    assert read_all(path) == [(1, 1, b"whole\n")]
    logfile.repair(str(path))
    assert path.stat().st_size == good
    write_log(path, [(2, b"next\n", 3)])
    assert read_all(path) == [(1, 1, b"whole\n"), (2, 3, b"next\n")]


def test_repair_turns_an_old_raw_log_into_records(tmp_path) -> None:
    path = tmp_path / "container.log"
    path.write_bytes(b"out\nerr\nlast")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    logfile.repair(str(path))
    then = 1_700_000_000 * 10**9
    assert read_all(path) == [(1, then, b"out\n"), (1, then, b"err\n"), (1, then, b"last")]
    logfile.repair(str(tmp_path / "missing"))  # no file: nothing to do


# -- the logs body ---------------------------------------------------------------------------


def body(path: Path, tty: bool = False, running=lambda: False, **query) -> bytes:
    q = logs.Query(stdout=query.pop("stdout", True), stderr=query.pop("stderr", True), **query)
    return b"".join(logs.body(str(path), q, tty, running))


def test_logs_body_is_multiplexed_or_raw(tmp_path) -> None:
    path = tmp_path / "log"
    write_log(path, [(1, b"out\n", 1), (2, b"err\n", 2)])
    assert body(path) == frames.frame(1, b"out\n") + frames.frame(2, b"err\n")
    assert body(path, stderr=False) == frames.frame(1, b"out\n")
    assert body(path, tty=True) == b"out\nerr\n"
    assert body(tmp_path / "never-started") == b""


def test_logs_timestamps_start_each_line_of_each_stream(tmp_path) -> None:
    path = tmp_path / "log"
    ns = 1_700_000_000_123_456_789
    write_log(path, [(1, b"par", ns), (2, b"err\n", ns + 1), (1, b"tial\nnext\n", ns + 2)])
    text = body(path, tty=True, timestamps=True)
    assert text == (b"2023-11-14T22:13:20.123456789Z par2023-11-14T22:13:20.123456790Z err\ntial\n2023-11-14T22:13:20.123456791Z next\n")


def test_logs_follow_goes_on_until_the_container_stops(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(logs, "FOLLOW_POLL", 0.01)
    path = tmp_path / "log"
    write_log(path, [(1, b"first\n", 1)])
    state = {"running": True}
    chunks = logs.body(str(path), logs.Query(True, True, follow=True), True, lambda: state["running"])
    assert next(chunks) == b"first\n"
    assert next(chunks) == b""  # nothing new: a tick (the server checks the client then)
    write_log(path, [(1, b"second\n", 2)])
    assert next(c for c in chunks if c) == b"second\n"
    write_log(path, [(1, b"last words\n", 3)])
    state["running"] = False
    assert b"".join(chunks) == b"last words\n"  # read once more after it stopped, then the end


@pytest.mark.parametrize("text, ns", [("", 0), ("1700000000", 1_700_000_000 * 10**9), ("1700000000.5", 1_700_000_000_500_000_000)])
def test_parse_time(text, ns) -> None:
    assert logs.parse_time("since", text) == ns


@pytest.mark.parametrize("text", ["-1", "1e9", "12:00", "1.2.3", "١٢"])
def test_parse_time_refuses(text) -> None:
    with pytest.raises(InvalidParameter):
        logs.parse_time("since", text)


def test_parse_tail() -> None:
    assert [logs.parse_tail(t) for t in ("", "all", "-1", "0", "12")] == [-1, -1, -1, 0, 12]
    with pytest.raises(InvalidParameter):
        logs.parse_tail("ten")


# -- detach keys -----------------------------------------------------------------------------


def test_detach_keys_as_docker_spells_them() -> None:
    assert attach.detach_keys("") == b"\x10\x11"
    assert attach.detach_keys("ctrl-x,x") == b"\x18x"
    assert attach.detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_,CTRL-A") == b"\x00\x1b\x1c\x1d\x1e\x1f\x01"
    for bad in ("ctrl-", "ctrl-1", "ab", "ctrl-p,", "é"):
        with pytest.raises(InvalidParameter):
            attach.detach_keys(bad)


def test_escape_scanner_holds_back_what_may_begin_the_keys() -> None:
    scan = attach.EscapeScanner(b"\x10\x11")
    assert scan.feed(b"abc") == (b"abc", False)
    assert scan.feed(b"x\x10") == (b"x", False)  # held: it may be the start
    assert scan.feed(b"y") == (b"\x10y", False)  # it was not
    assert scan.feed(b"\x10\x10") == (b"\x10", False)  # the second one may start it again
    assert scan.feed(b"\x11rest") == (b"", True)
    three = attach.EscapeScanner(b"abc")
    assert three.feed(b"aab") == (b"a", False)
    assert three.feed(b"x") == (b"abx", False)


# -- the relay ---------------------------------------------------------------------------------


class Relay:
    """A relay between a fake client and a fake shim, in a thread."""

    def __init__(self, opts: attach.Options):
        self.client, client_end = socket.socketpair()
        self.shim, shim_end = socket.socketpair()
        self.codes: list[int] = []
        self.result: list[str] = []
        self.thread = threading.Thread(target=lambda: self.result.append(attach.relay(client_end, shim_end, opts, self.codes.append)))
        self.thread.start()
        self.decoder = frames.Decoder()
        self.client.settimeout(10)
        self.shim.settimeout(10)

    def shim_gets(self, count: int = 1) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        while len(got) < count:
            got += self.decoder.feed(self.shim.recv(65536))
        return got

    def client_reads_all(self) -> bytes:
        out = b""
        while chunk := self.client.recv(65536):
            out += chunk
        return out

    def ended(self) -> str:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.result[0]


def test_relay_multiplexed_output_and_exit() -> None:
    r = Relay(attach.Options(tty=False, stdin=False, stdout=True, stderr=False, close_stdin=False))
    r.shim.sendall(frames.frame(1, b"out\n") + frames.frame(2, b"err\n") + frames.frame(frames.EXIT, b"3"))
    r.shim.close()
    assert r.client_reads_all() == frames.frame(1, b"out\n")
    assert r.ended() == "exit" and r.codes == [3]


def test_relay_tty_is_raw_and_the_detach_keys_end_it() -> None:
    r = Relay(attach.Options(tty=True, stdin=True, stdout=True, stderr=True, close_stdin=False, keys=b"\x10\x11"))
    r.shim.sendall(frames.frame(1, b"$ "))
    assert r.client.recv(100) == b"$ "
    r.client.sendall(b"ls\r\x10")
    r.client.sendall(b"\x11")
    assert r.ended() == "detach"
    assert r.shim_gets() == [(frames.STDIN, b"ls\r")]  # the keys are not passed on
    assert r.shim.recv(10) == b""  # the shim's connection is closed; the container is not told anything else


def test_relay_stdin_once_closes_the_process_stdin_and_keeps_the_output() -> None:
    r = Relay(attach.Options(tty=False, stdin=True, stdout=True, stderr=True, close_stdin=True))
    r.client.sendall(b"data")
    r.client.shutdown(socket.SHUT_WR)  # what the CLI does at the end of its input
    assert r.shim_gets(2) == [(frames.STDIN, b"data"), (frames.CLOSE_STDIN, b"")]
    r.shim.sendall(frames.frame(1, b"DATA") + frames.frame(frames.EXIT, b"0"))
    r.shim.close()
    assert r.client_reads_all() == frames.frame(1, b"DATA")
    assert r.ended() == "exit"


def test_relay_end_of_input_without_stdin_once_ends_the_attach() -> None:
    r = Relay(attach.Options(tty=False, stdin=True, stdout=True, stderr=True, close_stdin=False))
    r.client.shutdown(socket.SHUT_WR)
    assert r.ended() == "client"
    assert r.shim.recv(10) == b""


def test_relay_ignores_the_end_of_input_it_does_not_take() -> None:
    r = Relay(attach.Options(tty=False, stdin=False, stdout=True, stderr=True, close_stdin=False))
    r.client.sendall(b"ignored")
    r.client.shutdown(socket.SHUT_WR)
    r.shim.sendall(frames.frame(2, b"still here"))
    assert r.client.recv(100) == frames.frame(2, b"still here")
    r.client.close()  # now it leaves for good
    assert r.ended() == "client"


# -- the shim's held streams (real shims, no namespaces) -------------------------------------------


@pytest.fixture
def sup(monkeypatch):
    """A supervisor whose commands are killed at the end, also when a test fails (they would run on)."""
    exits: list[str] = []
    supervisor = Supervisor(exits.append, tag="/qiao/test-streams")
    supervisor.exits = exits  # type: ignore[attr-defined]
    commands: list[tuple[int, int]] = []  # pid, start time
    spawn = supervisor.spawn

    def recording(*args, **kwargs):
        started = spawn(*args, **kwargs)
        commands.append((started.pid, start_time(started.pid)))
        return started

    monkeypatch.setattr(supervisor, "spawn", recording)
    yield supervisor
    for pid, start in commands:
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    shim = supervisor._spare
    if shim is not None:
        shim.control.close()
        shim.proc.wait(10)


def held_spec(tmp_path: Path, cmd: list[str], tty: bool = False, stdin: bool = False, size: list[int] | None = None) -> dict:
    return {
        "cmd": cmd,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"},
        "exit_file": str(tmp_path / "exitcode"),
        "pid_file": str(tmp_path / "shim.pid"),
        "console": {"tty": tty, "stdin": stdin, "size": size or [], "log": "container.log", "socket": attach.SOCKET},
    }


def read_frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    sock.settimeout(20)
    decoder, got = frames.Decoder(), []
    while chunk := sock.recv(65536):
        got += decoder.feed(chunk)
    return got


def by_stream(got: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for stream, data in got:
        out[stream] = out.get(stream, b"") + data
    return out


def wait_file(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.01)


def test_shim_keeps_streams_apart_logs_them_and_serves_input(sup, tmp_path) -> None:
    ours, theirs = socket.socketpair()
    sup.spawn("p", held_spec(tmp_path, ["sh", "-c", "echo out; echo err >&2; read x; echo got $x; exit 3"], stdin=True), [theirs.fileno()])
    theirs.close()
    ours.sendall(frames.frame(frames.STDIN, b"input\n"))
    got = read_frames(ours)
    assert got[-1] == (frames.EXIT, b"3")
    assert by_stream(got[:-1]) == {1: b"out\ngot input\n", 2: b"err\n"}
    wait_file(tmp_path / "exitcode")
    assert (tmp_path / "exitcode").read_text() == "3"
    assert by_stream([(s, d) for s, _t, d in read_all(tmp_path / "container.log")]) == {1: b"out\ngot input\n", 2: b"err\n"}
    assert oct((tmp_path / "container.log").stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / attach.SOCKET).exists() and not (tmp_path / "shim.pid").exists()


def test_shim_terminal_has_its_size_a_controlling_tty_and_resizes(sup, tmp_path) -> None:
    script = "read x; stty size; tty >/dev/null && echo is-a-tty; read x; stty size; exit 4"
    sup.spawn("t", held_spec(tmp_path, ["sh", "-c", script], tty=True, stdin=True, size=[33, 99]), [])
    wait_file(tmp_path / attach.SOCKET)
    sock = console.connect(str(tmp_path), attach.SOCKET, timeout=10)
    sock.sendall(frames.frame(frames.STDIN, b"start\r"))  # output before we were attached would only be in the log
    decoder, seen = frames.Decoder(), b""
    while b"is-a-tty" not in seen:
        seen += b"".join(data for _kind, data in decoder.feed(sock.recv(65536)))
    sock.sendall(frames.resize(40, 120) + frames.frame(frames.STDIN, b"go\r"))
    got = read_frames(sock)
    assert got[-1] == (frames.EXIT, b"4")
    log = b"".join(d for _s, _t, d in read_all(tmp_path / "container.log"))
    assert log == b"start\r\n33 99\r\nis-a-tty\r\ngo\r\n40 120\r\n"


def test_shim_process_never_waits_for_a_connection_that_does_not_read(sup, tmp_path, monkeypatch) -> None:
    idle, theirs = socket.socketpair()  # attached, never reads: dropped past the limit, the command goes on
    size = 16 << 20
    sup.spawn("big", held_spec(tmp_path, ["head", "-c", str(size), "/dev/zero"]), [theirs.fileno()])
    theirs.close()
    wait_file(tmp_path / "exitcode")
    assert (tmp_path / "exitcode").read_text() == "0"
    assert sum(len(d) for _s, _t, d in read_all(tmp_path / "container.log")) == size
    idle.close()


def test_shim_with_no_stdin_gives_dev_null_and_drops_input(sup, tmp_path) -> None:
    ours, theirs = socket.socketpair()
    # the command outlives our input by a second: a shim that closed with our frame unread would reset the connection
    sup.spawn("n", held_spec(tmp_path, ["sh", "-c", "sleep 1; cat; echo done"]), [theirs.fileno()])
    theirs.close()
    ours.sendall(frames.frame(frames.STDIN, b"dropped\n"))
    assert read_frames(ours) == [(1, b"done\n"), (frames.EXIT, b"0")]


def test_shim_reports_a_command_that_cannot_start(sup, tmp_path) -> None:
    with pytest.raises(StartError) as err:
        sup.spawn("x", held_spec(tmp_path, ["/no/such/command"]), [])
    assert err.value.exit_code == 127
    assert not (tmp_path / attach.SOCKET).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="an exec's shim joins the container's namespaces (setns needs root)")
def test_exec_shim_exits_with_the_commands_code_and_ends_with_the_container(sup, tmp_path) -> None:
    target = sup.spawn("ctr", held_spec(tmp_path, ["sleep", "60"]), [])
    codes: list[int] = []
    done = threading.Event()

    def ended(code: int) -> None:
        codes.append(code)
        done.set()

    spec = {
        "exec": {"pid": target.pid, "start": start_time(target.pid)},
        "cmd": ["sh", "-c", "echo in exec; exit 7"],
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "console": {"tty": False, "stdin": False, "size": []},
    }
    ours, theirs = socket.socketpair()
    sup.spawn("ctr", spec, [theirs.fileno()], ended=ended)
    theirs.close()
    assert read_frames(ours) == [(1, b"in exec\n"), (frames.EXIT, b"7")]
    assert done.wait(10) and codes == [7]

    done.clear()
    spec["cmd"] = ["sleep", "60"]
    sup.spawn("ctr", spec, [], ended=ended)
    os.kill(target.pid, 9)  # the container's process ends: so does its exec
    assert done.wait(10) and codes[-1] == 137
