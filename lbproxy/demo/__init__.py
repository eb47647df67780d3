"""
The demo: named backends, simulated users and lbproxy in one process, so
that one command shows the balancer at work.

L{lbproxy.demo.backend} is a tiny HTTP server that can be taken offline
(its listener really closes); L{lbproxy.demo.users} is a population of
users who come and go and open connections through the proxy;
L{lbproxy.demo.service} runs both beside lbproxy; L{lbproxy.demo.tap} is
the C{twistd lbproxy-demo} plugin that composes them with lbproxy's own
assembly; L{lbproxy.demo.api} lets the web UI drive them.  Nothing in the
product imports this package.
"""
