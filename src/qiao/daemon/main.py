"""``qiaod``: run the engine in the foreground (for a service manager; the
CLI starts it detached when no daemon answers)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
from typing import Any

from qiao.daemon import config
from qiao.paths import Root


def _lock_pidfile(root: Root) -> int | None:
    fd = os.open(root.pidfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _raise_nofile() -> None:
    """Soft open-files limit up to the hard one: every published host port is
    a socket held here, so the usual soft 1024 would fail ``-p 20000-29999``
    with EMFILE (dockerd runs with LimitNOFILE=infinity; Go does this itself).
    Containers inherit the raised limit, as they inherit dockerd's."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        if hard == resource.RLIM_INFINITY:  # the kernel still caps it at fs.nr_open
            with open("/proc/sys/fs/nr_open") as f:
                hard = int(f.read())
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qiaod", description="qiao's engine daemon")
    parser.add_argument("--root", help="keep everything under DIR (default: /var/lib/qiao and /run/qiao; env QIAO_ROOT)")
    parser.add_argument("--debug", action="store_true", help="log every request")
    parser.add_argument("--cluster-store", help="etcd://HOST:PORT: enables overlay networks (Docker <= 19.03's flag)")
    parser.add_argument("--cluster-advertise", help="IFACE or IP of this host on the underlay (default: the default route's)")
    parser.add_argument(
        "--resolv-conf",
        help="the host's resolver file: upstreams of the DNS and base of containers' resolv.conf (default /etc/resolv.conf)",
    )
    parser.add_argument("--docker-plugin", help="serve Docker's network + IPAM plugin protocol on SOCKET (its file name names the driver)")
    parser.add_argument("--docker-host", help="unix://SOCKET of the dockerd whose containers' names qiao's resolver should know")
    parser.add_argument("--config-file", help="options as JSON (default ROOT/daemon.json under --root, else /etc/qiao/daemon.json)")
    args = parser.parse_args(argv)
    root = Root.resolve(args.root)
    config_path = config.path_for(root, args.config_file)
    try:
        config.merge(args, config.load(config_path, required=bool(args.config_file)), config_path)
    except config.ConfigError as exc:
        print(f"qiaod: {exc}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("qiaod: must run as root (it creates namespaces, links and firewall rules)", file=sys.stderr)
        return 1
    root.ensure()
    with contextlib.suppress(FileNotFoundError):
        os.chmod(root.daemon_log, 0o600)  # an older qiao wrote it world-readable
    _raise_nofile()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lock = _lock_pidfile(root)
    if lock is None:
        print(f"qiaod: another qiaod already serves {root.run}", file=sys.stderr)
        return 1

    from qiao.daemon.api import Api
    from qiao.daemon.http import Server
    from qiao.dns.resolver import Resolver
    from qiao.drivers.overlay import OverlayDriver
    from qiao.drivers.overlay.manager import OverlayManager
    from qiao.engine.engine import Engine, builtin_drivers
    from qiao.engine.etcfiles import default_resolv_conf
    from qiao.engine.steps import fault_at
    from qiao.kernel import cgroup
    from qiao.kernel.firewall import NftFirewall
    from qiao.kernel.host import LinuxHost

    manager: OverlayManager | None = None
    try:
        resolv_conf = args.resolv_conf or default_resolv_conf()
        host, firewall = LinuxHost(), NftFirewall()
        drivers = builtin_drivers(host, firewall, resolv_conf)
        if args.cluster_store:
            from qiao.drivers.overlay.store import ClusterStore
            from qiao.kernel.vxlan import LinuxVxlan

            vxlan = LinuxVxlan(host.netlink)
            manager = OverlayManager(ClusterStore(args.cluster_store), vxlan, args.cluster_advertise)
            drivers.append(OverlayDriver(host, firewall, vxlan, manager))
        else:
            drivers.append(OverlayDriver(host, firewall))  # refuses to create, with the reason
        cgroups = cgroup.detect()
        if not cgroups.available:
            logging.warning("containers get no cgroup of their own (pause is refused): %s", cgroups.why)
        fault = fault_at(os.environ.get("QIAO_FAULT_STEP"))
        engine = Engine(root, host, firewall, fault, Resolver(resolv_conf), resolv_conf, drivers, cgroups)
        if manager is not None:
            manager.local = engine.networks
            engine.events.subscribe(manager.on_event)
        engine.start()  # the firewall's tables are built from intent here ...
        _remove_trace_leftovers()
        firewall.start_healing()  # ... and rebuilt from then on whenever another program changes them
        if manager is not None:
            manager.start()
    except Exception as exc:
        logging.exception("start-up failed")
        print(f"qiaod: start-up failed: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root.socket)
    server: Server
    server = Server(root.socket, Api(engine, lambda: server.shutdown()))
    os.chmod(root.socket, 0o660)
    plugin_server = _serve_docker_plugin(args.docker_plugin, engine, args.docker_host) if args.docker_plugin else None

    def stop() -> None:
        if plugin_server is not None:
            plugin_server.shutdown()
        server.shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=stop).start())
    logging.info("qiaod %d serving %s", os.getpid(), root.socket)
    try:
        server.serve_forever()
    finally:
        if plugin_server is not None:
            plugin_server.shutdown()
            plugin_server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.docker_plugin)
        if manager is not None:
            manager.leave()
        firewall.close()
        host.settle(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root.socket)
        server.server_close()
        logging.info("qiaod %d stopped; containers keep running", os.getpid())
    return 0


def _remove_trace_leftovers() -> None:
    """The tables of a `qiao trace` a killed qiaod could not remove (they mark nothing by now, but are not to stay)."""
    from qiao.kernel.tracing import LinuxTracing

    try:
        removed = LinuxTracing().remove_leftovers()
    except Exception as exc:
        logging.warning("removing leftover trace tables failed: %s", exc)
        return
    if removed:
        logging.info("removed leftover trace tables: %s", ", ".join(removed))


def _serve_docker_plugin(path: str, engine: Any, docker_host: str | None) -> Any:
    """Docker's plugin protocol on a second socket (dockerd finds it in its plugin directory)."""
    from qiao.daemon.http import Server
    from qiao.docker_plugin.api import PluginApi
    from qiao.docker_plugin.service import DockerPlugin

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    plugin_server = Server(path, PluginApi(DockerPlugin(engine, docker_host or "")))
    os.chmod(path, 0o660)
    threading.Thread(target=plugin_server.serve_forever, name="docker-plugin", daemon=True).start()
    logging.info("serving Docker's plugin protocol on %s", path)
    return plugin_server


if __name__ == "__main__":
    sys.exit(main())
