"""
Open-files limit at startup.

Each relayed connection holds two descriptors (client and backend).  A
limit too low for C{--max-connections} shows only under load, as accept
errors; so lbproxy raises its soft C{RLIMIT_NOFILE} to the hard limit at
start, and then:

 - C{--max-connections} given and it does not fit: refuse to start, with
   one line naming the numbers (better than failing at the peak);
 - not given: the default (10000) is lowered to what fits, and the log
   says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.logger import Logger

log = Logger()

#: Descriptors kept for everything but relayed connections: admin clients,
#: health checks, the store, the log, the reactor's own, and spare.
RESERVED = 128


def needed(max_connections: int, backends: int = 0) -> int:
    """
    Descriptors lbproxy needs for C{max_connections} at once.
    """
    return 2 * max_connections + backends + RESERVED


def raise_soft_limit(resource: Any = None) -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (or to
    C{fs.nr_open} when the hard limit is unlimited).

    @return: the soft limit now in force.
    """
    if resource is None:
        import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:
            log.warn("cannot raise the open-files limit from {soft} to {target}: {e}", soft=soft, target=target, e=e)
    return soft


def fit_descriptors(spec: Any, resource: Any = None) -> Any:
    """
    Raise the limit, then check the spec's C{max_connections} against it.

    @param spec: a L{lbproxy.startup.spec.ProxySpec}.
    @return: the spec, with a lower default C{max_connections} if needed.
    @raise SystemExit: if the given C{--max-connections} does not fit.
    """
    limit = raise_soft_limit(resource)
    settings = spec.settings
    backends = sum(len(s.backends) for s in spec.seed_document.services)
    want = needed(settings.max_connections, backends)
    if want <= limit:
        return spec
    if spec.max_connections_given:
        raise SystemExit(
            f"lbproxy: --max-connections {settings.max_connections} needs {want} open files "
            f"(2 per connection + {RESERVED + backends}) but the limit is {limit}; "
            f"lower --max-connections or raise the limit (ulimit -n, LimitNOFILE=)"
        )
    fits = max(1, (limit - RESERVED - backends) // 2)
    log.warn(
        "the open-files limit is {limit}: --max-connections is {fits}, not {default} "
        "(raise the limit, e.g. ulimit -n or LimitNOFILE=, for more)",
        limit=limit, fits=fits, default=settings.max_connections,
    )
    return replace(spec, settings=replace(settings, max_connections=fits))
