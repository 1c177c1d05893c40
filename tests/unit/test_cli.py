"""The ``qiao`` CLI without a daemon: arguments, output formatting, the
unix-socket client against a fake server, and a light import."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from qiao.cli import output
from qiao.cli.client import Client, DaemonError, Unreachable, quote
from qiao.cli.main import build_parser, main
from qiao.paths import Root


@pytest.fixture(autouse=True)
def never_start_a_daemon(monkeypatch, tmp_path):
    """Tests run as root too: a CLI that would start qiaod must fail loudly instead."""

    def refuse(self):
        raise AssertionError("the CLI tried to start qiaod")

    monkeypatch.setattr(Client, "_start_daemon", refuse)
    monkeypatch.setenv("QIAO_ROOT", str(tmp_path / "envroot"))


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "required"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "no command given"),
        (["run", "--"], "no command given"),
        (["run", "-d", "--name", "x"], "no command given"),
        (["run", "--bogus", "true"], "unrecognized arguments: --bogus"),
        (["run", "-p", "99999:80", "--", "true"], "invalid host port"),
        (["run", "-p", "80/icmp", "true"], "invalid protocol"),
        (["run", "-p", "1-3:80-81", "true"], "differ in size"),
        (["run", "--expose", "x", "true"], "invalid port"),
        (["exec", "box"], "no command given"),
        (["ps", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["stop", "-t", "soon", "box"], "invalid int value"),
        (["stop"], "required"),
        (["network"], "required"),
        (["network", "frob"], "invalid choice: 'frob'"),
        (["network", "create"], "required"),
        (["network", "create", "-o", "=x", "net"], "invalid option '=x': expected KEY=VALUE"),
        (["network", "create", "--label", "=x", "net"], "invalid label '=x'"),
        (["daemon", "restart"], "invalid choice: 'restart'"),
    ],
)
def test_usage_errors(tmp_path, capsys, argv, fragment):
    rc = main(["--root", str(tmp_path), *argv])
    assert rc == 2
    line = one_error_line(capsys)
    assert fragment in line
    assert line.startswith("qiao")


def test_usage_error_without_root_option(capsys):
    assert main(["run"]) == 2
    assert "no command given" in one_error_line(capsys)


# -- parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, cmd, detach, name",
    [
        (["run", "--", "echo", "hi"], ["--", "echo", "hi"], False, None),
        (["run", "echo", "hi"], ["echo", "hi"], False, None),
        (["run", "-d", "--name", "x", "echo", "-d"], ["echo", "-d"], True, "x"),
        (["run", "-d", "--", "sh", "-c", "exit 3"], ["--", "sh", "-c", "exit 3"], True, None),
        (["run", "--name", "x", "--", "--", "y"], ["--", "--", "y"], False, "x"),
    ],
)
def test_run_command_parsing(argv, cmd, detach, name):
    a = build_parser().parse_args(argv)
    assert (a.cmd, a.detach, a.name) == (cmd, detach, name)


def test_run_options_parsing():
    a = build_parser().parse_args(
        ["run", "--rm", "-it", "-h", "box", "-e", "A=1", "-e", "B=2", "--net", "web", "-p", "8080:80", "-P", "--expose", "53/udp", "true"]
    )
    assert a.rm and a.interactive and a.tty and a.publish_all
    assert (a.hostname, a.env, a.network, a.publish, a.expose) == ("box", ["A=1", "B=2"], ["web"], ["8080:80"], ["53/udp"])
    plain = build_parser().parse_args(["run", "true"])
    assert (plain.network, plain.network_alias, plain.ip, plain.ip6, plain.mac_address, plain.link) == ([], [], "", "", "", [])


def test_network_create_parsing():
    argv = ["network", "create", "--subnet", "10.1.0.0/24", "--gateway", "10.1.0.254", "--ip-range", "10.1.0.0/28"]
    a = build_parser().parse_args([*argv, "-o", "a=b", "--internal", "n"])
    assert (a.network_command, a.subnet, a.gateway, a.ip_range, a.opt, a.internal, a.ipv6, a.name) == (
        "create",
        ["10.1.0.0/24"],
        ["10.1.0.254"],
        "10.1.0.0/28",
        ["a=b"],
        True,
        False,
        "n",
    )


def test_run_network_options_parsing():
    argv = ["run", "--network", "web", "--net", "db", "--network-alias", "api", "--network-alias", "v1.api"]
    argv += ["--ip", "10.1.0.9", "--ip6", "fd00:1::9", "--mac-address", "02:42:00:00:00:09", "--link", "a:b", "--link", "c", "true"]
    a = build_parser().parse_args(argv)
    assert a.network == ["web", "db"]
    assert (a.network_alias, a.ip, a.ip6, a.mac_address, a.link) == (
        ["api", "v1.api"],
        "10.1.0.9",
        "fd00:1::9",
        "02:42:00:00:00:09",
        ["a:b", "c"],
    )
    assert a.cmd == ["true"]


def test_network_create_dual_stack_parsing():
    argv = ["network", "create", "--ipv6", "--subnet", "10.1.0.0/24", "--subnet", "fd00:1::/64", "--gateway", "10.1.0.1"]
    a = build_parser().parse_args([*argv, "--gateway", "fd00:1::1", "--attachable", "n"])
    assert (a.ipv6, a.subnet, a.gateway, a.attachable, a.ip_range) == (
        True,
        ["10.1.0.0/24", "fd00:1::/64"],
        ["10.1.0.1", "fd00:1::1"],
        True,
        None,
    )


def test_network_connect_disconnect_parsing():
    a = build_parser().parse_args(
        ["network", "connect", "--alias", "x", "--alias", "y", "--ip", "10.1.0.5", "--ip6", "fd00::5", "web", "box"]
    )
    assert (a.network_command, a.alias, a.ip, a.ip6, a.network, a.container) == ("connect", ["x", "y"], "10.1.0.5", "fd00::5", "web", "box")
    plain = build_parser().parse_args(["network", "connect", "web", "box"])
    assert (plain.alias, plain.ip, plain.ip6) == ([], "", "")
    d = build_parser().parse_args(["network", "disconnect", "-f", "web", "box"])
    assert (d.network_command, d.force, d.network, d.container) == ("disconnect", True, "web", "box")
    assert build_parser().parse_args(["network", "disconnect", "web", "box"]).force is False


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["network", "connect", "web"], "required: container"),
        (["network", "disconnect"], "required: network, container"),
        (["network", "connect", "--mac-address", "x", "web", "box"], "unrecognized arguments: --mac-address"),
        (["run", "--ip"], "expected one argument"),
        (["run", "--network", "web", "--network", "web", "true"], 'network "web" is specified multiple times'),
        (["run", "--net", "a", "--net", "b", "--net", "a", "true"], 'network "a" is specified multiple times'),
        (["network", "create", "--gateway", "10.1.0.1", "n"], "each --gateway needs a --subnet"),
    ],
)
def test_new_options_usage_errors(tmp_path, capsys, argv, fragment):
    assert main(["--root", str(tmp_path), *argv]) == 2
    assert fragment in one_error_line(capsys)


# -- a fake qiaod ------------------------------------------------------------


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        if int(size, 16) == 0:
            return out
        out, data = out + data[: int(size, 16)], data[int(size, 16) + 2 :]


class FakeDaemon:
    """Answers HTTP/1.0 requests on a unix socket from a table of replies."""

    def __init__(self, path: str):
        self.path = path
        self.requests: list[dict] = []
        self.replies: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self.hang_up: set[tuple[str, str]] = set()
        self.raw: dict[tuple[str, str], bytes] = {}  # sent as is, then the connection is closed
        self.reset: set[str] = set()  # paths answered by closing before reading anything
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                if fake.reset:
                    peek = self.request.recv(4096, socket.MSG_PEEK)
                    if any(f" {p} ".encode() in peek for p in fake.reset):
                        time.sleep(0.05)  # the whole request is in: closing with it unread resets the client
                        return
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                head, _, body = head.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _version = lines[0].split(" ")
                headers = dict(line.split(": ", 1) for line in lines[1:])
                if headers.get("Transfer-Encoding") == "chunked":
                    while not body.endswith(b"0\r\n\r\n"):
                        body += self.request.recv(4096)
                    body = _dechunk(body)
                else:
                    while len(body) < int(headers.get("Content-Length", 0)):
                        body += self.request.recv(4096)
                    body = body[: int(headers.get("Content-Length", 0))]  # not the byte carrying X-Qiao-Stdio's fds
                path, _, query = target.partition("?")
                decoded = body if headers.get("Content-Type") == "application/x-tar" else json.loads(body) if body else None
                fake.requests.append({"method": method, "path": path, "query": query, "headers": headers, "body": decoded})
                if (method, path) in fake.hang_up:
                    return  # close without answering
                if (method, path) in fake.raw:
                    self.request.sendall(fake.raw[(method, path)])
                    return
                status, ctype, data = fake.replies.get((method, path), (404, "application/json", b'{"message": "page not found"}'))
                self.request.sendall(f"HTTP/1.0 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def reply(self, method: str, path: str, status: int, payload, ctype: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.replies[(method, path)] = (status, ctype, data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def root(tmp_path) -> Root:
    r = Root.resolve(str(tmp_path))
    os.makedirs(r.run)
    return r


@pytest.fixture
def daemon(root):
    fake = FakeDaemon(root.socket)
    yield fake
    fake.close()


# -- the client --------------------------------------------------------------


def test_client_json_reply(root, daemon):
    daemon.reply("GET", "/networks", 200, [{"Name": "bridge"}])
    got = Client(root, autostart=False).request("GET", "/networks", {"filter": "a b/c", "skip": None, "n": 1})
    assert got == [{"Name": "bridge"}]
    req = daemon.requests[-1]
    assert (req["method"], req["path"], req["query"]) == ("GET", "/networks", "filter=a%20b%2Fc&n=1")
    assert req["headers"]["Content-Type"] == "application/json" and req["body"] is None


def test_client_sends_json_body(root, daemon):
    daemon.reply("POST", "/networks/create", 201, {"Id": "abc"})
    got = Client(root, autostart=False).request("POST", "/networks/create", body={"Name": "wéb"})
    assert got == {"Id": "abc"}
    assert daemon.requests[-1]["body"] == {"Name": "wéb"}


def test_client_empty_reply(root, daemon):
    daemon.reply("POST", "/containers/x/start", 204, b"")
    assert Client(root, autostart=False).request("POST", "/containers/x/start") is None


def test_client_text_reply(root, daemon):
    daemon.reply("GET", "/containers/x/logs", 200, b"hello\n", "text/plain; charset=utf-8")
    assert Client(root, autostart=False).request("GET", "/containers/x/logs") == b"hello\n"


def test_client_error_reply(root, daemon):
    daemon.reply("DELETE", "/networks/bridge", 409, {"message": "bridge is a pre-defined network and cannot be removed"})
    with pytest.raises(DaemonError) as info:
        Client(root, autostart=False).request("DELETE", "/networks/bridge")
    assert info.value.status == 409
    assert str(info.value) == "bridge is a pre-defined network and cannot be removed"
    assert info.value.body == {"message": "bridge is a pre-defined network and cannot be removed"}


def test_client_error_reply_not_json(root, daemon):
    daemon.reply("GET", "/boom", 500, b"something broke\n", "text/plain")
    with pytest.raises(DaemonError) as info:
        Client(root, autostart=False).request("GET", "/boom")
    assert info.value.status == 500
    assert str(info.value) == "something broke"
    assert info.value.body == {}


def test_client_connection_closed_without_answer(root, daemon):
    daemon.hang_up.add(("POST", "/qiao/shutdown"))
    with pytest.raises(Unreachable, match="closed the connection"):
        Client(root, autostart=False).request("POST", "/qiao/shutdown")


def test_client_unreachable_without_socket(root):
    with pytest.raises(Unreachable, match="no qiaod is listening on " + root.socket):
        Client(root, autostart=False).request("GET", "/info")


def test_client_unreachable_with_stale_socket(root):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(root.socket)
    stale.close()  # the file stays, nobody listens: ECONNREFUSED
    with pytest.raises(Unreachable):
        Client(root, autostart=False).request("GET", "/info")


def test_client_not_root_cannot_start_daemon(root, monkeypatch):
    monkeypatch.undo()  # the real _start_daemon, which refuses when not root
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Unreachable, match="only root can start it"):
        Client(root).request("GET", "/info")


# -- a daemon that dies mid-answer, or answers nonsense ---------------------

JSON_200 = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "qiao: qiaod closed the connection without answering GET /containers/json"),
        (b"HTTP/1.0 2", "qiao: qiaod closed the connection before its answer to GET /containers/json was complete"),
        (JSON_200, "before its answer to GET /containers/json was complete"),
        (JSON_200 + b'Content-Length: 100\r\n\r\n[{"Id"', "was complete (6 of 100 bytes)"),
        (JSON_200 + b'\r\n[{"Id": ', "qiao: qiaod's answer to GET /containers/json is not valid JSON"),
        (JSON_200 + b"Content-Length: 5\r\n\r\n[{,}]", "is not valid JSON"),
        (JSON_200 + b"Content-Length: 1\r\n\r\n\xff", "is not valid JSON"),
        (JSON_200 + b"Content-Length: 20000\r\n\r\n" + b"[" * 10000 + b"]" * 10000, "is not valid JSON"),
        (JSON_200 + b"Content-Length: x\r\n\r\n[]", "has an invalid Content-Length"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "qiao: qiaod's answer to GET /containers/json is not HTTP"),
        (b"HTTP/1.0 abc\r\n\r\n", "has an invalid status line"),
        (b"HTTP/1.0\r\n\r\n", "has an invalid status line"),
        (JSON_200 + b'Content-Length: 8\r\n\r\n{"a": 1}', "qiao: internal error: "),  # JSON, but not what ps expects
        (JSON_200 + b"Content-Length: 8\r\n\r\n[1, 2.5]", "qiao: internal error: "),
    ],
)
def test_main_bad_answer_is_one_line(tmp_path, root, daemon, capsys, raw, fragment):
    daemon.raw[("GET", "/containers/json")] = raw
    assert main(["--root", str(tmp_path), "ps"]) == 1
    assert fragment in one_error_line(capsys)


def test_main_connection_reset_is_one_line(tmp_path, root, daemon, capsys):
    daemon.reset.add("/containers/json")
    assert main(["--root", str(tmp_path), "ps"]) == 1
    assert one_error_line(capsys) == "qiao: qiaod closed the connection without answering GET /containers/json"


def test_main_daemon_dies_during_run_wait(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "a" * 64})
    daemon.reply("POST", "/containers/" + "a" * 64 + "/start", 204, b"")
    daemon.hang_up.add(("POST", "/containers/" + "a" * 64 + "/wait"))
    assert main(["--root", str(tmp_path), "run", "--", "true"]) == 1
    assert "closed the connection without answering POST /containers/" in one_error_line(capsys)


def test_main_unexpected_error_is_one_line(tmp_path, root, daemon, capsys, monkeypatch):
    import qiao.cli.main as cli

    def broken(c, a):
        raise KeyError("Id")

    monkeypatch.setattr(cli, "cmd_ps", broken)
    monkeypatch.delenv("QIAO_DEBUG", raising=False)
    assert main(["--root", str(tmp_path), "ps"]) == 1
    assert one_error_line(capsys) == "qiao: internal error: KeyError: 'Id' (QIAO_DEBUG=1 shows where)"
    monkeypatch.setenv("QIAO_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["--root", str(tmp_path), "ps"])


@pytest.mark.parametrize("argv", [["ps"], ["ps", "--format", "json"], ["inspect", "box"], ["network", "ls"], ["logs", "box"]])
def test_closed_stdout_is_quiet(tmp_path, root, daemon, argv):
    """``qiao ps | head -1``: no traceback, nothing on stderr, a non-zero exit (as a tool killed by SIGPIPE)."""
    rows = [ps_row(Id=f"{i:064x}", Names=[f"/box{i}"]) for i in range(2000)]
    daemon.reply("GET", "/containers/json", 200, rows)
    daemon.reply("GET", "/containers/box/json", 200, {"Id": "a" * 64, "Config": {"Env": ["A=" + "x" * 200_000]}})
    daemon.reply("GET", "/networks", 200, [network_doc(Name=f"net{i}", Id=f"{i:064x}") for i in range(2000)])
    daemon.reply("GET", "/containers/box/logs", 200, b"line\n" * 100_000, "text/plain; charset=utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    qiao = subprocess.Popen(
        [sys.executable, "-m", "qiao.cli.main", "--root", str(tmp_path), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    head = subprocess.run(["head", "-c", "10"], stdin=qiao.stdout, capture_output=True, timeout=30)
    assert qiao.stdout is not None
    qiao.stdout.close()
    _out, err = qiao.communicate(timeout=30)
    assert len(head.stdout) == 10
    assert err == b""
    assert qiao.returncode == 141


def test_closed_stdout_on_small_output(tmp_path, root, daemon):
    """Output smaller than the pipe: the write succeeds, the flush at the end fails; still quiet."""
    daemon.reply("GET", "/containers/json", 200, [ps_row()])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "qiao.cli.main", "--root", str(tmp_path), "ps"],
            stdout=w,
            capture_output=False,
            stderr=subprocess.PIPE,
            env=env,
            timeout=30,
        )
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (141, b"")


# -- commands against the fake daemon ----------------------------------------


def test_main_daemon_status_not_running(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "daemon", "status"]) == 3
    out, err = capsys.readouterr()
    assert out.startswith("qiaod: not running") and err == ""


def test_main_network_create_body(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/create", 201, {"Id": "f" * 64})
    argv = ["network", "create", "--subnet", "10.1.0.0/24", "-o", "mtu", "-o", "a=b=c", "--label", "x=1", "web"]
    rc = main(["--root", str(tmp_path), *argv])
    assert rc == 0
    assert capsys.readouterr().out == "f" * 64 + "\n"
    body = daemon.requests[-1]["body"]
    # Docker's MapOpts: "-o KEY" means KEY="" and only the first "=" splits
    assert body["Options"] == {"mtu": "", "a": "b=c"}
    assert body["Labels"] == {"x": "1"}
    assert body["IPAM"] == {"Driver": "default", "Config": [{"Subnet": "10.1.0.0/24", "Gateway": None}]}
    assert (body["Name"], body["Driver"], body["Internal"], body["Attachable"], body["EnableIPv6"]) == (
        "web",
        "bridge",
        False,
        False,
        False,
    )


def test_main_network_create_dual_stack_body(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/create", 201, {"Id": "f" * 64})
    argv = ["network", "create", "--ipv6", "--subnet", "10.1.0.0/24", "--subnet", "fd00:1::/64", "--gateway", "10.1.0.254"]
    assert main(["--root", str(tmp_path), *argv, "--ip-range", "10.1.0.0/28", "--internal", "web"]) == 0
    body = daemon.requests[-1]["body"]
    assert body["EnableIPv6"] is True and body["Internal"] is True
    assert body["IPAM"]["Config"] == [
        {"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.254", "IPRange": "10.1.0.0/28"},
        {"Subnet": "fd00:1::/64", "Gateway": None},
    ]


def test_main_network_create_without_subnet_sends_no_ipam_config(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/create", 201, {"Id": "f" * 64})
    assert main(["--root", str(tmp_path), "network", "create", "web"]) == 0
    assert daemon.requests[-1]["body"]["IPAM"] == {"Driver": "default", "Config": []}


def test_main_run_network_settings_go_to_the_first_network(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "a" * 64})
    daemon.reply("POST", "/containers/" + "a" * 64 + "/start", 204, b"")
    argv = ["run", "-d", "--network", "web", "--network", "db", "--network-alias", "api", "--ip", "10.1.0.9", "--ip6", "fd00::9"]
    assert main(["--root", str(tmp_path), *argv, "--mac-address", "02:42:00:00:00:09", "--link", "x:y", "true"]) == 0
    create = daemon.requests[0]["body"]
    assert create["HostConfig"]["NetworkMode"] == "web"
    assert create["HostConfig"]["Links"] == ["x:y"]
    assert create["NetworkingConfig"] == {
        "EndpointsConfig": {
            "web": {
                "Aliases": ["api"],
                "IPAMConfig": {"IPv4Address": "10.1.0.9", "IPv6Address": "fd00::9"},
                "MacAddress": "02:42:00:00:00:09",
            },
            "db": {},
        }
    }
    assert list(create["NetworkingConfig"]["EndpointsConfig"]) == ["web", "db"]  # order: the first carries the default route


def test_main_run_default_network_is_bridge(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "a" * 64})
    daemon.reply("POST", "/containers/" + "a" * 64 + "/start", 204, b"")
    assert main(["--root", str(tmp_path), "run", "-d", "true"]) == 0
    create = daemon.requests[0]["body"]
    assert create["HostConfig"]["NetworkMode"] == "bridge" and create["HostConfig"]["Links"] == []
    assert create["NetworkingConfig"] == {
        "EndpointsConfig": {"bridge": {"Aliases": [], "IPAMConfig": {"IPv4Address": "", "IPv6Address": ""}, "MacAddress": ""}}
    }


def test_main_run_security_flags_go_to_dockers_keys(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "a" * 64})
    daemon.reply("POST", "/containers/" + "a" * 64 + "/start", 204, b"")
    argv = ["run", "-d", "-u", "nobody:nogroup", "-w", "/tmp", "--cap-add", "NET_ADMIN", "--cap-add", "sys_time", "--cap-drop", "ALL"]
    assert main(["--root", str(tmp_path), *argv, "--privileged", "true"]) == 0
    create = daemon.requests[0]["body"]
    assert (create["User"], create["WorkingDir"]) == ("nobody:nogroup", "/tmp")
    host_config = create["HostConfig"]
    assert (host_config["CapAdd"], host_config["CapDrop"], host_config["Privileged"]) == (["NET_ADMIN", "sys_time"], ["ALL"], True)
    assert main(["--root", str(tmp_path), "run", "-d", "true"]) == 0
    plain = daemon.requests[-2]["body"]
    assert (plain["User"], plain["WorkingDir"], plain["HostConfig"]["CapAdd"], plain["HostConfig"]["Privileged"]) == ("", "", [], False)


def test_main_exec_unknown_user_is_one_clear_error(tmp_path, root, daemon, capsys):
    info = {"Id": "a" * 64, "State": {"Running": True, "Pid": os.getpid()}, "Config": {"Env": [], "Hostname": "h", "User": ""}}
    daemon.reply("GET", "/containers/box/json", 200, info)
    assert main(["--root", str(tmp_path), "exec", "-u", "no-such-user-here", "box", "true"]) == 126
    assert one_error_line(capsys) == "qiao: unable to find user no-such-user-here: no matching entries in passwd file"


def test_main_network_connect_and_disconnect_bodies(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/web/connect", 200, b"")
    daemon.reply("POST", "/networks/web/disconnect", 200, b"")
    assert main(["--root", str(tmp_path), "network", "connect", "--alias", "api", "--ip", "10.1.0.5", "web", "box"]) == 0
    assert main(["--root", str(tmp_path), "network", "disconnect", "--force", "web", "box"]) == 0
    connect, disconnect = daemon.requests
    assert (connect["method"], connect["path"]) == ("POST", "/networks/web/connect")
    assert connect["body"] == {
        "Container": "box",
        "EndpointConfig": {"Aliases": ["api"], "IPAMConfig": {"IPv4Address": "10.1.0.5", "IPv6Address": ""}},
    }
    assert (disconnect["path"], disconnect["body"]) == ("/networks/web/disconnect", {"Container": "box", "Force": True})
    assert capsys.readouterr().out == ""  # Docker prints nothing on success


def test_quote():
    assert quote("web-1_a.b~") == "web-1_a.b~"
    assert quote("a/b?c%d#e f") == "a%2Fb%3Fc%25d%23e%20f"
    assert quote("wéb&x=y+z") == "w%C3%A9b%26x%3Dy%2Bz"


@pytest.mark.parametrize(
    "argv, requests",
    [
        (["inspect", "a/b"], [("GET", "/containers/a%2Fb/json", ""), ("GET", "/networks/a%2Fb", ""), ("GET", "/images/a%2Fb/json", "")]),
        (["image", "rm", "localhost/x:1"], [("DELETE", "/images/localhost%2Fx%3A1", "")]),
        (["port", "x?y"], [("GET", "/containers/x%3Fy/json", "")]),
        (["logs", "50%"], [("GET", "/containers/50%25/logs", "stdout=1&stderr=1")]),
        (["rm", "-f", "a b", "c#d"], [("DELETE", "/containers/a%20b", "force=1"), ("DELETE", "/containers/c%23d", "force=1")]),
        (["stop", "-t", "1", "/box"], [("POST", "/containers/%2Fbox/stop", "t=1")]),
        (["network", "rm", "n/1"], [("DELETE", "/networks/n%2F1", "")]),
        (["network", "connect", "n?", "box"], [("POST", "/networks/n%3F/connect", "")]),
    ],
)
def test_main_refs_are_one_encoded_path_segment(tmp_path, root, daemon, capsys, argv, requests):
    """Names go into request paths percent-encoded: no other route, no cut-off query."""
    main(["--root", str(tmp_path), *argv])  # the fake daemon answers 404 to each
    assert [(r["method"], r["path"], r["query"]) for r in daemon.requests] == requests


def test_main_inspect_strange_name_is_no_such_object(tmp_path, root, daemon, capsys):
    daemon.reply("GET", "/containers/a%2Fb/json", 404, {"message": "No such container: a/b"})
    daemon.reply("GET", "/networks/a%2Fb", 404, {"message": "network a/b not found"})
    assert main(["--root", str(tmp_path), "inspect", "a/b"]) == 1
    out, err = capsys.readouterr()
    assert (json.loads(out), err) == ([], "qiao: Error: No such object: a/b\n")


def test_main_network_connect_refused(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/web/connect", 409, {"message": "endpoint with name box already exists in network web"})
    assert main(["--root", str(tmp_path), "network", "connect", "web", "box"]) == 1
    assert one_error_line(capsys) == "qiao: Error response from daemon: endpoint with name box already exists in network web"


def test_main_daemon_error_is_one_line(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/networks/create", 409, {"message": "network with name web already exists"})
    assert main(["--root", str(tmp_path), "network", "create", "web"]) == 1
    assert one_error_line(capsys) == "qiao: Error response from daemon: network with name web already exists"


@pytest.mark.parametrize("argv, cmd", [(["--", "echo", "hi"], ["echo", "hi"]), (["echo", "-d"], ["echo", "-d"])])
def test_main_run_detached_sends_command(tmp_path, root, daemon, capsys, argv, cmd):
    daemon.reply("POST", "/containers/create", 201, {"Id": "a" * 64})
    daemon.reply("POST", "/containers/" + "a" * 64 + "/start", 204, b"")
    assert main(["--root", str(tmp_path), "run", "-d", "--name", "box", "-p", "8080:80", *argv]) == 0
    assert capsys.readouterr().out == "a" * 64 + "\n"
    create = daemon.requests[0]
    assert create["query"] == "name=box"
    assert create["body"]["Cmd"] == cmd
    assert create["body"]["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert "X-Qiao-Stdio" not in daemon.requests[1]["headers"]


def test_main_run_refused_exits_125(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 404, {"message": "network nope not found"})
    assert main(["--root", str(tmp_path), "run", "--net", "nope", "-d", "true"]) == 125
    assert one_error_line(capsys) == "qiao: Error response from daemon: network nope not found"


def test_main_network_ls_formats(tmp_path, root, daemon, capsys):
    daemon.reply("GET", "/networks", 200, [network_doc()])
    assert main(["--root", str(tmp_path), "network", "ls", "-q"]) == 0
    assert capsys.readouterr().out == "0123456789ab\n"
    assert main(["--root", str(tmp_path), "network", "ls", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == output.network_json_line(network_doc())


# -- output ------------------------------------------------------------------


def ps_row(**kw) -> dict:
    row = {
        "Id": "0123456789abcdef" * 4,
        "Names": ["/box"],
        "Image": "",
        "Command": "sleep 3600",
        "Created": int(time.time()) - 125,
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}, {"PrivatePort": 53, "Type": "udp"}],
        "State": "running",
        "Status": "Up 2 minutes",
        "HostConfig": {"NetworkMode": "bridge"},
        "NetworkSettings": {"Networks": {"bridge": {}}},
    }
    row.update(kw)
    return row


def network_doc(**kw) -> dict:
    doc = {
        "Name": "web",
        "Id": "0123456789abcdef" * 4,
        "Created": "2024-05-01T10:00:00.000000Z",
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]},
        "Internal": False,
        "Labels": {"a": "1", "b": "2"},
    }
    doc.update(kw)
    return doc


def test_ps_json_keys_and_values():
    line = output.ps_json(ps_row(Created=0))
    assert list(line) == [
        "Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes", "Mounts", "Names", "Networks", "Ports",
        "RunningFor", "Size", "State", "Status",
    ]  # fmt: skip
    assert line["Command"] == '"sleep 3600"'
    assert line["CreatedAt"] == "1970-01-01 00:00:00 +0000 UTC"
    assert line["ID"] == "0123456789ab"
    assert line["Names"] == "box"
    assert line["Networks"] == "bridge"
    assert line["Ports"] == "53/udp, 0.0.0.0:8080->80/tcp"  # Docker's order: see test_ports_text_as_docker_ps
    assert line["RunningFor"].endswith(" years ago")
    assert (line["Size"], line["State"], line["Status"], line["LocalVolumes"]) == ("0B", "running", "Up 2 minutes", "0")
    assert all(isinstance(v, str) for v in line.values())


def test_ps_json_network_mode_when_no_networks():
    row = ps_row(HostConfig={"NetworkMode": "container:abc"}, NetworkSettings={"Networks": {}})
    assert output.ps_json(row)["Networks"] == "container:abc"


def test_ps_json_truncates_long_command():
    line = output.ps_json(ps_row(Command="sh -c 'while true; do sleep 1; done'"))
    assert line["Command"] == '"sh -c \'while true; …"'


def test_network_json_line_keys_and_values():
    line = output.network_json_line(network_doc())
    assert list(line) == ["CreatedAt", "Driver", "ID", "IPv4", "IPv6", "Internal", "Labels", "Name", "Scope"]
    assert line == {
        "CreatedAt": "2024-05-01 10:00:00 +0000 UTC",  # Go's time.Time.String(), as docker prints it
        "Driver": "bridge",
        "ID": "0123456789ab",
        "IPv4": "true",
        "IPv6": "false",
        "Internal": "false",
        "Labels": "a=1,b=2",
        "Name": "web",
        "Scope": "local",
    }
    host = output.network_json_line(network_doc(Name="host", Driver="host", IPAM={"Config": []}, Labels={}, Internal=True))
    assert (host["IPv4"], host["Labels"], host["Internal"]) == ("false", "", "true")


def test_network_table():
    nets = [network_doc(), network_doc(Name="bridge", Id="f" * 64), network_doc(Name="none", Driver="null", Id="e" * 64)]
    assert output.network_table(nets) == (
        "NETWORK ID     NAME     DRIVER   SCOPE\n"
        "0123456789ab   web      bridge   local\n"
        "ffffffffffff   bridge   bridge   local\n"
        "eeeeeeeeeeee   none     null     local\n"
    )
    assert output.network_table([]) == "NETWORK ID   NAME   DRIVER   SCOPE\n"


def test_ps_table():
    text = output.ps_table([ps_row(), ps_row(Names=["/other"], Ports=[], Status="Created", Command="x" * 30)])
    lines = text.splitlines()
    header = lines[0]
    assert header.startswith("CONTAINER ID   IMAGE   COMMAND")
    for col in ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"):
        assert col in header
    # every column starts at the same offset on every line
    starts = [header.index(c) for c in ("COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    assert lines[1][starts[0] :].startswith('"sleep 3600"')
    assert lines[1][starts[1] :].startswith("2 minutes ago")
    assert lines[1][starts[2] :].startswith("Up 2 minutes")
    assert lines[1][starts[3] :].startswith("53/udp, 0.0.0.0:8080->80/tcp")
    assert lines[1][starts[4] :] == "box"
    assert lines[2][starts[0] :].startswith('"' + "x" * 19 + '…"')
    assert lines[2][starts[4] :] == "other"
    assert all(line == line.rstrip() for line in lines)
    assert output.ps_table([]) == "CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES\n"
    assert output.ps_table([ps_row(Image="busybox:1")]).splitlines()[1].split()[1] == "busybox:1"


@pytest.mark.parametrize(
    "ago, text",
    [
        (0, "Less than a second ago"),
        (1, "1 second ago"),
        (59, "59 seconds ago"),
        (90, "About a minute ago"),
        (45 * 60, "45 minutes ago"),
        (90 * 60 + 1, "2 hours ago"),
        (5 * 86400, "5 days ago"),
        (21 * 86400, "3 weeks ago"),
    ],
)
def test_created_column_is_dockers_human_duration(ago, text, monkeypatch):
    now = 1_700_000_000.5  # a fixed clock: a second boundary crossed on a busy machine would change the text
    monkeypatch.setattr(time, "time", lambda: now)
    assert output.ps_json(ps_row(Created=int(now) - ago))["RunningFor"] == text


def test_ports_text():
    assert output.ports_text([]) == ""
    assert output.ports_text([{"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}]) == "127.0.0.1:5353->53/udp"


def pub(ip: str, host: int, port: int, proto: str = "tcp") -> dict:
    return {"IP": ip, "PrivatePort": port, "PublicPort": host, "Type": proto}


def exp(port: int, proto: str = "tcp") -> dict:
    return {"PrivatePort": port, "Type": proto}


@pytest.mark.parametrize(
    "ports, text",
    [
        # unpublished ports: consecutive ones of a protocol as one range
        ([exp(80), exp(81), exp(82)], "80-82/tcp"),
        ([exp(9999, "udp"), exp(9998, "udp")], "9998-9999/udp"),
        ([exp(80), exp(80, "udp"), exp(81, "udp"), exp(81)], "80-81/tcp, 80-81/udp"),
        # published on the same host port: ranges too, per host address and protocol
        ([pub("0.0.0.0", p, p) for p in (8000, 8001, 8002)], "0.0.0.0:8000-8002->8000-8002/tcp"),
        ([pub("1.2.3.4", 9998, 9998, "udp"), pub("1.2.3.4", 9999, 9999, "udp")], "1.2.3.4:9998-9999->9998-9999/udp"),
        ([pub("0.0.0.0", 80, 80), pub("127.0.0.1", 81, 81)], "0.0.0.0:80->80/tcp, 127.0.0.1:81->81/tcp"),
        # published on another host port (-p 8000-8002:80-82): never grouped, one each, after the groups
        ([pub("0.0.0.0", 8000 + i, 80 + i) for i in (2, 0, 1)], "0.0.0.0:8000->80/tcp, 0.0.0.0:8001->81/tcp, 0.0.0.0:8002->82/tcp"),
        ([pub("1.2.3.4", 7766, 6677), exp(9988, "udp")], "9988/udp, 1.2.3.4:7766->6677/tcp"),
        ([exp(9988, "udp") | {"PublicPort": 8899}], "9988/udp"),  # no host address: shown as unpublished
        # sorted by container port, then host address (IPv4 before IPv6, by value), host port, protocol
        (
            [pub("1.2.3.4", 8899, 9988, "udp"), pub("1.2.3.4", 8899, 9988), pub("4.3.2.1", 3322, 2233), pub("::1", 3322, 2233)],
            "4.3.2.1:3322->2233/tcp, [::1]:3322->2233/tcp, 1.2.3.4:8899->9988/tcp, 1.2.3.4:8899->9988/udp",
        ),
        (
            [pub("10.0.0.1", 81, 80), pub("9.0.0.1", 81, 80), pub("::ffff:1.1.1.1", 81, 80)],
            "9.0.0.1:81->80/tcp, 10.0.0.1:81->80/tcp, [::ffff:1.1.1.1]:81->80/tcp",
        ),
        ([pub("2001:db8::2", 81, 80), pub("2001:db8::10", 81, 80)], "[2001:db8::2]:81->80/tcp, [2001:db8::10]:81->80/tcp"),
        ([pub("::1", 9998, 9998), pub("::1", 9999, 9999)], "[::1]:9998-9999->9998-9999/tcp"),
        ([pub("0.0.0.0", 0, 9988)], "0.0.0.0:0->9988/tcp"),
        # a run cut by a gap is printed at once, before the groups still open
        ([exp(80), exp(81), exp(82, "udp"), exp(83)], "80-81/tcp, 83/tcp, 82/udp"),
        ([exp(9988, "udp"), exp(9988, "udp")], "9988/udp, 9988/udp"),
        (
            [exp(80), exp(1024), exp(80, "udp"), exp(1024, "udp"), exp(12345, "sctp")]
            + [pub(ip, h, p, proto) for ip in ("1.1.1.1", "2.1.1.1") for h, p in ((80, 1024), (1024, 80)) for proto in ("tcp", "udp")],
            "80/tcp, 80/udp, 1024/tcp, 1024/udp, 12345/sctp, "
            "1.1.1.1:1024->80/tcp, 1.1.1.1:1024->80/udp, 2.1.1.1:1024->80/tcp, 2.1.1.1:1024->80/udp, "
            "1.1.1.1:80->1024/tcp, 1.1.1.1:80->1024/udp, 2.1.1.1:80->1024/tcp, 2.1.1.1:80->1024/udp",
        ),
    ],
)
def test_ports_text_as_docker_ps(ports, text):
    """The cases of docker/cli's TestDisplayablePorts (cli/command/formatter) and a few of qiao's own."""
    assert output.ports_text(ports) == text
    assert output.ports_text(list(reversed(ports))) == text  # the daemon's order does not matter


def test_ps_table_and_json_show_ranges():
    ports = [pub("0.0.0.0", 9000 + i, 9000 + i, "udp") for i in range(3)] + [pub("0.0.0.0", 8080, 80), exp(7000)]
    expected = "7000/tcp, 0.0.0.0:9000-9002->9000-9002/udp, 0.0.0.0:8080->80/tcp"
    assert output.ps_json(ps_row(Ports=ports))["Ports"] == expected  # docker ps --format json: the same text
    header, line = output.ps_table([ps_row(Ports=ports)]).splitlines()
    assert line[header.index("PORTS") :].startswith(expected + "   box")


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("80", [("80/tcp", {"HostIp": "", "HostPort": ""})]),
        ("8080:80", [("80/tcp", {"HostIp": "", "HostPort": "8080"})]),
        ("127.0.0.1:8080:80/udp", [("80/udp", {"HostIp": "127.0.0.1", "HostPort": "8080"})]),
        ("127.0.0.1::80", [("80/tcp", {"HostIp": "127.0.0.1", "HostPort": ""})]),
        ("8000-8010:80", [("80/tcp", {"HostIp": "", "HostPort": "8000-8010"})]),
        ("7000-7001:80-81", [("80/tcp", {"HostIp": "", "HostPort": "7000"}), ("81/tcp", {"HostIp": "", "HostPort": "7001"})]),
    ],
)
def test_parse_publish(spec, parsed):
    assert output.parse_publish(spec) == parsed


@pytest.mark.parametrize("spec", ["", "a:b:c:d", "0:80", "80:", "[::1]:80:80", "80/icmp", "90-80"])
def test_parse_publish_errors(spec):
    with pytest.raises(ValueError):
        output.parse_publish(spec)


def test_parse_expose():
    assert output.parse_expose("7000-7002/udp") == ["7000/udp", "7001/udp", "7002/udp"]
    assert output.parse_expose("80") == ["80/tcp"]
    with pytest.raises(ValueError):
        output.parse_expose("80/icmp")


@pytest.mark.parametrize(
    "subnets, gateways, ip_range, config",
    [
        ([], [], None, []),
        ([], [], "10.1.0.0/28", [{"IPRange": "10.1.0.0/28"}]),
        (["10.1.0.0/24"], [], None, [{"Subnet": "10.1.0.0/24", "Gateway": None}]),
        (["10.1.0.0/24"], ["10.1.0.1"], "10.1.0.0/28", [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1", "IPRange": "10.1.0.0/28"}]),
        (
            ["10.1.0.0/24", "fd00::/64"],
            ["10.1.0.1", "fd00::1"],
            "10.1.0.0/28",
            [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1", "IPRange": "10.1.0.0/28"}, {"Subnet": "fd00::/64", "Gateway": "fd00::1"}],
        ),
        (
            ["fd00::/64", "10.1.0.0/24"],
            ["fd00::1"],
            None,
            [{"Subnet": "fd00::/64", "Gateway": "fd00::1"}, {"Subnet": "10.1.0.0/24", "Gateway": None}],
        ),
    ],
)
def test_ipam_config(subnets, gateways, ip_range, config):
    assert output.ipam_config(subnets, gateways, ip_range) == config


def test_ipam_config_gateway_without_subnet():
    with pytest.raises(ValueError, match="each --gateway needs a --subnet"):
        output.ipam_config(["10.1.0.0/24"], ["10.1.0.1", "fd00::1"], None)


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("53/udp", [("53/udp", {"HostIp": "", "HostPort": ""})]),
        ("9/sctp", [("9/sctp", {"HostIp": "", "HostPort": ""})]),
        ("80-82", [(f"{p}/tcp", {"HostIp": "", "HostPort": ""}) for p in (80, 81, 82)]),
        (
            "0.0.0.0:8080-8081:80-81/udp",
            [("80/udp", {"HostIp": "0.0.0.0", "HostPort": "8080"}), ("81/udp", {"HostIp": "0.0.0.0", "HostPort": "8081"})],
        ),
        (":8080:80", [("80/tcp", {"HostIp": "", "HostPort": "8080"})]),
        ("80/", [("80/tcp", {"HostIp": "", "HostPort": ""})]),  # as Docker's SplitProtoPort: an empty protocol is tcp
        ("65535:1", [("1/tcp", {"HostIp": "", "HostPort": "65535"})]),
    ],
)
def test_parse_publish_more(spec, parsed):
    assert output.parse_publish(spec) == parsed


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("80/tcp/udp", "invalid protocol 'tcp/udp'"),
        ("http", "invalid container port 'http'"),
        ("8080:0", "invalid container port '0'"),
        ("65536:80", "invalid host port '65536'"),
        ("x:80", "invalid host port 'x'"),
        ("81-80:80", "invalid host port '81-80'"),
        ("1:2:3:4", "expected [IP:][HOSTPORT[-END]:]PORT[-END][/PROTO]"),
        ("[::1]:80:80", "IPv6 host addresses are not supported yet"),
        ("8080-8082:80-81", "differ in size"),
    ],
)
def test_parse_publish_error_messages(spec, fragment):
    with pytest.raises(ValueError) as info:
        output.parse_publish(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "spec, parsed",
    [("53/udp", ["53/udp"]), ("9/sctp", ["9/sctp"]), ("80-81", ["80/tcp", "81/tcp"]), ("65535", ["65535/tcp"]), ("80/", ["80/tcp"])],
)
def test_parse_expose_more(spec, parsed):
    assert output.parse_expose(spec) == parsed


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("0", "ports are 1-65535"),
        ("81-80", "start <= end"),
        ("65536", "invalid port"),
        ("80/icmp", "invalid protocol"),
        ("", "invalid port ''"),
    ],
)
def test_parse_expose_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        output.parse_expose(spec)


# -- start-up cost -----------------------------------------------------------


@pytest.mark.parametrize("module", ["qiao.cli.main", "qiao.cli.netview", "qiao.cli.explain"])  # the last two: imported when used
def test_cli_import_is_light(module):
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    loaded = set(proc.stdout.split())
    assert module in loaded
    heavy = {"pyroute2", "nftables", "http.client", "http", "email", "urllib", "subprocess", "dataclasses", "sqlite3"}
    assert loaded & heavy == set()
    assert not any(m.startswith(("pyroute2.", "qiao.engine", "qiao.kernel", "qiao.daemon")) for m in loaded)


def test_shim_import_is_light():
    """The shim starts ahead of need, but a cold one (the spare died) is on the start path."""
    code = "import sys, qiao.runtime.shim; print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    loaded = set(proc.stdout.split())
    assert "qiao.runtime.security" in loaded
    heavy = {"pyroute2", "nftables", "http", "email", "urllib", "subprocess", "dataclasses", "sqlite3", "typing", "ctypes.util"}
    assert loaded & heavy == set()
    assert not any(m.startswith(("pyroute2.", "qiao.engine", "qiao.daemon", "qiao.cli")) for m in loaded)


def test_parser_builds_only_the_named_command() -> None:
    """Start-up: `qiao ps` builds the ps parser alone; anything unclear gets the full one."""
    from qiao.cli.main import COMMANDS

    def commands(argv: list[str]) -> set[str]:
        sub = next(a for a in build_parser(argv)._actions if a.dest == "command")
        return set(sub.choices)

    assert commands(["--root", "/r", "ps", "-a"]) == {"ps"}
    assert commands(["network", "ls"]) == {"network"}
    assert commands(["--help"]) == set(COMMANDS)
    assert commands(["nosuch"]) == set(COMMANDS)
    assert commands([]) == set(COMMANDS)
    assert build_parser(["--root", "/r", "rm", "-f", "x"]).parse_args(["--root", "/r", "rm", "-f", "x"]).force is True


# -- a run that could not start leaves nothing behind ---------------------------------


def test_main_run_whose_start_is_refused_removes_the_container(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "c" * 64})
    daemon.reply("POST", "/containers/" + "c" * 64 + "/start", 409, {"message": "Bind for 0.0.0.0:8080 failed"})
    daemon.reply("DELETE", "/containers/" + "c" * 64, 404, {"message": "No such container"})  # --rm: the engine removed it first
    assert main(["--root", str(tmp_path), "run", "--rm", "-d", "-p", "8080:80", "true"]) == 125
    assert one_error_line(capsys) == "qiao: Bind for 0.0.0.0:8080 failed"
    assert [(r["method"], r["path"], r["query"]) for r in daemon.requests][-1] == ("DELETE", "/containers/" + "c" * 64, "force=1")


@pytest.mark.parametrize("detach", [True, False])
def test_main_run_whose_start_gets_no_answer_removes_the_container(tmp_path, root, daemon, capsys, detach):
    """qiaod went away in mid-start (or the connection broke): the engine could not clean up, the CLI does."""
    daemon.reply("POST", "/containers/create", 201, {"Id": "d" * 64})
    daemon.hang_up.add(("POST", "/containers/" + "d" * 64 + "/start"))
    daemon.reply("DELETE", "/containers/" + "d" * 64, 204, b"")
    assert main(["--root", str(tmp_path), "run", "--rm", *(["-d"] if detach else []), "--", "true"]) == 1
    assert "closed the connection" in one_error_line(capsys)
    assert [(r["method"], r["path"], r["query"]) for r in daemon.requests][-1] == ("DELETE", "/containers/" + "d" * 64, "force=1")


def test_main_run_interrupted_in_mid_start_removes_the_container(tmp_path, root, daemon, monkeypatch):
    daemon.reply("POST", "/containers/create", 201, {"Id": "e" * 64})
    daemon.reply("DELETE", "/containers/" + "e" * 64, 204, b"")
    request = Client.request

    def interrupted(self, method, path, *args, **kwargs):
        if path.endswith("/start"):
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM / SIGHUP, which run turns into the same) while starting
        return request(self, method, path, *args, **kwargs)

    monkeypatch.setattr(Client, "request", interrupted)
    assert main(["--root", str(tmp_path), "run", "--rm", "--", "true"]) == 130
    assert [(r["method"], r["path"]) for r in daemon.requests] == [
        ("POST", "/containers/create"),
        ("DELETE", "/containers/" + "e" * 64),
    ]


def test_main_run_takes_sigterm_as_ctrl_c_until_started(tmp_path, root, daemon):
    """Between create and start a SIGTERM must reach the clean-up, not end the CLI on the spot."""
    import signal

    daemon.reply("POST", "/containers/create", 201, {"Id": "f" * 64})
    daemon.reply("POST", "/containers/" + "f" * 64 + "/start", 204, b"")
    seen = []
    request = Client.request

    def spy(self, method, path, *args, **kwargs):
        if path.endswith("/start"):
            seen.append(signal.getsignal(signal.SIGTERM))
        return request(self, method, path, *args, **kwargs)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        Client.request = spy  # type: ignore[method-assign]
        assert main(["--root", str(tmp_path), "run", "-d", "--", "true"]) == 0
    finally:
        Client.request = request  # type: ignore[method-assign]
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert seen == [signal.default_int_handler]


# -- images --------------------------------------------------------------------


def image_doc(**kw) -> dict:
    doc = {
        "Id": "sha256:" + "ab" * 32,
        "RepoTags": ["busybox:latest", "localhost/bb:1"],
        "Created": int(time.time()) - 7200,
        "Size": 1_978_123,
    }
    doc.update(kw)
    return doc


def test_image_table_and_json_as_docker_images():
    text = output.image_table([image_doc(), image_doc(RepoTags=[], Id="sha256:" + "cd" * 32, Size=0)])
    assert text.splitlines() == [
        "REPOSITORY     TAG      IMAGE ID       CREATED       SIZE",
        "busybox        latest   abababababab   2 hours ago   1.98MB",
        "localhost/bb   1        abababababab   2 hours ago   1.98MB",
        "<none>         <none>   cdcdcdcdcdcd   2 hours ago   0B",
    ]
    line = output.image_json_line("busybox", "latest", image_doc(Created=0))
    assert (line["ID"], line["Repository"], line["Tag"], line["Size"], line["CreatedAt"]) == (
        "abababababab", "busybox", "latest", "1.98MB", "1970-01-01 00:00:00 +0000 UTC"
    )  # fmt: skip


@pytest.mark.parametrize("size, text", [(0, "0B"), (999, "999B"), (1000, "1kB"), (1_978_123, "1.98MB"), (5 * 10**9, "5GB")])
def test_human_size(size, text):
    from qiao.units import human_size

    assert human_size(size) == text


def test_main_image_import_sends_the_file_with_its_length(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/images/create", 200, b'{"status":"sha256:abc"}\r\n')
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(b"x" * 5000)
    argv = ["--root", str(tmp_path), "image", "import", "-c", 'CMD ["sh"]', "-c", "ENV A=1", "-m", "hi", str(tar), "bb:1"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "sha256:abc\n"
    req = daemon.requests[-1]
    assert req["headers"]["Content-Length"] == "5000" and req["body"] == b"x" * 5000
    assert req["query"] == "fromSrc=-&repo=bb%3A1&message=hi&changes=CMD%20%5B%22sh%22%5D&changes=ENV%20A%3D1"


def test_main_image_load_from_a_pipe_is_chunked(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/images/load", 200, b'{"stream":"Loaded image: a:1\\n"}\r\n{"stream":"Loaded image ID: sha256:x\\n"}\r\n')
    r, w = os.pipe()
    os.write(w, b"archive bytes")
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        assert main(["--root", str(tmp_path), "image", "load"]) == 0
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    assert capsys.readouterr().out == "Loaded image: a:1\nLoaded image ID: sha256:x\n"
    req = daemon.requests[-1]
    assert req["headers"]["Transfer-Encoding"] == "chunked" and req["body"] == b"archive bytes"


def test_main_image_ls_rm_and_tag(tmp_path, root, daemon, capsys):
    daemon.reply("GET", "/images/json", 200, [image_doc()])
    assert main(["--root", str(tmp_path), "image", "ls", "-q"]) == 0
    assert capsys.readouterr().out == "abababababab\n"
    daemon.reply("DELETE", "/images/busybox", 200, [{"Untagged": "busybox:latest"}, {"Deleted": "sha256:ab"}])
    assert main(["--root", str(tmp_path), "image", "rm", "busybox", "other"]) == 1
    out, err = capsys.readouterr()
    assert out == "Untagged: busybox:latest\nDeleted: sha256:ab\n" and err.startswith("qiao: Error response from daemon:")
    daemon.reply("POST", "/images/busybox/tag", 201, b"")
    assert main(["--root", str(tmp_path), "image", "tag", "busybox", "localhost:5000/me/bb:v2"]) == 0
    assert daemon.requests[-1]["query"] == "repo=localhost%3A5000%2Fme%2Fbb&tag=v2"


def test_main_run_with_an_image_needs_no_command(tmp_path, root, daemon, capsys):
    daemon.reply("POST", "/containers/create", 201, {"Id": "f" * 64})
    daemon.reply("POST", "/containers/" + "f" * 64 + "/start", 204, b"")
    assert main(["--root", str(tmp_path), "run", "-d", "--image", "busybox", "--entrypoint", ""]) == 0
    body = daemon.requests[0]["body"]
    assert (body["Image"], body["Cmd"], body["Entrypoint"]) == ("busybox", [], [""])
    assert main(["--root", str(tmp_path), "run", "-d", "--", "true"]) == 0
    assert "Entrypoint" not in daemon.requests[2]["body"] and daemon.requests[2]["body"]["Image"] == ""
