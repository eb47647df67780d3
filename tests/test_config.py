"""
The config document: parsing refuses bad input with a clear message, and
the change functions build a new version without touching the old one.
"""

from __future__ import annotations

import pytest

from lbproxy.model.config import (
    Config,
    ConfigError,
    StrategyChoice,
    add_backend,
    parse_backend_spec,
    parse_config,
    remove_backend,
    set_strategy,
    update_backend,
)


def base():
    return parse_config({
        "version": 4,
        "backends": [
            {"id": "b1", "host": "127.0.0.1", "port": 9001},
            {"id": "b2", "host": "::1", "port": 9002, "weight": 3, "proxy_protocol": "v2"},
        ],
        "strategy": {"name": "source-hash", "options": {"points": 50}},
    })


def test_round_trip_through_json():
    """A parsed document serialises back to an equal document."""
    c = base()
    assert parse_config(c.to_json()) == c
    assert c.backends[1].address == "[::1]:9002"


@pytest.mark.parametrize("body, message", [
    ({"host": "127.0.0.1"}, "needs both 'host' and 'port'"),
    ({"host": "127.0.0.1", "port": 0}, "port must be at least 1"),
    ({"host": "127.0.0.1", "port": 70000}, "port must be at most 65535"),
    ({"host": "127.0.0.1", "port": "80"}, "port must be an integer"),
    ({"host": "127.0.0.1", "port": True}, "port must be an integer"),
    ({"host": "no spaces allowed", "port": 80}, "neither an IP address nor a host name"),
    ({"host": "127.0.0.1", "port": 80, "weight": -1}, "weight must be at least 0"),
    ({"host": "127.0.0.1", "port": 80, "state": "down"}, "state must be one of up, draining, disabled"),
    ({"host": "127.0.0.1", "port": 80, "proxy_protocol": "v3"}, "proxy_protocol must be null"),
    ({"host": "127.0.0.1", "port": 80, "colour": "red"}, "unknown field"),
    ({"host": "127.0.0.1", "port": 9001}, "already exists as 'b1'"),
    ([], "must be a JSON object"),
])
def test_bad_backend_is_refused(body, message):
    """Each kind of bad backend body gives a ConfigError naming the field."""
    c = base()
    with pytest.raises(ConfigError, match=message):
        add_backend(c, body)


@pytest.mark.parametrize("check, message", [
    ({"interval": -1}, "interval must be greater than 0"),
    ({"interval": 1, "timeout": 2}, "must not be longer than its interval"),
    ({"rise": 0}, "rise must be at least 1"),
    ({"type": "http", "path": "health"}, "absolute HTTP path"),
    ({"type": "http", "status": "2xx"}, "is not a status"),
    ({"type": "http", "status": "399-200"}, "low to high"),
    ({"type": "send-expect"}, "expect must not be empty"),
    ({"type": "icmp"}, "type must be one of"),
])
def test_bad_health_check_is_refused(check, message):
    """Invalid check settings are refused with a clear message."""
    with pytest.raises(ConfigError, match=message):
        parse_config({"health_check": check})


def test_changes_build_new_versions():
    """Adding, updating, removing and switching strategy each give a new
    config one version up and leave the old one as it was."""
    c = base()
    c2, added = add_backend(c, {"host": "example.org", "port": 80, "weight": 2})
    assert added.id == "b3" and c2.version == 5 and len(c.backends) == 2
    c3, updated = update_backend(c2, "b3", {"weight": 7, "state": "draining"})
    assert (updated.weight, updated.state, c3.version) == (7, "draining", 6)
    assert c2.backend("b3").weight == 2
    c4 = remove_backend(c3, "b1")
    assert [b.id for b in c4.backends] == ["b2", "b3"]
    c5 = set_strategy(c4, StrategyChoice("random"))
    assert c5.strategy.name == "random" and c4.strategy.name == "source-hash"
    with pytest.raises(KeyError):
        remove_backend(c5, "b1")
    with pytest.raises(ConfigError, match="at least one of"):
        update_backend(c5, "b2", {})
    with pytest.raises(ConfigError, match="unknown field"):
        update_backend(c5, "b2", {"port": 1})


def test_options_are_read_only():
    """Strategy options in a snapshot cannot be changed in place."""
    c = base()
    with pytest.raises(TypeError):
        c.strategy.options["points"] = 1


def test_duplicates_in_a_document_are_refused():
    """A document listing one id or one address twice is refused."""
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config({"backends": [
            {"id": "a", "host": "127.0.0.1", "port": 1},
            {"id": "b", "host": "127.0.0.1", "port": 1},
        ]})
    with pytest.raises(ConfigError, match="used twice"):
        parse_config({"backends": [
            {"id": "a", "host": "127.0.0.1", "port": 1},
            {"id": "a", "host": "127.0.0.1", "port": 2},
        ]})


@pytest.mark.parametrize("spec, parsed", [
    ("127.0.0.1:80", {"host": "127.0.0.1", "port": 80}),
    ("h.example:81,weight=3,proxy=v1", {"host": "h.example", "port": 81, "weight": 3, "proxy_protocol": "v1"}),
    ("[::1]:82,maxconn=5", {"host": "::1", "port": 82, "max_connections": 5}),
])
def test_backend_spec(spec, parsed):
    """The command-line backend form parses into the JSON form."""
    assert parse_backend_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("127.0.0.1", "must look like HOST:PORT"),
    ("127.0.0.1:http", "is not a number"),
    ("127.0.0.1:80,weight=x", "weight 'x' is not a number"),
    ("127.0.0.1:80,colour=red", "unknown option 'colour'"),
    ("127.0.0.1:80,weight", "must look like key=value"),
])
def test_bad_backend_spec(spec, message):
    """A malformed command-line backend says what is wrong."""
    with pytest.raises(ConfigError, match=message):
        parse_backend_spec(spec)


def test_default_config_is_empty_round_robin():
    """An empty document is an empty pool with round-robin."""
    assert parse_config({}) == Config()
