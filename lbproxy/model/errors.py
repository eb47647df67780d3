"""
The errors a config change is refused with.

They are raised by the model (bad input), the controller (a stale version)
and the stores (nothing made durable), and mapped to API answers by
L{lbproxy.web.errors}; one module so that none of those has to import
another just to name an error.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """
    A config document, or a change to one, is invalid.  The message says
    what is wrong, in words an operator can act on.
    """


class VersionConflict(Exception):
    """
    A change was based on a config version that is no longer current.
    """

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"config version {expected} is stale; the current version is {current}"
        )
        self.expected = expected
        self.current = current


class StoreError(Exception):
    """
    The config store could not make a change durable; nothing was applied.
    """

