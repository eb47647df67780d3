"""
The control plane: the config controller (lock, make durable, apply), the
stores, cluster membership and the worker processes.
"""
