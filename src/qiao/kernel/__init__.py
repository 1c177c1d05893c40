"""Kernel ports: everything that touches netlink, namespaces, sysctls and
nftables sits behind the small interfaces here, each with a stub, so the
engine above reads like the CNM diagrams and is tested without root."""
