"""The plugin socket's one route: ``POST /<Interface>.<Call>`` with a JSON
body, as dockerd's plugin client sends it (``Plugin.Activate``,
``NetworkDriver.*``, ``IpamDriver.*``); served by qiaod's HTTP server."""

from __future__ import annotations

from typing import Any

from qiao.daemon.http import Request, route
from qiao.docker_plugin.service import DockerPlugin


class PluginApi:
    def __init__(self, plugin: DockerPlugin):
        self.plugin = plugin

    @route("POST", r"/(?P<call>(?:Plugin|NetworkDriver|IpamDriver)\.[A-Za-z]+)")
    def call(self, req: Request, call: str) -> tuple[int, Any]:
        return self.plugin.call(call, req.body)
