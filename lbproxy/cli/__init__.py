"""
C{lbproxyctl}: the command-line client of the admin API.

Kept apart from the server: it imports only the standard library (and, for
C{apply} and C{diff}, lbproxy's own model to read a C{--config} file), so
C{lbproxyctl --help} starts fast and the CLI needs no reactor.
"""
