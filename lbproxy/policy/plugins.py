"""
Finding strategy plugins and building strategies from them.

L{twisted.plugin.getPlugins} only logs a plugin module that fails to import;
here a plugin object that does not provide L{IStrategyFactory} properly, or
reuses a name, is refused with an error log instead of half-working.
"""

from __future__ import annotations

from typing import Any, Mapping

import jsonschema
from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from lbproxy.interfaces import IStrategy, IStrategyFactory
from lbproxy.model.config import StrategyChoice
from lbproxy.model.errors import ConfigError

log = Logger()


def strategy_factories(package: Any = None) -> dict[str, IStrategyFactory]:
    """
    Every strategy plugin on the Python path, by name.

    @param package: the plugin package to search; C{twisted.plugins} unless
        given.
    """
    if package is None:
        import twisted.plugins as package
    found: dict[str, IStrategyFactory] = {}
    for factory in getPlugins(IStrategyFactory, package):
        try:
            verifyObject(IStrategyFactory, factory)
            jsonschema.Draft202012Validator.check_schema(factory.options_schema)
            name = factory.name
            if not isinstance(name, str) or not name:
                raise Invalid("name must be a non-empty string")
        except Exception as e:
            log.error("ignoring invalid strategy plugin {plugin!r}: {error}", plugin=factory, error=e)
            continue
        if name in found:
            log.error(
                "ignoring strategy plugin {plugin!r}: the name {name!r} is taken by {other!r}",
                plugin=factory, name=name, other=found[name],
            )
            continue
        found[name] = factory
    return found


def uses_weights(factory: IStrategyFactory) -> bool:
    """
    Whether the strategy's choices depend on backend weights.  A factory
    says so with an optional C{uses_weights} attribute (C{False} for, say,
    fill-in-order); without one it is assumed to use them.
    """
    return getattr(factory, "uses_weights", True) is not False


def validate_options(factory: IStrategyFactory, options: Mapping[str, Any]) -> dict[str, Any]:
    plain = _plain(options)
    try:
        jsonschema.validate(plain, factory.options_schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise ConfigError(
            f"invalid options for strategy {factory.name!r}"
            + (f" at {where!r}" if where else "")
            + f": {e.message}"
        ) from None
    return plain


def build_strategy(
    choice: StrategyChoice, factories: Mapping[str, IStrategyFactory]
) -> IStrategy:
    """
    Build the strategy an operator chose, or say clearly why not.

    @raise ConfigError: unknown name, options that do not fit the schema, or
        a plugin whose C{build} fails or returns something that is not an
        L{IStrategy}.
    """
    factory = factories.get(choice.name)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(f"unknown strategy {choice.name!r}; known strategies: {known}")
    options = validate_options(factory, choice.options)
    try:
        strategy = factory.build(options)
        verifyObject(IStrategy, strategy)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"strategy {choice.name!r} could not be built: {e}") from None
    return strategy


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
