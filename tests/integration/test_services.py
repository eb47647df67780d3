"""
Many services in one lbproxy, over real loopback sockets: each service
reaches only its own pool; a service added through the API listens at
once; a taken port refuses the change with nothing stored; a removed
service stops listening and drains (or, forced, closes) its connections;
a repeated --listen and a --config file of services work as the assembly
builds them.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from lbproxy.startup.assembly import assemble
from lbproxy.control.store.file import FileStore
from lbproxy.startup.tap import Options
from tests.integration import relay_harness as h

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
FIXTURE = Path(__file__).parent.parent / "fixtures" / "config-v1-single-pool.json"
LOCAL = "tcp:0:interface=127.0.0.1"


class Named(protocol.Protocol):
    """A backend that says its name, then echoes."""

    def connectionMade(self):
        self.transport.write(self.factory.name + b"\n")

    def dataReceived(self, data):
        self.transport.write(data)


def backend(name: bytes):
    factory = protocol.ServerFactory.forProtocol(Named)
    factory.name = name
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


class Client(protocol.Protocol):
    """Collects what it receives; C{first} fires with the first line, C{closed} at the end."""

    def __init__(self):
        self.got = b""
        self.first = defer.Deferred()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.got += data
        if b"\n" in self.got and not self.first.called:
            self.first.callback(self.got.split(b"\n", 1)[0])

    def connectionLost(self, reason):
        if not self.first.called:
            self.first.callback(None)
        self.closed.callback(self.got)


async def connect(port: int) -> Client:
    client = Client()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5).connect(
        protocol.Factory.forProtocol(lambda: client)
    )
    return client


async def first_line(port: int) -> bytes:
    client = await connect(port)
    line = await client.first
    client.transport.loseConnection()
    await client.closed
    return line


def until(predicate, timeout=10.0):
    return h.until(predicate, timeout)


def port_of(assembly, service: str, index: int = 0) -> int:
    return assembly.listeners.addresses(service)[index][1]


ENGINES = pytest.mark.parametrize("engine", ["twisted", "fast"])


def start(*args: str, engine: str = "twisted"):
    options = Options()
    options.parseOptions(["--admin", LOCAL, "--engine", engine, "--no-access-log", *args])
    assembly = assemble(options.spec, reactor)
    assembly.top.bind()
    assembly.top.startService()
    url = "http://127.0.0.1:%d/api/v1" % assembly.admin_listener.address()[1]
    return assembly, url


async def call(method: str, url: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    response = await treq.request(method, url, data=data, headers=JSON if data else None, persistent=False)
    return response.code, json.loads(await response.content())


def two_services(tmp_path, pg_port: int, redis_port: int) -> Path:
    path = tmp_path / "services.toml"
    path.write_text(f"""
# PostgreSQL and Redis through one lbproxy
[services.postgres]
listen = ["{LOCAL}"]
strategy = "least-connections"
backends = [{{ host = "127.0.0.1", port = {pg_port} }}]

[services.redis]
listen = ["{LOCAL}"]
backends = [{{ host = "127.0.0.1", port = {redis_port} }}]
""")
    return path


@ENGINES
@pytest_twisted.ensureDeferred
async def test_two_services_from_a_config_file_each_reach_only_their_pool(tmp_path, engine):
    """
    A --config file of two services listens on two ports; each port's
    connections reach only its own service's backend; a third service
    POSTed through the API accepts connections within a second of the
    answer, and GET /services lists all three.
    """
    pg, redis, extra = backend(b"pg"), backend(b"redis"), backend(b"extra")
    assembly, url = start("--config", str(two_services(tmp_path, pg.getHost().port, redis.getHost().port)),
                          engine=engine)
    try:
        assert sorted(assembly.table.balancers) == ["postgres", "redis"]
        for _ in range(3):
            assert await first_line(port_of(assembly, "postgres")) == b"pg"
            assert await first_line(port_of(assembly, "redis")) == b"redis"
        assert assembly.table.balancer("postgres").strategy.name == "least-connections"

        code, body = await call("POST", url + "/services", {
            "name": "extra", "listen": [LOCAL],
            "backends": [{"host": "127.0.0.1", "port": extra.getHost().port}],
            "strategy": {"name": "round-robin"},
        })
        assert code == 201, body
        added = reactor.seconds()
        assert len(body["listening"]) == 1
        port = int(body["listening"][0].rsplit(":", 1)[1])
        assert await first_line(port) == b"extra"
        assert reactor.seconds() - added < 1.0

        code, listed = await call("GET", url + "/services")
        assert code == 200
        assert [s["name"] for s in listed["services"]] == ["postgres", "redis", "extra"]
        code, backends = await call("GET", url + "/services/redis/backends")
        assert code == 200 and [b["port"] for b in backends["backends"]] == [redis.getHost().port]
        code, _ = await call("GET", url + "/services/nope/backends")
        assert code == 404
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        for p in (pg, redis, extra):
            await p.stopListening()


@pytest_twisted.ensureDeferred
async def test_taken_port_is_409_and_an_address_not_here_is_400_with_nothing_stored(tmp_path):
    """
    Adding a service on a port another socket holds answers 409, and on an
    address not on this host or a host name 400, each with a message; the stored document
    and the services in force are unchanged, and no listener is left bound.
    """
    pg = backend(b"pg")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    state = tmp_path / "state"
    assembly, url = start("--state-dir", str(state), "--listen", LOCAL,
                          "--backend", f"127.0.0.1:{pg.getHost().port}")
    try:
        code, _ = await call("POST", url + "/backends", {"host": "127.0.0.1", "port": 9})
        assert code == 201
        before = (state / "config.json").read_bytes()
        version = assembly.controller.document.version
        body = {"name": "redis", "listen": [LOCAL, f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"],
                "backends": [{"host": "127.0.0.1", "port": 6379}], "strategy": {"name": "round-robin"}}
        code, answer = await call("POST", url + "/services", body)
        assert code == 409, answer
        assert "Address already in use" in answer["error"] and "redis" in answer["error"]
        body["listen"] = ["tcp:0:interface=192.0.2.1"]
        code, answer = await call("POST", url + "/services", body)
        assert code == 400, answer
        assert "192.0.2.1" in answer["error"]
        # A host name: every bind would look it up, blocking the reactor.
        body["listen"] = ["tcp:0:interface=localhost"]
        code, answer = await call("POST", url + "/services", body)
        assert code == 400 and "interface= must be an IP address, not 'localhost'" in answer["error"], answer
        assert (state / "config.json").read_bytes() == before
        assert assembly.controller.document.version == version
        assert list(assembly.table.balancers) == ["default"]
        assert len(assembly.listeners.listeners) == 1
        assert await first_line(port_of(assembly, "default")) == b"pg"
    finally:
        taken.close()
        await defer.maybeDeferred(assembly.top.stopService)
        await pg.stopListening()


@ENGINES
@pytest_twisted.ensureDeferred
async def test_deleted_service_stops_listening_and_drains_or_force_closes(tmp_path, engine):
    """
    DELETE of a service stops its listener at once (a new connect is
    refused) while its open connection keeps relaying until it ends
    (state removing, then the balancer is forgotten); with ?force=true its
    open connection is closed at once.
    """
    pg, redis = backend(b"pg"), backend(b"redis")
    assembly, url = start("--config", str(two_services(tmp_path, pg.getHost().port, redis.getHost().port)),
                          engine=engine)
    try:
        port = port_of(assembly, "redis")
        held = await connect(port)
        assert await held.first == b"redis"
        code, answer = await call("DELETE", url + "/services/redis")
        assert code == 200, answer
        assert (answer["state"], answer["connections"]) == ("removing", 1)
        with pytest.raises(Exception):
            await connect(port)
        held.transport.write(b"still here\n")
        await until(lambda: b"still here" in held.got)
        assert "redis" in assembly.table.retiring
        held.transport.loseConnection()
        await held.closed
        await until(lambda: "redis" not in assembly.table.retiring)

        port = port_of(assembly, "postgres")
        held = await connect(port)
        assert await held.first == b"pg"
        code, answer = await call("DELETE", url + "/services/postgres?force=true")
        assert code == 200, answer
        assert answer["closed"] == 1
        await held.closed
        await until(lambda: not assembly.table.retiring)
        code, listed = await call("GET", url + "/services")
        assert listed["services"] == []
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await pg.stopListening()
        await redis.stopListening()


@ENGINES
@pytest_twisted.ensureDeferred
async def test_repeated_listen_serves_every_port(engine):
    """Two --listen flags: the default service listens on both (not only the last)."""
    pg = backend(b"pg")
    assembly, _ = start("--listen", LOCAL, "--listen", "tcp:0:interface=127.0.0.1:backlog=64",
                        "--backend", f"127.0.0.1:{pg.getHost().port}", engine=engine)
    try:
        ports = [p for _, p in assembly.listeners.addresses("default")]
        assert len(ports) == 2 and ports[0] != ports[1]
        for port in ports:
            assert await first_line(port) == b"pg"
    finally:
        await defer.maybeDeferred(assembly.top.stopService)
        await pg.stopListening()


@pytest_twisted.ensureDeferred
async def test_store_written_by_the_first_release_loads_as_service_default(tmp_path):
    """
    A state directory holding a config written by the first release's
    FileStore (one pool: tests/fixtures/config-v1-single-pool.json) loads
    as a document of one service, default, that keeps its pool, strategy
    and settings and listens where --listen says; the next change stores
    the services form.
    """
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(FIXTURE, state / "config.json")
    stored = FileStore(str(state)).read()
    assert stored.version == 7 and stored.names == ("default",)
    service = stored.main()
    assert [(b.id, b.port, b.weight, b.state) for b in service.backends] == [
        ("b1", 5432, 2, "up"), ("pg2", 5433, 1, "draining"),
    ]
    assert (service.strategy.name, service.slow_start, service.drain_timeout) == ("least-connections", 10.0, 30.0)
    assert service.health_check.interval == 5.0

    assembly, url = start("--state-dir", str(state), "--listen", LOCAL)
    try:
        assert assembly.controller.document.version == 7
        assert assembly.listeners.addresses("default")
        code, answer = await call("PATCH", url + "/settings", {"slow_start": 2})
        assert code == 200, answer
        body = json.loads((state / "config.json").read_text())["config"]
        assert body["version"] == 8 and [s["name"] for s in body["services"]] == ["default"]
        assert body["services"][0]["listen"] == [LOCAL]
    finally:
        await defer.maybeDeferred(assembly.top.stopService)


def test_a_bad_config_file_is_one_line_naming_file_service_and_field(tmp_path):
    """--config with a bad field is one line naming the file, the service and the field."""
    from twisted.python import usage

    path = tmp_path / "bad.toml"
    path.write_text('[services.redis]\nlisten = ["tcp:6379"]\nbackends = [{ host = "127.0.0.1", port = 70000 }]\n')
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["--config", str(path)])
    message = str(e.value)
    assert "\n" not in message
    assert str(path) in message and "'redis'" in message and "backends[0].port" in message
    path.write_text("[services.redis\n")
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["--config", str(path)])
    assert str(path) in str(e.value) and "TOML" in str(e.value) and "\n" not in str(e.value)
    path.write_text('[services.a]\nlisten = ["tcp:1"]\n[services.b]\nlisten = ["tcp:1"]\n')
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["--config", str(path)])
    assert "each of them needs sni names" in str(e.value)


def test_twistd_with_a_bad_config_file_exits_with_one_line(tmp_path):
    """twistd lbproxy --config BAD exits 1: one line naming the file, the service and the field, then the hint; nothing started."""
    from tests.test_tap import _twistd

    path = tmp_path / "bad.toml"
    path.write_text('[services.pg]\nlisten = ["tcp:5432"]\nstrategy = { name = "round-robin", colour = 1 }\n')
    out = _twistd("lbproxy", "--config", str(path))
    assert out.returncode == 1
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"lbproxy: --config {path}: service 'pg'.strategy"), lines
    assert "colour" in lines[0]
    assert lines[1] == "see: twistd lbproxy --help"
