"""
Policy with no I/O: the balancer per pool, its live pool state and the
strategy plugins that choose a backend.
"""
