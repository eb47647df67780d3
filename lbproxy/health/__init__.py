"""
Active health checking of backends.
"""
