"""qiao as a network and IPAM plugin of dockerd (Docker's remote driver
protocol): Docker users keep Docker for images and containers and get
qiao's networks, its published ports (map elements, no docker-proxy) and
its overlay across hosts without swarm.

``qiaod --docker-plugin /run/docker/plugins/qiao.sock`` serves the protocol
on a second socket; dockerd finds it there and the file name names the
driver (``docker network create -d qiao --ipam-driver qiao``).
:mod:`qiao.docker_plugin.service` translates each call into the engine
core: a Docker network is a qiao network, a Docker endpoint an attachment
whose interface dockerd moves into its sandbox itself.
"""
