#!/usr/bin/env bash
# Install the peers bench/attach compares qiao with: Debian's CNI reference
# plugins (bridge + host-local, in /usr/lib/cni) and netavark (podman's
# network stack).  A package this Debian does not have is reported and
# skipped; the benchmark then skips that peer with a note.
#
# bench/ports and bench/cni also need iptables (the CNI portmap plugin drives
# it); bench/ports also iperf3, and compares with Docker's docker-proxy: that one binary is
# extracted from Debian's docker.io package into /usr/local/lib/qiao-bench
# (the package itself, with dockerd, containerd and runc, is NOT installed;
# `rm -r /usr/local/lib/qiao-bench` removes it).
set -u

if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: needs root (apt-get install)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || echo "install-peers: apt-get update failed; trying the cached package lists" >&2

status=0
for pkg in containernetworking-plugins netavark iptables iperf3; do
    candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
        echo "install-peers: $pkg is not available in this Debian; the benchmark will skip it"
        continue
    fi
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        echo "install-peers: $pkg already installed ($(dpkg-query -W -f='${Version}' "$pkg"))"
        continue
    fi
    echo "install-peers: installing $pkg $candidate"
    # --no-install-recommends: netavark recommends aardvark-dns, which the benchmark does not use.
    if ! apt-get install -y -qq --no-install-recommends "$pkg"; then
        echo "install-peers: installing $pkg failed" >&2
        status=1
    fi
done

proxy_dir=/usr/local/lib/qiao-bench
if [ -x "$proxy_dir/docker-proxy" ]; then
    echo "install-peers: docker-proxy already in $proxy_dir"
elif [ -z "$(apt-cache policy docker.io 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}')" ]; then
    echo "install-peers: docker.io is not available in this Debian; bench/ports will skip docker-proxy"
else
    tmp=$(mktemp -d)
    # apt-get download: the .deb only, nothing installed, no service started.
    if (cd "$tmp" && apt-get download -qq docker.io 2>/dev/null) && dpkg-deb -x "$tmp"/docker.io_*.deb "$tmp/x" \
        && install -D -m 0755 "$tmp/x/usr/sbin/docker-proxy" "$proxy_dir/docker-proxy"; then
        echo "install-peers: docker-proxy from docker.io $(dpkg-deb -f "$tmp"/docker.io_*.deb Version) -> $proxy_dir/docker-proxy"
    else
        echo "install-peers: could not extract docker-proxy from docker.io" >&2
        status=1
    fi
    rm -rf "$tmp"
fi
exit $status
