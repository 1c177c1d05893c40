"""``POST /qiao/explain``: what commands would do, changing nothing (``qiao explain``).

The body lists the operations a command makes, each with the very body the
real request would carry (``run`` is a create plus a start)::

    {"ops": [{"op": "run", "name": "web", "body": {<POST /containers/create body>}}], "fresh": false}

Each body goes through the same parsing (:mod:`qiao.daemon.wire`) and the
same engine methods as the real route, in a dry run (:mod:`qiao.explain`),
so a command that would fail fails here with the same answer (a ``run``
whose start fails says so: ``"Phase": "start"``, and its ``ExitCode``, as
the start route answers).  The reply is ``{"steps": [{"step", "kind", "why",
"commands"}, ...]}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from qiao import explain
from qiao.daemon import wire
from qiao.daemon.http import Request, route
from qiao.engine.containers import StartFailed
from qiao.engine.dryrun import DryEngine
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter, QiaoError

OpName = Literal["run", "start", "rm", "network-create", "network-rm", "network-connect", "network-disconnect", "network-prune"]


class ExplainOp(msgspec.Struct, forbid_unknown_fields=True):
    op: OpName
    target: str = ""  # the container (start, rm) or network (network rm|connect|disconnect) named
    name: str | None = None  # run --name
    force: bool = False  # rm -f
    body: dict[str, Any] | None = None  # the real request's body


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True):
    ops: list[ExplainOp]
    fresh: bool = False  # --from-scratch: on a host where qiao never ran


class StartRefused(Exception):
    """``run``'s start failed (not its create): the CLI reports that as ``run`` does."""

    def __init__(self, error: QiaoError):
        super().__init__(str(error))
        self.error = error


class Planned:
    """One operation, ready to run dry, and what it names (for a fresh host to bring up first)."""

    def __init__(self, op: ExplainOp):
        self.networks: list[str] = []
        self.containers: list[str] = []
        self.run: Callable[[DryEngine], Any]
        body = msgspec.json.encode(op.body or {})
        if op.op != "network-prune" and op.op != "network-create" and op.op != "run" and not op.target:
            raise InvalidParameter(f"explain: {op.op} needs a target")
        if op.op == "run":
            spec = wire.container_spec(op.name, body)
            mode = spec.network_mode
            if mode.startswith("container:"):
                self.containers.append(mode.split(":", 1)[1])
            elif mode not in ("host", "none"):
                self.networks.append(mode)
            self.networks += list(spec.networks)
            self.containers += [link.partition(":")[0] for link in spec.links]

            def run(dry: DryEngine) -> None:
                ctr = dry.containers.create(spec)
                try:
                    dry.containers.start(ctr.id)
                except QiaoError as exc:
                    raise StartRefused(exc) from None

            self.run = run
        elif op.op == "start":
            self.containers.append(op.target)
            self.run = lambda dry: dry.containers.start(op.target)
        elif op.op == "rm":
            self.containers.append(op.target)
            self.run = lambda dry: dry.containers.remove(op.target, op.force)
        elif op.op == "network-create":
            net_spec = wire.network_spec(body)
            self.run = lambda dry: dry.networks.create(net_spec)
        elif op.op == "network-rm":
            self.networks.append(op.target)
            self.run = lambda dry: dry.networks.remove(op.target)
        elif op.op == "network-connect":
            container, settings = wire.network_connect(body)
            self.networks.append(op.target)
            self.containers.append(container)
            self.run = lambda dry: dry.containers.connect(container, op.target, settings)
        elif op.op == "network-disconnect":
            container, force = wire.network_disconnect(body)
            self.networks.append(op.target)
            self.containers.append(container)
            self.run = lambda dry: dry.containers.disconnect(container, op.target, force)
        else:
            self.run = lambda dry: dry.networks.prune()

    def __call__(self, dry: DryEngine) -> None:
        self.run(dry)


class ExplainApi:
    """Route mixin of :class:`qiao.daemon.api.Api`."""

    engine: Engine

    @route("POST", "/qiao/explain")
    def explain(self, req: Request) -> tuple[int, Any]:
        ask: ExplainRequest = wire.decode(req.body, ExplainRequest)
        if not ask.ops:
            raise InvalidParameter("explain: no operation given")
        planned = [Planned(op) for op in ask.ops]
        networks = [ref for p in planned for ref in p.networks]
        containers = [ref for p in planned for ref in p.containers]
        try:
            return 200, {"steps": explain.explain(self.engine, planned, ask.fresh, networks, containers)}
        except StartRefused as refused:  # as POST /containers/{id}/start answers
            error = refused.error
            extra = {"ExitCode": error.exit_code} if isinstance(error, StartFailed) else {}
            return error.status, {"message": str(error), "Phase": "start", **extra}
