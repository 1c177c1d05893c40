#!/usr/bin/env bash
# Installs everything qiao needs on a fresh Debian machine; safe to repeat.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: iproute2 (ip, for tests and humans), nftables + libnftables1
# (the firewall), conntrack (flushing stale flows), util-linux (nsenter for the lab),
# iperf3 (benchmarks), etcd-server + etcd-client (the overlay's store and etcdctl;
# qiao runs its own etcd, in the lab's namespace: a system etcd that the package
# may enable on 127.0.0.1:2379 is not used), containerd + runc + busybox-static
# (tests/integration/test_containerd.py: a private containerd per test host, an
# offline busybox image; no containerd service is used), containernetworking-plugins
# (the reference CNI bridge + host-local that test runs, and portmap + tuning chained
# after qiao's plugin), iptables (portmap drives it, in a test host's namespace only)
# and podman (Podman 4 with its CNI backend driving qiao's plugin, with a root of the test's).
packages=(iproute2 nftables libnftables1 conntrack util-linux iperf3 procps etcd-server etcd-client
          containerd runc busybox-static containernetworking-plugins iptables podman)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# docker.io (Debian's dockerd 20.10 + its client /usr/bin/docker) for
# tests/integration/test_dockerd.py: a private dockerd per test host, with its own
# containerd, data, socket and plugin dir; the package's docker service is not used.
# Without recommends: they pull apparmor and needrestart.  Its postinst would start
# the service (docker0, iptables rules, /var/run/docker.sock): a policy-rc.d of ours
# (when the machine has none) denies that during the install only.
no_recommends=(docker.io)
missing_nr=()
for pkg in "${no_recommends[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_nr+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_nr[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} ${missing_nr[*]}"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ${#missing_nr[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d ours=""
    if [ ! -e "$policy" ]; then
        ours=$policy
        trap 'rm -f "$ours"' EXIT
        printf '#!/bin/sh\n# scripts/setup.sh: no service starts while it installs docker.io\nexit 101\n' > "$ours"
        chmod 0755 "$ours"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_nr[@]}" >/dev/null
    if [ -n "$ours" ]; then
        rm -f "$ours"
        trap - EXIT
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    touch .venv/.installed
fi

# pip's console-script wrappers import `re` (~7 ms) only to tidy argv[0] on
# Windows; `qiao` and the CNI plugin `qiao-cni` start for every command and
# every pod, so they get wrappers without it.
for entry in "qiao qiao.cli.main" "qiao-cni qiao.cni.plugin"; do
    set -- $entry
    printf '#!%s\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$PWD/.venv/bin/python3" "$2" > ".venv/bin/$1.tmp"
    chmod 0755 ".venv/bin/$1.tmp"
    mv ".venv/bin/$1.tmp" ".venv/bin/$1"
done

# Byte-compile qiao's sources: every `qiao` command and container shim starts a
# fresh interpreter, and one that finds no .pyc compiles the modules it imports
# (~7 ms for the CLI), again every time when PYTHONDONTWRITEBYTECODE is set.
.venv/bin/python -m compileall -q src
