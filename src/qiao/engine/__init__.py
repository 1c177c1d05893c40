"""The CNM engine: networks, endpoints, sandboxes and containers."""
