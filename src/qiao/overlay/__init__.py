"""Multi-host overlay networks: VXLAN between hosts, per-host subnets leased
from etcd, as flannel's vxlan backend does (see docs/overlay.md)."""
