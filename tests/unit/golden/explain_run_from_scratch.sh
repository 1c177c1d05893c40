#!/bin/sh
# qiao explain --from-scratch run -d -p 8080:80 -- python3 -m http.server 80
# What qiao does on a host where it never ran, as commands. Run it as root: sh -e FILE.
# Generated names (ids, veth names, the bridges' MACs) differ from those of qiao's own run.
set -e

# start-up: Create qiao's two nftables tables, replacing any old ones, in one transaction: inet qiao
#   (NAT, isolation between networks, published ports; per-network chains hang off verdict maps) and
#   bridge qiao (anti-spoofing).
nft -f - <<'EOF'
add table inet qiao
delete table inet qiao
add table bridge qiao
delete table bridge qiao
table inet qiao {
    set bridges { type ifname; }
    map fwd_in { type ifname : verdict; }
    map fwd_out { type ifname : verdict; }
    map nat_out { type ifname : verdict; }
    map published { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }
    map published_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
    chain publish {
        dnat ip to meta l4proto . ip daddr . th dport map @published
        dnat ip to meta l4proto . th dport map @published_any
    }
    chain raw {
        type filter hook prerouting priority raw; policy accept;
        iifname @bridges ip daddr 127.0.0.0/8 drop comment "the host's loopback is not for containers (route_localnet)"
        iifname @bridges ip6 daddr ::1 drop
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 127.0.0.0/8 return comment "loopback-bound ports are for the host only"
        fib daddr type local jump publish
    }
    chain output {
        type nat hook output priority -100; policy accept;
        fib daddr type local jump publish
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname vmap @fwd_out comment "first: an accept in fwd-in-BR (ct status dnat) would end the chain"
        oifname vmap @fwd_in
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 127.0.0.0/8 ct status dnat masquerade comment "host 127.0.0.1 -> published port"
        iifname vmap @nat_out
        oifname vmap @nat_out comment "hairpin bridged by br_netfilter: no input interface"
    }
}
table bridge qiao {
    set ports { type ifname; }
    set addrs4 { type ifname . ipv4_addr; }
    set addrs6 { type ifname . ipv6_addr; }
    chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        iifname @ports jump guard comment "a container's port: before br_netfilter, bridged and routed alike"
    }
    chain guard {
        iifname . ip saddr @addrs4 return
        iifname . arp saddr ip @addrs4 return
        arp saddr ip 0.0.0.0 return comment "ARP probe"
        ip6 saddr fe80::/10 return
        ip6 saddr :: meta l4proto ipv6-icmp return comment "DAD, MLD"
        iifname . ip6 saddr @addrs6 return
        drop comment "spoofed source, or not IP/ARP"
    }
}
EOF

# create-bridge: Create the bridge qiao0, the network's switch (docker0 in Docker), with a random
#   local MAC, and give it the gateway address 172.17.0.1/16; the kernel adds the route to the
#   subnet.
ip link add qiao0 mtu 1500 address 02:00:00:00:00:01 type bridge
ip link set qiao0 alias qiao:net:0101010101010101010101010101010101010101010101010101010101010101
ip addr add 172.17.0.1/16 dev qiao0
ip link set qiao0 up

# create-bridge: Two settings of qiao0: no IPv6 router advertisements, and route_localnet, so that
#   the host's 127.0.0.1 can reach published ports through it.
sysctl -qew net.ipv6.conf.qiao0.accept_ra=0
sysctl -qw net.ipv4.conf.qiao0.route_localnet=1

# enable-forwarding: Let the host route between its interfaces, the bridges included (IP
#   forwarding).
sysctl -qw net.ipv4.ip_forward=1

# add-firewall: NAT and isolation for qiao0, in one transaction: a forward chain that lets in only
#   replies, published ports and traffic from qiao0 itself; a masquerade rule for 172.17.0.0/16
#   leaving by another interface (NAT out).
nft -f - <<'EOF'
add chain inet qiao fwd-in-qiao0
add rule inet qiao fwd-in-qiao0 ct state established,related accept
add rule inet qiao fwd-in-qiao0 ct status dnat accept comment "published ports"
add rule inet qiao fwd-in-qiao0 iifname "qiao0" accept
add rule inet qiao fwd-in-qiao0 drop
add element inet qiao fwd_in { "qiao0" : jump fwd-in-qiao0 }
add chain inet qiao nat-out-qiao0
add rule inet qiao nat-out-qiao0 oifname "qiao0" ip saddr 172.17.0.0/16 ct status dnat masquerade comment "hairpin"
add element inet qiao nat_out { "qiao0" : jump nat-out-qiao0 }
add element inet qiao bridges { "qiao0" }
add rule inet qiao nat-out-qiao0 oifname != "qiao0" ip saddr 172.17.0.0/16 masquerade
EOF

# store: Record the result in qiaod's store (SQLite) in one transaction, last: a failure before this
#   leaves nothing behind.

# etcd: Take a lease of 15 s in etcd that qiaod keeps alive; this host's subnets and names hang on
#   it.

# create-sandbox: Make the container's sandbox: a new network namespace, kept alive by a bind mount
#   at TMP/root/run/netns/060606060606 (`ip netns add` keeps its own the same way under /run/netns).
#   It has only lo, down.
ip netns add 060606060606

# allocate-address: qiaod takes the lowest free IPv4 address of the network's subnet from its pool
#   (IPAM, in memory).

# add-guards: Anti-spoofing, before the veth exists so it never sends unguarded: veth0000001 may
#   send from 172.17.0.2 only (set elements in table bridge qiao, not rules).
nft -f - <<'EOF'
add element bridge qiao ports { "veth0000001" }
add element bridge qiao addrs4 { "veth0000001" . 172.17.0.2 }
EOF

# create-veth: Create the veth pair in one step: veth0000001 on the host, plugged into qiao0 and up,
#   and its other end inside the sandbox, already named eth0, with MAC 02:42:ac:11:00:02 (02:42 and
#   the IPv4 address) and MTU 1500.
ip link add veth0000001 mtu 1500 master qiao0 up type veth peer name eth0 address 02:42:ac:11:00:02 mtu 1500 netns 060606060606

# create-veth: Tag veth0000001 with its endpoint (qiao finds its own links by this alias) and put
#   the bridge port in hairpin mode, so a container can reach its own published port through the
#   host.
ip link set veth0000001 alias qiao:0707070707070707070707070707070707070707070707070707070707070707 type bridge_slave hairpin on

# configure-sandbox: Inside the sandbox: lo up, then eth0 gets its address 172.17.0.2/16 and goes
#   up.
ip -n 060606060606 link set lo up
ip -n 060606060606 addr add 172.17.0.2/16 dev eth0
ip -n 060606060606 link set eth0 up

# configure-sandbox: The container's default route: everything not on its own subnet goes to the
#   gateway 172.17.0.1, the bridge.
ip -n 060606060606 route add default via 172.17.0.1 proto static

# reserve-ports: qiaod binds a socket on each published host port and holds it, so no other program
#   can take the port; the traffic itself is forwarded by a map element, with no proxy process.

# publish-ports: Publish the ports: one element per mapping in the DNAT maps (0.0.0.0:8080/tcp ->
#   172.17.0.2:80); no proxy process.
nft 'add element inet qiao published_any { tcp . 8080 : 172.17.0.2 . 80 }'

# write-etc-files: Write the container's /etc/hosts, /etc/resolv.conf and /etc/hostname under qiao's
#   root (bind-mounted over the host's inside the container).

# spawn-process: Start the command through qiao's shim, in the network namespace of the sandbox,
#   with its own UTS and mount namespaces; what it does to the network is `ip netns exec
#   060606060606 python3 -m http.server 80`.

# store: Record the result in qiaod's store (SQLite) in one transaction, last: a failure before this
#   leaves nothing behind.
