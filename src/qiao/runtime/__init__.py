"""Container processes: the shim that enters namespaces and execs the
command, and the daemon-side supervisor that starts and watches shims."""
