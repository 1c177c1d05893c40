"""qiao: Docker-style container networking on the Linux kernel's own parts."""

__version__ = "0.1.0"
