from lbproxy.policy.strategies.builtin import (
    firstAvailable,
    leastConnections,
    leastResponseTime,
    powerOfTwo,
    random,
    roundRobin,
    roundRobinUnweighted,
    sourceHash,
    weightedRoundRobin,
)

__all__ = [
    "firstAvailable",
    "leastConnections",
    "leastResponseTime",
    "powerOfTwo",
    "random",
    "roundRobin",
    "roundRobinUnweighted",
    "sourceHash",
    "weightedRoundRobin",
]
