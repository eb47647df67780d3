"""
The config document: parsing refuses bad input with a clear message, and
the change functions build a new version without touching the old one.
"""

from __future__ import annotations

import pytest

from lbproxy.model.changes import add_backend, remove_backend, set_strategy, update_backend
from lbproxy.model.config import Config, StrategyChoice
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import parse_backend_spec, parse_config


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
    ({"host": "127.0.0.1"}, "needs 'port'"),
    ({"port": 80}, "needs 'host'"),
    ({}, "needs both 'host' and 'port'"),
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
    ({"interval": -1}, "interval must be at least 0.1"),
    ({"interval": 3601}, "interval must be at most 3600"),
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
    ("[::1:80", "an IPv6 address goes in brackets"),
    ("::1]:80", "an IPv6 address goes in brackets"),
    ("::1:80", "an IPv6 address goes in brackets"),
])
def test_bad_backend_spec(spec, message):
    """A malformed command-line backend says what is wrong."""
    with pytest.raises(ConfigError, match=message):
        parse_backend_spec(spec)


def test_default_config_is_empty_round_robin():
    """An empty document is an empty pool with round-robin and the default
    tcp check (a document that does not say gets it; Config() in code
    has none)."""
    from lbproxy.model.checks import DEFAULT_HEALTH_CHECK

    assert parse_config({}) == Config(health_check=DEFAULT_HEALTH_CHECK)


@pytest.mark.parametrize("host, stored", [
    ("127.000.000.001", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("::0001", "::1"),
    ("localhost", "localhost"),
    ("Web-1.Example.org", "Web-1.Example.org"),
])
def test_ip_literals_are_stored_canonical_and_names_as_given(host, stored):
    """An IP literal is stored the way the resolver reads it; a host name
    is kept as written."""
    c, b = add_backend(Config(), {"host": host, "port": 80})
    assert b.host == stored


@pytest.mark.parametrize("host, message", [
    ("010.0.0.1", "ambiguous: resolvers read a leading 0 as octal (8.0.0.1), not decimal (10.0.0.1)"),
    ("08.1.2.3", "looks like an IPv4 address but is not one"),
    ("1.2.3.4.5", "neither an IP address nor a host name"),
])
def test_ambiguous_or_broken_ip_literals_are_refused(host, message):
    """A dotted number that resolvers would read differently from a person,
    or not as an address at all, is refused, saying why."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_backend(Config(), {"host": host, "port": 80})


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "127.000.000.001", "::ffff:127.0.0.1", "2130706433"])
def test_another_spelling_of_an_address_is_a_duplicate(host):
    """localhost, 127.000.000.001 and ::ffff:127.0.0.1 are the backend at
    127.0.0.1 already there: refused, naming it and its address."""
    c = parse_config({"backends": [{"id": "b1", "host": "127.0.0.1", "port": 21001}]})
    with pytest.raises(ConfigError) as e:
        add_backend(c, {"host": host, "port": 21001})
    assert "already exists as 'b1'" in str(e.value)
    assert "127.0.0.1:21001" in str(e.value)
    named = parse_config({"backends": [{"id": "w", "host": "Web.example", "port": 1}]})
    with pytest.raises(ConfigError, match="already exists as 'w'"):
        add_backend(named, {"host": "web.example.", "port": 1})
    assert add_backend(c, {"host": "127.0.0.2", "port": 21001})[1].host == "127.0.0.2"


def test_document_with_two_spellings_of_one_address_is_refused():
    """In an imported document, the second spelling of an address names
    the backend it duplicates."""
    with pytest.raises(ConfigError) as e:
        parse_config({"backends": [
            {"id": "a", "host": "127.0.0.1", "port": 1},
            {"id": "b", "host": "localhost", "port": 1},
        ]})
    assert str(e.value) == (
        "backend 'b' (localhost:1) is listed twice: it is the same address as backend 'a' (127.0.0.1:1)"
    )


@pytest.mark.parametrize("doc, message", [
    ({"slow_start": 1e308}, "config.slow_start must be at most 86400, not 1e+308"),
    ({"drain_timeout": 0}, "config.drain_timeout must be greater than 0, not 0"),
    ({"outlier": {"base_ejection": -1}}, "config.outlier.base_ejection must be greater than 0, not -1"),
    ({"backends": [{"host": "127.0.0.1", "port": 1}]}, "config.backends[0] needs 'id'"),
    ({"backends": [{"id": "a", "host": "127.0.0.1", "port": 1, "max_connections": 0}]},
     "config.backends[0].max_connections must be at least 1, not 0"),
    ({"strategy": {"name": ""}}, "config.strategy.name must not be empty"),
    ({"colour": 1}, "config: unknown field(s) 'colour'; the fields are version, backends"),
    ({"slow_start": float("nan")}, "config.slow_start must be a finite number"),
    ({"slow_start": 10 ** 400}, "config.slow_start must be a finite number"),
])
def test_schema_messages_name_the_field(doc, message):
    """Every rule of the schema gives a message that names the field by
    its path and says what it must be."""
    with pytest.raises(ConfigError) as e:
        parse_config(doc)
    assert message in str(e.value)


def test_whole_numbers_written_as_floats_are_integers():
    """JSON has one number type: a port of 80.0 is port 80 (an int), 80.5
    is refused."""
    c, b = add_backend(Config(), {"host": "127.0.0.1", "port": 80.0, "weight": 2.0})
    assert (b.port, b.weight) == (80, 2) and type(b.port) is int
    with pytest.raises(ConfigError, match="port must be an integer, not 80.5"):
        add_backend(Config(), {"host": "127.0.0.1", "port": 80.5})


def test_command_line_refuses_two_spellings_of_one_backend():
    """--backend localhost:21001 and --backend 127.0.0.1:21001 are one
    backend: a one-line usage error naming both."""
    from twisted.python import usage

    from lbproxy.startup.tap import Options

    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["--backend", "localhost:21001", "--backend", "127.000.000.001:21001"])
    assert str(e.value) == (
        "backend 'b2' (127.0.0.1:21001) is listed twice: it is the same address as backend 'b1' (localhost:21001)"
    )
