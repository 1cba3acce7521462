"""pptp-sidecar: a userspace PPTP VPN client that runs as a container sidecar."""

__version__ = "0.1.0"
