"""
The access log: one line per finished client connection.

L{lbproxy.accesslog.log} batches the lines off the connection path and
writes them from a thread; L{lbproxy.accesslog.sinks} are where they go (a
file, standard output, the local syslog socket).
"""
