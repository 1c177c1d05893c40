"""A container's life beyond create/start/stop/rm, over the kernel stubs:
restart policies done by the engine, stop signals and timeouts, rename,
pause/unpause (a stub freezer), prune, the /etc files of --dns/--add-host/
--domainname, the environment, and the option checks of create."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from qiao.daemon import docker_json, wire
from qiao.engine import etcfiles
from qiao.engine.containers import Containers
from qiao.engine.engine import Engine
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.lifecycle import Lifecycle
from qiao.engine.specs import NetworkSpec
from qiao.kernel.cgroup import NoCgroups, StubCgroups
from qiao.kernel.firewall import StubFirewall
from qiao.kernel.host import StubHost
from qiao.paths import Root
from tests.unit.test_containers import FakeSupervisor, stub_containers


@pytest.fixture
def c(tmp_path, monkeypatch) -> Any:
    resolv = "nameserver 192.0.2.53\nsearch lan\noptions edns0\n"
    ctrs, events, store = stub_containers(tmp_path, monkeypatch, resolv, cgroups=StubCgroups())
    ctrs.scheduled = []  # type: ignore[attr-defined]  # restarts asked for, run by hand (no timers)
    monkeypatch.setattr(ctrs.restarts, "schedule", lambda cid, delay=0.1: ctrs.scheduled.append((cid, delay)))  # type: ignore[attr-defined]
    ctrs.events = []  # type: ignore[attr-defined]
    events.subscribe(lambda e: ctrs.events.append((e.kind, e.action, e.endpoint)))  # type: ignore[attr-defined]
    yield ctrs
    store.close()


@pytest.fixture
def life(c) -> Lifecycle:
    return Lifecycle(c, c.host)


def create(c: Containers, name: str, **fields: Any):
    doc: dict[str, Any] = {"Cmd": ["sleep", "60"], "HostConfig": {}}
    for key, value in fields.items():
        (doc["HostConfig"] if key in wire.HostConfig.__struct_fields__ else doc)[key] = value
    return c.create(wire.container_spec(name, json.dumps(doc).encode()))


def exits(c: Containers, ctr, code: int) -> None:
    """The command exits with ``code``: the shim writes it, the supervisor reports it."""
    os.makedirs(os.path.dirname(c.files(ctr)["exit"]), exist_ok=True)
    with open(c.files(ctr)["exit"], "w") as f:
        f.write(str(code))
    c._on_exit(ctr.id)


def read(c: Containers, ctr, name: str) -> str:
    with open(c.files(ctr)[name]) as f:
        return f.read()


# -- restart policies ----------------------------------------------------------


def test_on_failure_restarts_until_its_maximum(c):
    ctr = create(c, "f", RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 2})
    c.start(ctr.id)
    for count in (1, 2):
        exits(c, ctr, 3)
        assert (ctr.status, ctr.restart_count, ctr.sandbox_key) == ("restarting", count, "")
        doc = docker_json.container(c.inspect("f"))
        assert doc["State"]["Restarting"] and doc["State"]["Running"] and doc["RestartCount"] == count
        c._restart_due(ctr.id)  # the wait is over
        assert ctr.running and ctr.sandbox_key
    exits(c, ctr, 3)
    assert (ctr.status, ctr.restart_count, ctr.exit_code) == ("exited", 2, 3)
    assert [delay for _cid, delay in c.scheduled] == [0.1, 0.2]  # dockerd's backoff
    assert c.store.load("containers")[0]["restart_count"] == 2
    c.start(ctr.id)  # the user's start: from 0 again
    assert ctr.restart_count == 0


def test_on_failure_does_not_restart_after_success(c):
    ctr = create(c, "ok", RestartPolicy={"Name": "on-failure"})
    c.start(ctr.id)
    exits(c, ctr, 0)
    assert ctr.status == "exited" and c.scheduled == []


def test_stop_cancels_a_pending_restart(c):
    ctr = create(c, "a", RestartPolicy={"Name": "always"})
    c.start(ctr.id)
    exits(c, ctr, 0)
    assert ctr.restarting
    c.stop("a")
    assert ctr.status == "exited" and ctr.manually_stopped
    c._restart_due(ctr.id)  # a timer that fired anyway starts nothing
    assert ctr.status == "exited"


@pytest.mark.parametrize("policy", ["always", "unless-stopped", "on-failure"])
def test_kill_keeps_it_down(c, monkeypatch, policy):
    """SIGKILL (or the stop signal) cancels restarts, as dockerd's ExitOnNext."""
    ctr = create(c, "k", RestartPolicy={"Name": policy})
    c.start(ctr.id)
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    c.kill("k", signal.SIGKILL)
    exits(c, ctr, 137)
    assert ctr.status == "exited" and ctr.manually_stopped


def test_a_signal_other_than_the_stop_signal_does_not_cancel_always(c, monkeypatch):
    ctr = create(c, "h", RestartPolicy={"Name": "always"}, StopSignal="SIGUSR1")
    c.start(ctr.id)
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    c.kill("h", signal.SIGHUP)
    exits(c, ctr, 129)
    assert ctr.restarting


def test_daemon_start_restarts_what_dockerd_would(c, monkeypatch):
    always = create(c, "always", RestartPolicy={"Name": "always"})
    unless = create(c, "unless", RestartPolicy={"Name": "unless-stopped"})
    never = create(c, "never", RestartPolicy={"Name": "always"})  # never started: left alone
    for ctr in (always, unless):
        c.start(ctr.id)
        monkeypatch.setattr(os, "kill", lambda pid, sig, ctr=ctr: exits(c, ctr, 143))  # the stop signal ends it
        c.stop(ctr.id)
    assert always.manually_stopped and unless.manually_stopped and always.status == "exited"
    c.scheduled.clear()
    c._restart_at_start()
    assert [cid for cid, _d in c.scheduled] == [always.id] and always.restarting and never.status == "created"


def test_auto_remove_with_a_restart_policy_is_refused(c):
    with pytest.raises(InvalidParameter, match="can't create 'AutoRemove' container with restart policy"):
        create(c, "x", AutoRemove=True, RestartPolicy={"Name": "always"})


def test_remove_of_a_restarting_container_needs_force(c):
    ctr = create(c, "r", RestartPolicy={"Name": "always"})
    c.start(ctr.id)
    exits(c, ctr, 1)
    with pytest.raises(Conflict, match="container is restarting"):
        c.remove("r")
    c.remove("r", force=True)
    assert c.by_id == {}


# -- stop signal and timeout ---------------------------------------------------


def test_stop_sends_the_stop_signal_then_sigkill_after_the_stop_timeout(c, monkeypatch):
    ctr = create(c, "s", StopSignal="SIGUSR1", StopTimeout=0)
    c.start(ctr.id)
    sent: list[int] = []

    def kill(pid: int, sig: int) -> None:
        sent.append(sig)
        if sig == signal.SIGKILL:
            exits(c, ctr, 137)

    monkeypatch.setattr(os, "kill", kill)
    c.stop("s")
    assert sent == [signal.SIGUSR1, signal.SIGKILL] and ctr.status == "exited"
    doc = docker_json.container(c.inspect("s"))["Config"]
    assert (doc["StopSignal"], doc["StopTimeout"]) == ("SIGUSR1", 0)


@pytest.mark.parametrize(("field", "value", "message"), [("StopSignal", "SIGNOPE", "invalid signal"), ("StopTimeout", -2, "stop timeout")])
def test_bad_stop_options_are_refused(c, field, value, message):
    with pytest.raises(InvalidParameter, match=message):
        create(c, "x", **{field: value})


# -- pause ---------------------------------------------------------------------


def test_pause_and_unpause_freeze_the_cgroup(c, life):
    ctr = create(c, "p")
    c.start(ctr.id)
    life.pause("p")
    assert c.cgroups.frozen(ctr.id) and ctr.paused
    view = c.inspect("p")
    assert docker_json.container(view)["State"]["Status"] == "paused" and docker_json.status_text(ctr).endswith("(Paused)")
    with pytest.raises(Conflict, match="is already paused"):
        life.pause("p")
    life.unpause("p")
    assert not c.cgroups.frozen(ctr.id) and not ctr.paused
    with pytest.raises(Conflict, match="is not paused"):
        life.unpause("p")
    life.pause("p")
    with pytest.raises(Conflict, match="container is paused and must be unpaused first"):
        c.remove("p")


def test_exit_removes_the_cgroup_and_pause_needs_a_running_container(c, life):
    ctr = create(c, "e")
    c.start(ctr.id)
    assert c.cgroups.exists(ctr.id) and c.supervisor.specs[ctr.id]["cgroup"] == f"/stub/{ctr.id}"
    exits(c, ctr, 0)
    assert not c.cgroups.exists(ctr.id)
    with pytest.raises(Conflict, match="is not running"):
        life.pause("e")


def test_pause_without_cgroups_says_why(c, life):
    c.cgroups = NoCgroups("no cgroup v2 hierarchy is mounted")
    c.start(create(c, "n").id)
    with pytest.raises(Conflict, match="cannot pause container n: no cgroup v2 hierarchy is mounted"):
        life.pause("n")


# -- rename, prune -------------------------------------------------------------


def test_rename_changes_the_dns_names_and_tells_the_listeners(c, life):
    net = c.networks.create(NetworkSpec("web", subnet="10.9.0.0/24"))
    ctr = create(c, "old", NetworkingConfig={"EndpointsConfig": {"web": {}}}, NetworkMode="web")
    c.start(ctr.id)
    c.events.clear()
    life.rename("old", "/new")
    (ep,) = c.networks.endpoints_of(net.id)
    assert ctr.name == "new" and ep.dns_names[0] == "new" and "old" not in ep.dns_names
    assert [(k, a, e.dns_names[0]) for k, a, e in c.events] == [("endpoint", "join", "new")]
    assert [row["name"] for row in c.store.load("containers")] == ["new"]
    assert {row["id"]: row["dns_names"] for row in c.store.load("endpoints")}[ep.id][0] == "new"


def test_rename_refusals(c, life):
    create(c, "a")
    create(c, "b")
    with pytest.raises(Conflict, match='name "/b" is already in use'):
        life.rename("a", "b")
    with pytest.raises(InvalidParameter, match="same name"):
        life.rename("a", "a")
    with pytest.raises(InvalidParameter, match="invalid container name"):
        life.rename("a", "no way")


def test_prune_removes_created_and_exited_containers_only(c, life):
    made = create(c, "made")
    done = create(c, "done")
    live = create(c, "live")
    waiting = create(c, "waiting", RestartPolicy={"Name": "always"})
    for ctr in (done, live, waiting):
        c.start(ctr.id)
    exits(c, done, 0)
    exits(c, waiting, 1)
    assert sorted(life.prune()) == sorted([made.id, done.id])
    assert sorted(ctr.name for ctr in c.by_id.values()) == ["live", "waiting"]


# -- the /etc files, the environment --------------------------------------------


def test_dns_and_add_host_on_the_default_bridge(c):
    ctr = create(
        c, "d", Dns=["192.0.2.1"], DnsSearch=["corp.test"], DnsOptions=["ndots:2"], ExtraHosts=["db:192.0.2.10", "gw:host-gateway"],
        Hostname="box", Domainname="corp.test",
    )  # fmt: skip
    c.start(ctr.id)
    assert read(c, ctr, "resolv.conf") == "nameserver 192.0.2.1\nsearch corp.test\noptions ndots:2\n"
    own = c.endpoints(ctr)[0][1].address
    assert etcfiles.HOSTS_HEADER + f"192.0.2.10\tdb\n172.17.0.1\tgw\n{own}\tbox.corp.test box\n" == read(c, ctr, "hosts")
    assert c.supervisor.specs[ctr.id]["domainname"] == "corp.test"


def test_dns_on_a_user_network_is_forwarded_by_qiaos_resolver(c):
    c.networks.create(NetworkSpec("web", subnet="10.9.0.0/24"))
    ctr = create(c, "u", Dns=["192.0.2.1"], NetworkMode="web", NetworkingConfig={"EndpointsConfig": {"web": {}}})
    c.start(ctr.id)
    assert read(c, ctr, "resolv.conf") == "nameserver 10.9.0.1\nsearch lan\noptions edns0\n# ExtServers: [192.0.2.1]\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Dns": ["dns.example"]}, "dns.example is not an ip address"),
        ({"DnsSearch": ["-bad-"]}, "is not a valid domain"),
        ({"DnsOptions": ["a b"]}, "invalid DNS option"),
        ({"ExtraHosts": ["db"]}, "invalid IP address in add-host"),
        ({"ExtraHosts": ["db:not-an-ip"]}, "invalid IP address in add-host"),
        ({"ExtraHosts": [":192.0.2.1"]}, "bad format for add-host"),
        ({"ExtraHosts": ["a b:192.0.2.1"]}, "bad format for add-host"),
        ({"ExtraHosts": ["a\nb:192.0.2.1"]}, "bad format for add-host"),
        ({"Domainname": "bad domain"}, "invalid domainname"),
        ({"Dns": ["192.0.2.1"], "NetworkMode": "container:x"}, "conflicting options: dns and the network mode"),
        ({"ExtraHosts": ["a:192.0.2.1"], "NetworkMode": "container:x"}, "conflicting options: custom host-to-IP mapping"),
        ({"Domainname": "corp.test", "NetworkMode": "host"}, "conflicting options: domainname and the network mode"),
        ({"Init": True}, "--init"),
    ],
)
def test_option_refusals(c, fields, message):
    create(c, "x")
    with pytest.raises(InvalidParameter, match=message):
        create(c, "y", **fields)


def test_bare_env_name_unsets_the_variable(c):
    ctr = create(c, "env", Env=["A=1", "HOME", "B"])
    c.start(ctr.id)
    env = c.supervisor.specs[ctr.id]["env"]
    assert env["A"] == "1" and "B" not in env and env["HOME"] == "/root"


def test_host_mode_with_add_host_gets_the_hosts_files_plus_the_entry(c):
    ctr = create(c, "h", NetworkMode="host", ExtraHosts=["db:192.0.2.10"], Dns=["192.0.2.1"])
    c.start(ctr.id)
    assert read(c, ctr, "hosts").endswith("192.0.2.10\tdb\n")
    assert read(c, ctr, "resolv.conf").startswith("nameserver 192.0.2.1\n")
    assert [target for _src, target in c.supervisor.specs[ctr.id]["mounts"]] == ["/etc/hosts", "/etc/resolv.conf"]


def test_the_resolver_learns_a_containers_dns_servers(tmp_path):
    """Engine.refresh_dns: per client address, the --dns servers its queries are forwarded to."""

    class Resolver:
        zones: dict[str, Any] = {}

        def set_zone(self, network_id: str, zone: Any) -> None:
            self.zones[network_id] = zone

        def drop_zone(self, network_id: str) -> None:
            self.zones.pop(network_id, None)

    resolver = Resolver()
    engine = Engine(Root.resolve(str(tmp_path / "root")), StubHost(), StubFirewall(), resolver=resolver, resolv_conf=str(tmp_path / "none"))  # type: ignore[arg-type]
    engine.containers.supervisor = FakeSupervisor(None)  # type: ignore[assignment]
    engine.start()
    net = engine.networks.create(NetworkSpec("web", subnet="10.9.0.0/24"))
    for name, dns in (("a", ["192.0.2.1"]), ("b", [])):
        ctr = create(engine.containers, name, Dns=dns, NetworkMode="web", NetworkingConfig={"EndpointsConfig": {"web": {}}})
        engine.containers.start(ctr.id)
    assert resolver.zones[net.id].upstreams == {"10.9.0.2": ["192.0.2.1"]}
    engine.store.close()
