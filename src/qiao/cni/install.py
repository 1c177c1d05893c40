"""``qiao cni install`` / ``qiao cni uninstall``: the conflist and the plugin
link a runtime needs.

Runtimes start a plugin with a bare environment, so everything the plugin
must know (the qiao root, the network) goes into the conflist.  The file
says that qiao wrote it (``"qiao": {"installedBy": ...}``), and qiao
overwrites or removes only such files.  ``cniVersion`` is 1.0.0, the
newest that containerd 1.6 and Podman 4 (libcni 1.1) read; ``cniVersions``
lets a newer runtime choose 1.1.0 (and so GC and STATUS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from qiao.paths import Root

MARK = {"installedBy": "qiao cni install"}
PLUGIN = "qiao-cni"


def conflist(name: str, network: str, root: Root, extra: dict[str, object]) -> dict[str, object]:
    """``extra``: the network's other keys (subnet, driver, bridge), as given."""
    plugin: dict[str, object] = {"type": "qiao", "network": network, **extra}
    if root.base:
        plugin["qiaoRoot"] = root.base
    plugin["capabilities"] = {"portMappings": True, "ips": True, "mac": True}
    return {"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0", "1.1.0"], "name": name, "qiao": MARK, "plugins": [plugin]}


def _ours(path: str) -> bool:
    try:
        with open(path) as f:
            return json.load(f).get("qiao") == MARK
    except (OSError, ValueError, AttributeError):
        return False


def _plugin_link(bin_dir: str) -> tuple[str, str]:
    """(the link's path, what it points to)."""
    return os.path.join(bin_dir, "qiao"), os.path.join(os.path.dirname(sys.executable), PLUGIN)


def install(a: argparse.Namespace, root: Root) -> str:
    name = a.name or a.network
    path = os.path.join(a.conf_dir, f"10-qiao-{name}.conflist")
    if os.path.lexists(path) and not _ours(path):
        raise SystemExit(f"qiao: {path} exists and qiao did not write it; not overwriting")
    link, target = _plugin_link(a.bin_dir)
    if os.path.lexists(link) and not (os.path.islink(link) and os.path.basename(os.readlink(link)) == PLUGIN):
        raise SystemExit(f"qiao: {link} exists and is not qiao's plugin; not overwriting")
    if not os.path.exists(target):
        raise SystemExit(f"qiao: the plugin {target} is not installed (make setup installs it)")
    extra = {key: value for key, value in (("subnet", a.subnet), ("driver", a.driver), ("bridge", a.bridge)) if value}
    os.makedirs(a.conf_dir, exist_ok=True)
    os.makedirs(a.bin_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conflist(name, a.network, root, extra), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)  # a runtime reading the directory sees the old file or the new one
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)
    return path


def uninstall(a: argparse.Namespace) -> list[str]:
    removed = []
    path = os.path.join(a.conf_dir, f"10-qiao-{a.name or a.network}.conflist")
    if _ours(path):
        os.unlink(path)
        removed.append(path)
    link, _target = _plugin_link(a.bin_dir)
    others = [f for f in _listing(a.conf_dir) if f.endswith(".conflist") and _ours(os.path.join(a.conf_dir, f))]
    if not others and os.path.islink(link) and os.path.basename(os.readlink(link)) == PLUGIN:  # the last of qiao's conflists
        os.unlink(link)
        removed.append(link)
    return removed


def _listing(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def main(argv: list[str], root: Root) -> int:
    p = argparse.ArgumentParser(prog="qiao cni", description="qiao as a CNI plugin for containerd, Podman and Kubernetes nodes")
    sub = p.add_subparsers(dest="action", required=True)
    for action in ("install", "uninstall"):
        s = sub.add_parser(action)
        s.add_argument("--bin-dir", default="/opt/cni/bin", help="the runtime's CNI plugin directory (default /opt/cni/bin)")
        s.add_argument("--conf-dir", default="/etc/cni/net.d", help="the runtime's CNI configuration directory (default /etc/cni/net.d)")
        s.add_argument("--network", required=True, help="the qiao network pods join (created on the first ADD when --subnet is given)")
        s.add_argument("--name", help="the CNI network name (default: the qiao network's)")
        if action == "install":
            s.add_argument("--subnet", help="the network's subnet (an overlay's: the range shared by all hosts)")
            s.add_argument("--driver", help="the network's driver: bridge (the default) or overlay (qiaod checks it at the first ADD)")
            s.add_argument("--bridge", help="the Linux bridge's name (bridge driver)")
    a = p.parse_args(argv)
    try:
        if a.action == "install":
            print(install(a, root))
        else:
            for path in uninstall(a):
                print(f"removed {path}")
    except OSError as exc:
        print(f"qiao: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    return 0
