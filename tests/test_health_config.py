"""
Check settings come from the command line, the API (C{update_settings},
C{update_backend}) and stored documents; invalid ones are refused with a
message naming the problem and change nothing, and valid ones reach the
running checker.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from lbproxy.control.controller import ConfigController
from lbproxy.control.store.memory import MemoryStore
from lbproxy.health.checker import HealthChecker
from lbproxy.model.changes import update_backend, update_settings
from lbproxy.model.checks import DEFAULT_HEALTH_CHECK, HealthCheck, Outlier
from lbproxy.model.config import Backend, Config
from lbproxy.model.errors import ConfigError
from lbproxy.model.parse import parse_config
from lbproxy.policy.balancer import Balancer
from lbproxy.policy.plugins import strategy_factories
from lbproxy.startup.tap import Options

BAD = [
    ({"interval": -1}, "interval must be at least 0.1, not -1"),
    ({"interval": 0}, "interval must be at least 0.1, not 0"),
    ({"interval": 1e-6}, "interval must be at least 0.1, not 1e-06"),
    ({"interval": 1e308}, "interval must be at most 3600, not 1e+308"),
    ({"interval": "2"}, "interval must be a number, not '2'"),
    ({"timeout": 0}, "timeout must be greater than 0, not 0"),
    ({"timeout": 1e308}, "timeout must be at most 3600, not 1e+308"),
    ({"fall": 101}, "fall must be at most 100, not 101"),
    ({"rise": 1.5}, "rise must be an integer, not 1.5"),
    ({"interval": 1, "timeout": 2}, "timeout (2.0) must not be longer than its interval (1.0)"),
    ({"rise": 0}, "rise must be at least 1, not 0"),
    ({"fall": 0}, "fall must be at least 1, not 0"),
    ({"type": "http", "path": "health"}, "path must be an absolute HTTP path"),
    ({"type": "http", "path": "/a b"}, "path must be an absolute HTTP path"),
    ({"type": "http", "status": "200-99"}, "is not a status like '200' or a range like '200-399'"),
    ({"type": "http", "status": "399-200"}, "must lie within 100-599, low to high"),
    ({"type": "http", "status": "600"}, "must lie within 100-599"),
    ({"type": "send-expect", "send": "PING"}, "expect must not be empty"),
    ({"type": "icmp"}, "type must be one of tcp, http, send-expect"),
]


def cli(*args):
    options = Options()
    options.parseOptions(["--backend", "127.0.0.1:9001", *args])
    return options.spec.seed


def seed():
    return Config(version=1, backends=(Backend("b1", "127.0.0.1", 9001),),
                  health_check=HealthCheck(interval=2.0, timeout=1.0))


@pytest.mark.parametrize("body,message", BAD)
def test_update_settings_refuses_bad_checks(body, message):
    """A bad pool-wide check through the API's settings change raises
    L{ConfigError} with a message naming the field and the problem."""
    with pytest.raises(ConfigError) as e:
        update_settings(seed(), {"health_check": body})
    assert message in str(e.value)
    assert "health_check." in str(e.value)


@pytest.mark.parametrize("body,message", BAD)
def test_update_backend_refuses_bad_checks(body, message):
    """A bad per-backend check override is refused the same way."""
    with pytest.raises(ConfigError) as e:
        update_backend(seed(), "b1", {"health_check": body})
    assert message in str(e.value)


def test_api_refuses_unbounded_check_interval_with_400(factories):
    """PUT /api/v1/settings with an interval of 1e-6 s (which would spin a
    core) or 1e308 s is a 400 naming the field, and nothing changes."""
    from tests.webtools import Admin

    admin = Admin(factories)
    for interval in (1e-6, 1e308):
        r = admin.request("PUT", "/api/v1/settings", {"health_check": {"interval": interval}})
        assert r.code == 400
        assert "body.health_check.interval must be at" in r.json["error"]
    assert admin.balancer.config.health_check is None and admin.balancer.config.version == 1
    r = admin.request("PUT", "/api/v1/settings", {"health_check": {"interval": 0.1, "timeout": 0.05}})
    assert r.code == 200 and r.json["health_check"]["interval"] == 0.1


def test_bad_document_from_a_store_is_refused():
    """A stored or imported document with a bad check fails to parse, so it
    can never be applied."""
    with pytest.raises(ConfigError, match="rise must be at least 1"):
        parse_config({"backends": [], "health_check": {"rise": 0}})


@pytest.mark.parametrize("args,message", [
    (["--check", "tcp", "--check-interval", "-1"], "--check-interval must be at least 0.1, not -1.0"),
    (["--check", "tcp", "--check-interval", "1e-6"], "--check-interval must be at least 0.1, not 1e-06"),
    (["--check", "tcp", "--check-interval", "1e308"], "--check-interval must be at most 3600, not 1e+308"),
    (["--check", "tcp", "--check-interval", "inf"], "--check-interval must be a finite number"),
    (["--check", "tcp", "--check-timeout", "0"], "--check-timeout must be greater than 0, not 0.0"),
    (["--check", "tcp", "--rise", "1000"], "--rise must be at most 100, not 1000"),
    (["--check", "tcp", "--check-interval", "1", "--check-timeout", "2"],
     "--check-timeout (2.0) must not be longer than its interval (1.0)"),
    (["--check", "tcp", "--rise", "0"], "--rise must be at least 1, not 0"),
    (["--check", "tcp", "--fall", "two"], "--fall must be an integer, not 'two'"),
    (["--check", "http", "--check-path", "health"], "--check-path must be an absolute HTTP path"),
    (["--check", "http", "--check-status", "2xx"], "--check-status '2xx' is not a status"),
    (["--check", "ping"], "--check must be one of tcp, http, send-expect or none, not 'ping'"),
    (["--check-path", "/h"], "--check-path needs --check http (the default check is tcp)"),
    (["--check-expect", "x"], "--check-expect needs --check send-expect (the default check is tcp)"),
    (["--check", "tcp", "--check-expect", "x"], "--check-expect needs --check send-expect (not --check tcp)"),
    (["--check", "http", "--check-send", "x"], "--check-send needs --check send-expect (not --check http)"),
    (["--check", "send-expect", "--check-expect", "x", "--check-path", "/h"],
     "--check-path needs --check http (not --check send-expect)"),
    (["--check", "none", "--fall", "3"], "--fall makes no sense with --check none"),
    (["--check", "send-expect", "--check-send", "x"], "--check-expect must not be empty"),
    (["--check", "send-expect", "--check-expect", "\\x4"], "--check-expect '\\\\x4' has a malformed escape"),
    (["--slow-start", "-1"], "--slow-start must be at least 0, not -1.0"),
    (["--slow-start", "1e308"], "--slow-start must be at most 86400"),
    (["--drain-timeout", "0"], "--drain-timeout must be greater than 0"),
    (["--outlier-failures", "-2"], "--outlier-failures must be at least 1"),
    (["--outlier-max-percent", "101"], "--outlier-max-percent must be at most 100"),
    (["--outlier-ejection", "60", "--outlier-max-ejection", "30"], "--outlier-max-ejection (30.0) must not be shorter than --outlier-ejection (60.0)"),
])
def test_cli_refuses_bad_settings_with_usage_error(args, message):
    """Each invalid lifecycle flag is a L{usage.UsageError} naming the flag."""
    with pytest.raises(usage.UsageError) as e:
        cli(*args)
    assert message in str(e.value)
    assert "\n" not in str(e.value) and "cli." not in str(e.value)


def test_cli_settings_reach_the_seed_config():
    """Valid flags become the pool-wide check, outlier policy, slow start
    and drain timeout of the seed config, escapes decoded."""
    config = cli(
        "--check", "send-expect", "--check-send", "PING\\r\\n", "--check-expect", "+PONG",
        "--check-interval", "5", "--check-timeout", "2", "--rise", "3", "--fall", "4",
        "--outlier-failures", "7", "--outlier-ejection", "10", "--outlier-max-ejection", "60",
        "--outlier-max-percent", "30", "--slow-start", "20", "--drain-timeout", "15",
    )
    assert config.health_check == HealthCheck(
        type="send-expect", interval=5.0, timeout=2.0, rise=3, fall=4, send="PING\r\n", expect="+PONG",
    )
    assert config.outlier == Outlier(7, 10.0, 60.0, 30)
    assert (config.slow_start, config.drain_timeout) == (20.0, 15.0)
    http = cli("--check", "http", "--check-path", "/healthz", "--check-status", "200-204")
    assert (http.health_check.path, http.health_check.status) == ("/healthz", (200, 204))


def test_cli_defaults_check_tcp_and_keep_outlier_on():
    """Without flags every backend gets a tcp check a second (down after 2
    failures, up after 2 passes), passive ejection uses the default
    policy, no slow start and no drain timeout; --check none turns active
    checks off, outlier failures 0 passive ejection; the interval and
    rise/fall flags alone tune the default tcp check."""
    config = cli()
    assert config.health_check == DEFAULT_HEALTH_CHECK
    assert (config.health_check.type, config.health_check.interval) == ("tcp", 1.0)
    assert (config.health_check.fall, config.health_check.rise) == (2, 2)
    assert config.outlier == Outlier()
    assert (config.slow_start, config.drain_timeout) == (0.0, None)
    assert cli("--check", "none").health_check is None
    assert cli("--outlier-failures", "0").outlier is None
    tuned = cli("--check-interval", "3", "--fall", "4").health_check
    assert (tuned.type, tuned.interval, tuned.fall) == ("tcp", 3.0, 4)


def test_document_without_a_check_gets_the_default_and_null_keeps_none():
    """A config document that does not say gets the default tcp check; an
    explicit null (every config stored by the first release has one) keeps
    meaning no active checks, so an upgrade changes no stored pool."""
    assert parse_config({"backends": []}).health_check == DEFAULT_HEALTH_CHECK
    assert parse_config({"backends": [], "health_check": None}).health_check is None
    old_release = Config(version=4, backends=(Backend("b1", "127.0.0.1", 9001),)).to_json()
    assert old_release["health_check"] is None
    assert parse_config(old_release).health_check is None


def test_refused_api_change_changes_nothing_and_a_good_one_reaches_the_checker():
    """Through the controller, a bad check is refused and leaves the store,
    the balancer and the checker's loops as they were; a good one is saved,
    applied and restarts the loops with the new interval."""
    reactor = MemoryReactorClock()
    config = seed()
    store = MemoryStore(config)
    balancer = Balancer(config, strategy_factories(), reactor=reactor)
    controller = ConfigController(balancer, store)
    checker = HealthChecker(balancer, reactor=reactor, controller=controller)
    checker.startService()
    loop = checker.loops["b1"]

    failures = []
    d = controller.change(lambda c: (update_settings(c, {"health_check": {"interval": 1, "timeout": 3}}), None))
    d.addErrback(failures.append)
    assert failures and failures[0].check(ConfigError)
    assert store.config is config and balancer.config is config
    assert checker.loops["b1"] is loop

    results = []
    controller.change(
        lambda c: (update_settings(c, {"health_check": {"interval": 4, "timeout": 1}}), None)
    ).addCallback(results.append)
    assert results and store.config.main().health_check.interval == 4.0
    assert checker.loops["b1"].check.interval == 4.0
    checker.stopService()


def test_make_service_runs_the_checker_over_the_balancer():
    """The assembly puts a L{HealthChecker} named C{health} over the
    balancer in the service tree; started, it probes each backend with the
    check from the command line."""
    options = Options()
    options.parseOptions([
        "--backend", "127.0.0.1:9001", "--backend", "127.0.0.1:9002",
        "--listen", "tcp:0", "--admin", "tcp:0:interface=127.0.0.1",
        "--check", "tcp", "--check-interval", "3", "--check-timeout", "1",
    ])
    from lbproxy.startup.assembly import assemble

    reactor = MemoryReactorClock()
    assembly = assemble(options.spec, reactor)
    top = assembly.top
    top.startService()
    checker = top.getServiceNamed("health").checkers["default"]
    assert isinstance(checker, HealthChecker) and checker.balancer is assembly.balancer
    try:
        reactor.advance(0)
        reactor.advance(1.5)
        probed = [(c[0], c[1]) for c in reactor.tcpClients]
        assert probed == [("127.0.0.1", 9001), ("127.0.0.1", 9002)]
    finally:
        top.stopService()
