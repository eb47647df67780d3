"""
Config stores: where the config document is made durable.
"""
