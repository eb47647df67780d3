"""
The data path: the connection session (every per-connection decision, no
I/O) and the relay engines that drive it over real sockets.
"""
