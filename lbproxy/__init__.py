"""
lbproxy: a TCP (L4) load balancer and reverse proxy on Twisted.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
