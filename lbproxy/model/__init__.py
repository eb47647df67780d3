"""
The config document: immutable values, their parsers and schemas.
"""
