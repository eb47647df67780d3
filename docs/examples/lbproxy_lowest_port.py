"""
An example third-party strategy plugin for lbproxy.

Drop this file into a ``twisted/plugins/`` directory on the Python path
(for example ``<your package>/twisted/plugins/``, or a directory you add
to ``PYTHONPATH`` that contains ``twisted/plugins/``) and select it with
``--strategy lowest-port`` or ``PUT /api/v1/strategy``.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy.interfaces import IStrategy, IStrategyFactory


@implementer(IStrategy)
class LowestPort:
    """Always the candidate with the lowest port, unless it is busier than
    ``max_active``: then the next one."""

    name = "lowest-port"

    def __init__(self, max_active=100):
        self.max_active = max_active

    def choose(self, candidates, client):
        ordered = sorted(candidates, key=lambda c: c.port)
        for c in ordered:
            if c.stats.active < self.max_active:
                return c
        return ordered[0]


@implementer(IPlugin, IStrategyFactory)
class LowestPortFactory:
    name = "lowest-port"
    description = "The backend with the lowest port that is not too busy."
    # It picks by port, not by weight: say so, and the UI tells operators.
    uses_weights = False
    options_schema = {
        "type": "object",
        "properties": {"max_active": {"type": "integer", "minimum": 1}},
        "additionalProperties": False,
    }

    def build(self, options):
        return LowestPort(**options)


lowestPort = LowestPortFactory()
