"""
The demo: named backends, simulated users and lbproxy in one process, so
that one command shows the balancer at work.

L{lbproxy.demo.backend} is a tiny HTTP server that can be taken offline
(its listener really closes); L{lbproxy.demo.users} is a population of
users who come and go and open connections through the proxy;
L{lbproxy.demo.service} starts both beside lbproxy; L{lbproxy.demo.api}
lets the web UI drive them.
"""
