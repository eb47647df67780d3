"""
Health settings as values: the active check of a backend or pool
(L{HealthCheck}) and passive outlier ejection (L{Outlier}).

They are parts of a L{lbproxy.model.config.Config} and of its backends;
L{lbproxy.health.checker} runs the checks and L{lbproxy.policy.pool} the
ejection.  Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HealthCheck:
    """
    How to probe a backend, in HAProxy's terms: every C{interval} seconds,
    C{rise} successes in a row mark it up and C{fall} failures mark it down.

    The defaults are also the check of a new pool (L{DEFAULT_HEALTH_CHECK}):
    a dead backend is down within about C{fall x interval} = 2 s, before a
    client pays for it, yet one lost probe does not take it out (nginx's
    C{max_fails=1} would); a connect a second per backend costs nothing.
    """

    type: str = "tcp"
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    path: str = "/"
    status: tuple[int, int] = (200, 399)
    send: str = ""
    expect: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
            "path": self.path,
            "status": f"{self.status[0]}-{self.status[1]}",
            "send": self.send,
            "expect": self.expect,
        }


#: The check of a config that does not say (a new seed, a document without
#: C{health_check}).  An explicit C{null}, as every config stored by the
#: first release has, keeps meaning no active checks.
DEFAULT_HEALTH_CHECK = HealthCheck()


@dataclass(frozen=True)
class Outlier:
    """
    Passive health: eject a backend after C{consecutive_failures} failures
    from real traffic, for C{base_ejection} seconds times the number of times
    it was ejected, never ejecting more than C{max_ejection_percent} of the
    pool.
    """

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 50

    def to_json(self) -> dict[str, Any]:
        return {
            "consecutive_failures": self.consecutive_failures,
            "base_ejection": self.base_ejection,
            "max_ejection": self.max_ejection,
            "max_ejection_percent": self.max_ejection_percent,
        }

