"""Seeing qiao's network: the live picture (:mod:`.topology`) and why a
packet does or does not get through (:mod:`.tracer`, :mod:`.verdicts`).

Daemon side: these read the engine's records and the kernel (through
:mod:`qiao.kernel.inventory` and :mod:`qiao.kernel.tracing`) and answer with
plain JSON-able data; the CLI only prints it (:mod:`qiao.cli.netview`).
"""
