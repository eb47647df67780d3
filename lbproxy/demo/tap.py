"""
C{twistd lbproxy-demo}: lbproxy's own options and spec, plus the demo's,
composed: the demo backends listen first (so the seed pool has their
ports), then lbproxy is assembled from the spec with that pool, and the
demo's service runs the users against it.  The product knows nothing of
the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from twisted.application.service import MultiService

from lbproxy.startup import tap
from lbproxy.startup.spec import ProxySpec

#: The demo's proxy listens on loopback unless told otherwise: it is a demo.
DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"


@dataclass(frozen=True)
class DemoSpec:
    """
    @ivar proxy: lbproxy's spec, from lbproxy's flags.
    @ivar users: simulated users online at first.
    @ivar ports: the demo backends' ports (0: any free port).
    """

    proxy: ProxySpec
    users: int
    ports: tuple[int, ...]


class Options(tap.Options):
    longdesc = (
        "lbproxy with three demo backends and simulated users: open the "
        "dashboard it prints and watch the balancer work.  Takes every "
        "lbproxy option too."
    )
    optParameters = [
        ["demo-users", None, "20", "How many simulated users are online at first."],
        ["demo-ports", None, "0,0,0", "Ports of the demo backends (0: any free port)."],
    ]

    spec: DemoSpec  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.defaults["listen"] = self["listen"] = DEMO_LISTEN

    def postOptions(self) -> None:
        from lbproxy.demo.service import check_demo_options

        super().postOptions()
        users, ports = check_demo_options(self["demo-users"], self["demo-ports"], self["state-dir"])
        self.spec = DemoSpec(self.spec, users, ports)  # type: ignore[arg-type]


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """
    Start the demo backends, assemble lbproxy with them as its pool (and
    no access log: one line per demo request would bury the dashboard's
    address), and add the demo's service.
    """
    if reactor is None:
        from twisted.internet import reactor
    from lbproxy.startup.assembly import assemble
    from lbproxy.demo.service import DemoService, start_demo_backends
    from lbproxy.startup.open_files import fit_descriptors

    spec = options.spec
    proxy = fit_descriptors(spec.proxy)
    demo = start_demo_backends(spec, reactor)
    proxy = replace(proxy, seed=demo.seed(proxy.seed), settings=replace(proxy.settings, access_log=False))
    assembly = assemble(proxy, reactor)
    service = DemoService(demo, assembly, reactor)
    service.setName("demo")
    service.setServiceParent(assembly.top)
    assembly.top.bind()
    return assembly.top
