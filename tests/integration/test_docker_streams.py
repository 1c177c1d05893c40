"""Docker's own clients on a container's streams, against qiaod: the Docker
CLI (``/usr/local/bin/docker``, 28.x, else the ``docker`` on PATH) and
docker-py.  Foreground ``run`` (``-i``, ``-it`` under a pseudo-terminal,
``--rm``), ``attach`` and its detach keys, ``start -a``, ``wait``, ``logs``
(stdout and stderr apart, ``-f``, ``--tail``, ``-t``, ``--since``/``--until``),
``exec`` (``-e -u -w -d -i -it``); a container's output never waits for a
client, and a client that leaves stops nothing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Host, wait_for

DOCKER = "/usr/local/bin/docker" if os.access("/usr/local/bin/docker", os.X_OK) else shutil.which("docker")
if DOCKER is None:
    pytest.skip("no Docker CLI on this machine", allow_module_level=True)

IMAGE = "qiao/host"  # qiao's image-less mode, as Docker's clients name it
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
PROMPT = b"# "  # sh's, for root

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(scope="module")
def env(host: Host, tmp_path_factory) -> dict[str, str]:
    """The Docker CLI's environment: qiaod's socket, a configuration of its own."""
    return {
        **os.environ,
        "DOCKER_HOST": f"unix://{host.root}/run/qiao.sock",
        "DOCKER_CONFIG": str(tmp_path_factory.mktemp("docker-config")),
    }


def docker(
    env: dict[str, str], *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    proc = subprocess.run([DOCKER, *args], env=env, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def state(env: dict[str, str], name: str) -> dict:
    return json.loads(docker(env, "inspect", name).stdout)[0]["State"]


class Terminal:
    """A command on a pseudo-terminal of ``rows`` x ``columns``, driven as a person would."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 33, columns: int = 99):
        self.master, slave = os.openpty()
        os.set_blocking(self.master, False)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = b""
        self.cursor = 0

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # EIO: the command and everything on the terminal are gone
            return False
        self.output += data
        return bool(data)

    def expect(self, text: bytes, timeout: float = 20) -> None:
        """Wait for ``text`` after what an earlier ``expect`` found."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self.cursor)) < 0:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.output[-2000:]!r}"
            assert self._read(0.1) or text in self.output[self.cursor :], f"the terminal closed without {text!r}: {self.output[-2000:]!r}"
        self.cursor = found + len(text)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def finish(self, timeout: float = 20) -> int:
        """The exit code, once the command ended (all its output read)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        with contextlib.suppress(OSError):
            while self._read(0.05) and self.output:
                pass
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def terminal(env) -> Iterator:
    made: list[Terminal] = []

    def make(*args: str) -> Terminal:
        assert DOCKER is not None
        made.append(Terminal([DOCKER, *args], env))
        return made[-1]

    yield make
    for t in made:
        t.close()


# -- run -------------------------------------------------------------------------------------


def test_run_rm_prints_and_removes(env) -> None:
    r = docker(env, "run", "--rm", IMAGE, "echo", "hi")
    assert (r.stdout, r.stderr) == ("hi\n", "")
    assert docker(env, "ps", "-aq").stdout == ""


def test_run_keeps_stdout_and_stderr_apart_and_passes_the_exit_code(env) -> None:
    r = docker(env, "run", "--name", "fg", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert (state(env, "fg")["Status"], state(env, "fg")["ExitCode"]) == ("exited", 3)


def test_run_interactive_takes_stdin_to_its_end(env) -> None:
    assert docker(env, "run", "--rm", "-i", IMAGE, "tr", "a-z", "A-Z", input="piped in\nand more\n").stdout == "PIPED IN\nAND MORE\n"


def test_run_of_a_missing_command_is_127_and_rm_leaves_nothing(env) -> None:
    r = docker(env, "run", "--rm", IMAGE, "no-such-command-here", check=False)
    assert r.returncode == 127 and "no-such-command-here" in r.stderr
    assert docker(env, "ps", "-aq").stdout == ""


def test_run_it_is_a_terminal_of_the_callers_size(terminal) -> None:
    t = terminal("run", "-it", "--rm", IMAGE, "sh")
    t.expect(PROMPT)
    t.type(b"stty size; echo term=$TERM; tty\r")
    t.expect(b"/dev/pts/")
    t.type(b"exit 5\r")
    assert t.finish() == 5
    assert b"33 99" in t.output and b"term=xterm" in t.output


def test_ctrl_c_reaches_the_terminals_foreground_process(terminal) -> None:
    t = terminal("run", "-it", "--rm", IMAGE, "sh")
    t.expect(PROMPT)
    t.type(b"sleep 300\r")
    time.sleep(0.5)
    t.type(b"\x03")  # Ctrl-C: the terminal's SIGINT for sleep, not for the CLI
    t.expect(PROMPT)
    t.type(b"echo after=$?\r")
    t.expect(b"after=130")
    t.type(b"exit\r")
    assert t.finish() == 0


def test_detach_keys_leave_it_running_and_attach_comes_back(env, terminal) -> None:
    t = terminal("run", "-it", "--name", "dk", IMAGE, "sh")
    t.expect(PROMPT)
    t.type(b"\x10\x11")  # Ctrl-P Ctrl-Q
    assert t.finish() == 0
    assert state(env, "dk")["Running"]

    again = terminal("attach", "dk")
    time.sleep(0.5)
    again.type(b"echo attached-$((40 + 2))\r")
    again.expect(b"attached-42")
    again.type(b"exit 7\r")
    assert again.finish() == 7
    assert state(env, "dk")["ExitCode"] == 7


def test_own_detach_keys(env, terminal) -> None:
    t = terminal("run", "-it", "--detach-keys", "ctrl-x,x", "--name", "own", IMAGE, "sh")
    t.expect(PROMPT)
    t.type(b"\x18x")
    assert t.finish() == 0
    assert state(env, "own")["Running"]


def test_start_attach_runs_again_with_its_streams(env) -> None:
    docker(env, "create", "--name", "sa", IMAGE, "sh", "-c", "echo started; echo oops >&2; exit 2")
    for _ in range(2):
        r = docker(env, "start", "-a", "sa", check=False)
        assert (r.returncode, r.stdout, r.stderr) == (2, "started\n", "oops\n")
    assert docker(env, "logs", "sa").stdout == "started\nstarted\n"


def test_wait_answers_when_the_container_exits(env) -> None:
    docker(env, "run", "-d", "--name", "wt", IMAGE, "sh", "-c", "sleep 1; exit 6")
    t0 = time.monotonic()
    assert docker(env, "wait", "wt").stdout == "6\n"
    assert time.monotonic() - t0 > 0.5
    assert docker(env, "wait", "wt").stdout == "6\n"  # not running: at once


# -- logs ------------------------------------------------------------------------------------


def test_logs_keep_the_streams_apart(env) -> None:
    docker(env, "run", "-d", "--name", "lg", IMAGE, "sh", "-c", "echo out1; echo err1 >&2; sleep 0.3; echo out2; sleep 0.3; echo err2 >&2")
    docker(env, "wait", "lg")
    r = docker(env, "logs", "lg")
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "err1\nerr2\n")
    last = docker(env, "logs", "--tail", "1", "lg")
    assert (last.stdout, last.stderr) == ("", "err2\n")
    two = docker(env, "logs", "--tail", "2", "lg")
    assert (two.stdout, two.stderr) == ("out2\n", "err2\n")
    stamped = docker(env, "logs", "-t", "lg")
    assert all(STAMP.match(line.encode()) for line in (stamped.stdout + stamped.stderr).splitlines())
    assert docker(env, "logs", "--since", "2099-01-01T00:00:00Z", "lg").stdout == ""
    assert docker(env, "logs", "--until", "2001-01-01T00:00:00Z", "lg").stdout == ""
    assert docker(env, "logs", "--since", "10m", "lg").stdout == "out1\nout2\n"


def test_logs_follow_streams_until_the_container_stops(env) -> None:
    docker(env, "run", "-d", "--name", "fo", IMAGE, "sh", "-c", "echo one; sleep 2; echo two")
    assert DOCKER is not None
    follow = subprocess.Popen([DOCKER, "logs", "-f", "fo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        ready, _, _ = select.select([follow.stdout], [], [], 15)
        assert ready and follow.stdout.readline() == b"one\n"
        assert follow.poll() is None  # still following
        out, _err = follow.communicate(timeout=20)
        assert out == b"two\n" and follow.returncode == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_logs_of_a_terminal_are_raw(env, terminal) -> None:
    t = terminal("run", "-it", "--name", "rawlog", IMAGE, "sh", "-c", "echo tty-out; echo tty-err >&2")
    assert t.finish() == 0
    assert DOCKER is not None
    r = subprocess.run([DOCKER, "logs", "rawlog"], env=env, capture_output=True, timeout=60)
    assert r.stdout == b"tty-out\r\ntty-err\r\n" and r.stderr == b""


# -- exec ------------------------------------------------------------------------------------


def test_exec_streams_options_and_exit_codes(env, tmp_path) -> None:
    docker(env, "run", "-d", "--name", "ex", IMAGE, "sleep", "300")
    r = docker(env, "exec", "ex", "sh", "-c", "echo out; echo err >&2; exit 4", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (4, "out\n", "err\n")
    assert (
        docker(env, "exec", "-e", "X=1", "-w", "/tmp", "-u", "nobody", "ex", "sh", "-c", "echo $X $(pwd) $(id -un)").stdout
        == "1 /tmp nobody\n"
    )
    assert docker(env, "exec", "-i", "ex", "cat", input="fed\n").stdout == "fed\n"

    def caps(*flags: str) -> int:
        return int(docker(env, "exec", *flags, "ex", "sh", "-c", "grep CapEff /proc/self/status").stdout.split()[1], 16)

    assert caps("--privileged") > caps() > caps("-u", "nobody") == 0  # the container's own set; every one; none for another user
    marker = tmp_path / "marker"
    assert docker(env, "exec", "-d", "ex", "sh", "-c", f"sleep 0.3; echo detached > {marker}").stdout == ""
    wait_for("the detached exec's file", lambda: marker.exists() and marker.read_text() == "detached\n")
    missing = docker(env, "exec", "ex", "no-such-command-here", check=False)
    assert missing.returncode == 127 and "no-such-command-here" in missing.stdout + missing.stderr
    docker(env, "kill", "ex")
    stopped = docker(env, "exec", "ex", "true", check=False)
    assert stopped.returncode != 0 and "is not running" in stopped.stderr


def test_exec_it_is_a_terminal(env, terminal) -> None:
    docker(env, "run", "-d", "--name", "exi", IMAGE, "sleep", "300")
    t = terminal("exec", "-it", "exi", "sh")
    t.expect(PROMPT)
    t.type(b"stty size; tty\r")
    t.expect(b"/dev/pts/")
    t.type(b"exit 3\r")
    assert t.finish() == 3
    assert b"33 99" in t.output


# -- nothing waits for a client, no client stops anything --------------------------------------


def raw_attach(host: Host, name: str) -> socket.socket:
    """An attached client that never reads: the upgrade is sent, nothing is read."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.path.join(host.root, "run", "qiao.sock"))
    sock.sendall(
        f"POST /containers/{name}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
    )
    return sock


def test_output_goes_on_without_readers(env, host) -> None:
    size = 32 << 20
    docker(env, "create", "--name", "big", IMAGE, "sh", "-c", f"sleep 1; head -c {size} /dev/zero; echo; echo end")
    stalled = raw_attach(host, "big")  # attached before the start, then never reads
    try:
        docker(env, "start", "big")
        assert docker(env, "wait", "big", timeout=60).stdout == "0\n"
    finally:
        stalled.close()
    logs = subprocess.run([DOCKER or "docker", "logs", "--tail", "1", "big"], env=env, capture_output=True, timeout=60)
    assert logs.stdout == b"end\n"
    everything = subprocess.run([DOCKER or "docker", "logs", "big"], env=env, capture_output=True, timeout=60)
    assert len(everything.stdout) == size + len(b"\nend\n")


def test_clients_that_leave_stop_nothing(env, host) -> None:
    assert DOCKER is not None
    fg = subprocess.Popen([DOCKER, "run", "--name", "left", IMAGE, "sh", "-c", "echo up; exec sleep 300"], env=env, stdout=subprocess.PIPE)
    assert fg.stdout is not None
    select.select([fg.stdout], [], [], 15)
    assert fg.stdout.readline() == b"up\n"
    fg.send_signal(signal.SIGKILL)  # no chance to forward anything
    fg.wait()
    watcher = subprocess.Popen([DOCKER, "attach", "--no-stdin", "left"], env=env, stdout=subprocess.PIPE)
    time.sleep(0.5)
    watcher.kill()
    watcher.wait()
    time.sleep(0.3)
    assert state(env, "left")["Running"]
    assert docker(env, "exec", "left", "echo", "still").stdout == "still\n"


def test_streams_outlive_a_daemon_restart(env, host) -> None:
    docker(env, "run", "-d", "--name", "alive", IMAGE, "sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done")
    wait_for("its first lines", lambda: len(docker(env, "logs", "alive").stdout.split()) > 3)
    host.stop_daemon()
    time.sleep(1)
    host.start_daemon()
    numbers = [int(n) for n in docker(env, "logs", "alive").stdout.split()]
    assert numbers == list(range(len(numbers))) and len(numbers) > 10  # written while no daemon ran, nothing lost
    assert DOCKER is not None
    attached = subprocess.Popen([DOCKER, "attach", "--no-stdin", "alive"], env=env, stdout=subprocess.PIPE)
    try:
        assert attached.stdout is not None
        ready, _, _ = select.select([attached.stdout], [], [], 15)
        assert ready and int(attached.stdout.readline()) > numbers[-1]
    finally:
        attached.kill()
        attached.wait()


# -- refusals ---------------------------------------------------------------------------------


def request(host: Host, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP/1.0 request on qiaod's socket: the status and the JSON error's body."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(os.path.join(host.root, "run", "qiao.sock"))
        sock.sendall(f"{method} {path} HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"{}")


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("GET", "/containers/bad/logs", b"", 400, "you must choose at least one stream"),
        ("GET", "/containers/bad/logs?stdout=1&since=yesterday", b"", 400, "since"),
        ("GET", "/containers/bad/logs?stdout=1&tail=ten", b"", 400, "tail"),
        ("GET", "/containers/nosuch/logs?stdout=1", b"", 404, "No such container"),
        ("POST", "/containers/bad/wait?condition=soon", b"", 400, "invalid condition"),
        ("POST", "/containers/bad/attach?stream=1&detachKeys=ctrl-", b"", 400, "Invalid detach keys"),
        ("POST", "/containers/bad/resize?h=x&w=80", b"", 400, "invalid value for h"),
        ("POST", "/containers/bad/resize?h=24&w=80", b"", 409, "is not running"),
        ("POST", "/containers/bad/exec", b'{"Cmd": ["true"]}', 409, "is not running"),
        ("POST", "/containers/bad/exec", b'{"Cmd": 5}', 400, "Cmd"),
        ("POST", "/exec/nosuch/start", b"{}", 404, "No such exec instance"),
        ("GET", "/exec/nosuch/json", b"", 404, "No such exec instance"),
        ("POST", "/exec/nosuch/resize?h=1&w=1", b"", 404, "No such exec instance"),
    ],
)
def test_bad_stream_requests_are_clear_refusals(env, host, method, path, body, status, fragment) -> None:
    docker(env, "create", "--name", "bad", IMAGE, "true")
    got, doc = request(host, method, path, body)
    assert got == status and fragment in doc["message"], (got, doc)


# -- docker-py -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(host: Host) -> Iterator:
    docker_py = pytest.importorskip("docker")
    c = docker_py.DockerClient(base_url=f"unix://{host.root}/run/qiao.sock")
    yield c
    c.close()


def test_docker_py_run_remove_returns_the_output(client) -> None:
    import docker as docker_py

    assert client.containers.run(IMAGE, ["sh", "-c", "echo out; sleep 0.2; echo err >&2"], remove=True) == b"out\n"
    both = client.containers.run(IMAGE, ["sh", "-c", "echo out; sleep 0.2; echo err >&2"], remove=True, stderr=True)
    assert both == b"out\nerr\n"
    with pytest.raises(docker_py.errors.ContainerError) as failed:
        client.containers.run(IMAGE, ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    assert failed.value.exit_status == 3 and failed.value.stderr == b"bad\n"
    assert client.containers.list(all=True) == []


def test_docker_py_logs_exec_run_attach(client) -> None:
    ctr = client.containers.run(IMAGE, ["sh", "-c", "echo a; sleep 0.2; echo b >&2; exec sleep 300"], detach=True, name="py")
    wait_for("its output", lambda: ctr.logs() == b"a\nb\n")
    assert ctr.logs(stderr=False) == b"a\n" and ctr.logs(stdout=False) == b"b\n"
    assert STAMP.match(ctr.logs(timestamps=True, tail=1)) and ctr.logs(tail=1).endswith(b"b\n")
    result = ctr.exec_run(["sh", "-c", "echo x; echo y >&2; exit 3"])
    assert (result.exit_code, result.output) == (3, b"x\ny\n")
    for _ in range(10):  # the output comes right after the upgrade: none of it may be lost
        assert ctr.exec_run(["sh", "-c", "echo x; echo y >&2"], demux=True).output == (b"x\n", b"y\n")
    assert ctr.exec_run("tty", tty=True).output.startswith(b"/dev/pts/")
    assert ctr.exec_run(["sh", "-c", "echo $V"], environment={"V": "set"}, user="nobody", workdir="/tmp").output == b"set\n"
    stream = ctr.attach(stream=True, logs=True)
    assert next(stream) == b"a\n"
    stream.close()
    ctr.remove(force=True)


def test_docker_py_attach_follows_to_the_end_and_wait(client) -> None:
    ctr = client.containers.create(IMAGE, ["sh", "-c", "sleep 0.5; for i in 1 2 3; do echo $i; sleep 0.1; done; exit 4"])
    stream = ctr.attach(stream=True)
    ctr.start()
    assert b"".join(stream) == b"1\n2\n3\n"
    assert ctr.wait() == {"StatusCode": 4, "Error": None}
    ctr.remove()


def test_qiaos_own_logs_keep_the_streams_apart(host: Host) -> None:
    host.run_d("--name", "ql", "--", "sh", "-c", "echo out; echo err >&2; sleep 0.2; echo more")
    wait_for("its output", lambda: host.qiao("logs", "ql").stdout == "out\nmore\n")
    r = host.qiao("logs", "-n", "1", "-t", "ql")
    assert STAMP.match(r.stdout.encode()) and r.stdout.endswith(" more\n") and r.stderr == ""
    assert host.qiao("logs", "ql").stderr == "err\n"
    assert Path(host.root, "lib", "containers", host.inspect("ql")["Id"], "container.log").read_bytes().startswith(b"QIAOLOG1")
