"""
The built-in strategies.  Each is also a plugin (see
C{twisted/plugins/lbproxy_strategies.py}), found the same way as a third
party's.
"""
