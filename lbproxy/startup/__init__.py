"""
Start-up: from the command line to a running service tree.

L{lbproxy.startup.tap} declares C{twistd lbproxy}'s options (the plugin's
entry), L{lbproxy.startup.flags} checks them into the frozen
L{lbproxy.startup.spec.ProxySpec}, L{lbproxy.startup.open_files} fits the
open-files limit, and L{lbproxy.startup.assembly} builds the tree, rooted
at L{lbproxy.startup.binding} (every listener bound before any starts),
with graceful stop and takeover wired by L{lbproxy.startup.takeover_wiring}.
"""
