"""
The command line: bad flags are UsageErrors and start nothing; good ones
build the service tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError

from lbproxy.startup.tap import Options, makeService

REPO = Path(__file__).parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def parse(*args):
    o = Options()
    o.parseOptions(list(args))
    return o


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--strategy", "random", "--strategy-options", "{"], "not valid JSON"),
    (["--strategy", "random", "--strategy-options", "[]"], "must be a JSON object"),
    (["--strategy", "random", "--strategy-options", '{"seed": "x"}'], "invalid options for strategy 'random'"),
    (["--backend", "nohost"], "^--backend 'nohost' must look like HOST:PORT"),
    (["--backend", "127.0.0.1:80,colour=red"], "^--backend '127.0.0.1:80,colour=red': unknown option 'colour'"),
    (["--backend", "127.0.0.1:0"], "port must be at least 1"),
    (["--backend", "127.0.0.1:80", "--backend", "127.0.0.1:80"], "listed twice"),
    (["--listen", "tcp:notaport"], "--listen 'tcp:notaport' is not a valid endpoint"),
    (["--listen", "bogus:1"], "is not a valid endpoint"),
    (["--admin", "tcp:x"], "--admin 'tcp:x' is not a valid endpoint"),
    (["--retries", "-1"], "--retries must be at least 0"),
    (["--connect-timeout", "soon"], "--connect-timeout must be a number"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
    (["--backlog", "0"], "--backlog must be at least 1"),
    (["--backlog", "99999999999"], "--backlog must be at most 1048576"),
    (["--listen", "tcp:80:backlog=0"], "--listen 'tcp:80:backlog=0' is not a valid endpoint: backlog must be"),
    (["--demo"], "--demo moved: run 'twistd -n lbproxy-demo'"),
    (["--strategy", ""], "--strategy must name a strategy"),
    (["--admin", "tcp:0:interface=999.1.1.1"], "--admin 'tcp:0:interface=999.1.1.1' is not a valid endpoint: interface= must be an IP address"),
    (["--listen", "tcp:0:interface=127.0.0.l"], "--listen 'tcp:0:interface=127.0.0.l' is not a valid endpoint: interface= must be an IP address"),
    (["--no-access-log", "--access-log", "/var/log/x.log"], "--no-access-log and --access-log /var/log/x.log contradict"),
    (["--store-prefix", "/lbproxy/other"], "--store-prefix only makes sense with --store"),
    (["--backend", "[::1:80"], "an IPv6 address goes in brackets"),
])
def test_bad_flags_are_usage_errors(args, message):
    """Each malformed flag is refused with a message naming it."""
    with pytest.raises(UsageError, match=message):
        parse(*args)


@pytest.mark.parametrize("args, message", [
    (["--connect-timeout", "nan"], "--connect-timeout must be a finite number, not 'nan'"),
    (["--connect-timeout", "inf"], "--connect-timeout must be a finite number"),
    (["--connect-timeout", "1e400"], "--connect-timeout must be a finite number"),
    (["--connect-timeout", "3601"], "--connect-timeout must be at most 3600"),
    (["--idle-timeout", "nan"], "--idle-timeout must be a finite number"),
    (["--idle-timeout", "1e300"], "--idle-timeout must be at most 604800, not '1e300'"),
    (["--retries", "99999999999"], "--retries must be at most 100"),
    (["--max-connections", "99999999999"], "--max-connections must be at most 10000000"),
    (["--workers", "100000"], "--workers must be at most 256"),
    (["--dns-refresh", "nan"], "--dns-refresh must be a finite number"),
    (["--grace", "nan"], "--grace must be a finite number"),
    (["--grace-spread", "inf"], "--grace-spread must be a finite number"),
    (["--admin-read-timeout", "nan"], "--admin-read-timeout must be a finite number"),
    (["--admin-write-rate", "nan"], "--admin-write-rate must be a finite number"),
    (["--admin-max-connections", "999999999"], "--admin-max-connections must be at most 1000000"),
])
def test_numbers_must_be_finite_and_in_range(args, message):
    """nan, inf and numbers past what the API itself accepts were taken
    (a nan timeout never fires, 100000 workers exhaust the descriptors at
    bind time): each is refused naming the flag, before anything binds."""
    with pytest.raises(UsageError, match=message):
        parse(*args)


def test_good_flags_seed_the_config():
    """Backends, weights and the strategy from the command line form
    version 1 of the config, in the spec."""
    o = parse("--backend", "127.0.0.1:9001", "--backend", "127.0.0.1:9002,weight=3,proxy=v1",
              "--strategy", "weighted-round-robin", "--retries", "4", "--no-access-log")
    seed = o.spec.seed
    assert [(b.id, b.port, b.weight, b.proxy_protocol) for b in seed.backends] == [
        ("b1", 9001, 1, None), ("b2", 9002, 3, "v1"),
    ]
    assert seed.strategy.name == "weighted-round-robin" and seed.version == 1
    assert o.spec.settings.retries == 4 and not o.spec.settings.access_log
    assert o.spec.seed_flags == ("--backend", "--strategy")


def test_options_hold_only_flags_and_the_spec_is_frozen():
    """postOptions leaves the flags as given (no built objects in the
    Options dict) and puts everything checked in one frozen spec."""
    import dataclasses

    o = parse("--backend", "127.0.0.1:9001", "--listen", "tcp:0:interface=127.0.0.1")
    assert set(o) <= {name for name, *_ in o.optParameters} | {name for name, *_ in o.optFlags} | {"backends", "admin-hosts", "listens"}
    assert all(v is None or isinstance(v, (str, int, list)) for v in o.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.spec.backlog = 1


def test_spec_fields_read_from_flags():
    """A spec field declared with flag() is read from its flag, with no
    other code: adding an option is one optParameters line and one field."""
    from dataclasses import fields

    from lbproxy.startup.spec import ProxySpec

    declared = {f.metadata["flag"] for f in fields(ProxySpec) if "flag" in f.metadata}
    assert "admin-open-reads" in declared
    assert parse().spec.admin_open_reads is False


@pytest.mark.parametrize("args, backlog", [
    ([], "default"),
    (["--backlog", "77"], 77),
    (["--listen", "tcp:0:interface=127.0.0.1:backlog=33", "--backlog", "77"], 33),
])
def test_backlog_default_flag_and_endpoint(args, backlog):
    """The proxy's backlog is 4096 capped by somaxconn, unless --backlog
    says otherwise; an endpoint's own backlog= wins over both."""
    from lbproxy.listening.endpoints import default_backlog

    o = parse(*(args if "--listen" in args else ["--listen", "tcp:0:interface=127.0.0.1", *args]))
    assert o.spec.backlog == (default_backlog() if backlog == "default" else backlog)


def test_default_backlog_is_capped_by_somaxconn(tmp_path):
    """The default backlog is 4096, or somaxconn when lower; unreadable
    somaxconn leaves 4096."""
    from lbproxy.listening.endpoints import default_backlog, somaxconn

    assert default_backlog(cap=128) == 128
    assert default_backlog(cap=65535) == 4096
    assert somaxconn(str(tmp_path / "missing")) is None
    assert default_backlog(cap=None) == min(4096, somaxconn() or 4096)


def test_assemble_builds_a_multiservice():
    """The assembly's top is a MultiService holding the proxy and admin
    listeners; its parts are handed back, not hung on the top service."""
    from lbproxy.startup.assembly import assemble

    o = parse("--listen", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1",
              "--backend", "127.0.0.1:9001", "--engine", "twisted")
    assembly = assemble(o.spec, reactor=MemoryReactorClock())
    top = assembly.top
    assert IServiceCollection.providedBy(top)
    assert top.getServiceNamed("proxy") is assembly.proxy
    assert top.getServiceNamed("admin") is assembly.admin_listener
    assert assembly.balancer.config.backends[0].port == 9001
    assert not any(hasattr(top, name) for name in ("balancer", "controller", "admin", "membership", "store"))


def test_fd_limit_fits_or_refuses():
    """The soft open-files limit is raised to the hard one; a default
    --max-connections is lowered to fit it; a given one that does not fit
    refuses to start with the numbers (on a fake resource module: this
    process's limits are left alone)."""
    from dataclasses import replace

    from lbproxy.startup.open_files import RESERVED, fit_descriptors

    class Resource:
        RLIMIT_NOFILE, RLIM_INFINITY = 7, -1

        def __init__(self, soft, hard):
            self.limits = (soft, hard)

        def getrlimit(self, which):
            return self.limits

        def setrlimit(self, which, limits):
            self.limits = limits

    spec = parse("--backend", "127.0.0.1:9001").spec
    res = Resource(1024, 100_000)
    assert fit_descriptors(spec, res) is spec and res.limits == (100_000, 100_000)
    res = Resource(256, 1024)
    lowered = fit_descriptors(spec, res)
    assert res.limits == (1024, 1024)
    assert lowered.settings.max_connections == (1024 - RESERVED - 1) // 2
    given = parse("--backend", "127.0.0.1:9001", "--max-connections", "1000").spec
    with pytest.raises(SystemExit) as e:
        fit_descriptors(given, Resource(256, 1024))
    assert str(e.value) == (
        f"lbproxy: --max-connections 1000 needs {2000 + RESERVED + 1} open files "
        f"(2 per connection + {RESERVED + 1}) but the limit is 1024; "
        "lower --max-connections or raise the limit (ulimit -n, LimitNOFILE=)"
    )
    assert fit_descriptors(replace(given, settings=replace(given.settings, max_connections=400)), Resource(256, 1024))


def _twistd(*args, **kw):
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", *args], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, **kw,
    )


@pytest.mark.parametrize("args, reason", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--colour", "red"], "option --colour not recognized"),
    (["--backlog", "many"], "--backlog must be a number"),
    (["--connect-timeout", "nan"], "--connect-timeout must be a finite number"),
    (["--control-socket", "/nonexistent/dir/control.sock"], "--control-socket '/nonexistent/dir/control.sock': the directory"),
    (["--pid-file", "/nonexistent/dir/lbproxy.pid"], "--pid-file '/nonexistent/dir/lbproxy.pid': the directory"),
    (["--check", "tcp", "--check-expect", "pong"], "--check-expect needs --check send-expect (not --check tcp)"),
])
def test_twistd_refuses_bad_flags_in_one_line(args, reason):
    """twistd with a bad flag exits 1 with the reason on one line and a
    hint where the options are, instead of twistd's whole help; no
    traceback, nothing started."""
    out = _twistd("lbproxy", *args)
    assert out.returncode == 1
    text = (out.stdout + out.stderr).strip()
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"lbproxy: {reason}"), text
    assert lines[1] == "see: twistd lbproxy --help"


def test_plugin_module_imports_nothing_of_the_app():
    """The twistd plugin file is a lazy ServiceMaker: listing plugins does
    not import lbproxy's modules (nor the reactor)."""
    code = (
        "import sys\n"
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted import plugins\n"
        "names = [p.tapname for p in getPlugins(IServiceMaker, plugins)]\n"
        "assert 'lbproxy' in names and 'lbproxy-demo' in names, names\n"
        "print(sorted(m for m in sys.modules if m.startswith('lbproxy.') and m not in"
        " ('lbproxy.policy.strategies', 'lbproxy.policy.strategies.builtin', 'lbproxy.interfaces', 'lbproxy.policy.pool', 'lbproxy.model.config')))\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


@pytest.mark.parametrize("engine", ["twisted", "fast", "workers"])
@pytest.mark.parametrize("flag", ["--listen", "--admin"])
def test_taken_port_is_named_and_exit_is_non_zero(engine, flag):
    """A port already in use stops twistd with one plain line naming the
    endpoint and the reason and exit 1, whichever listener it is, before
    any listener starts (the admin site never logs that it starts)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    ports = {"--listen": free.getsockname()[1], "--admin": free.getsockname()[1]}
    ports[flag] = taken.getsockname()[1]
    free.close()
    try:
        out = _twistd(
            "lbproxy", *(["--workers", "2"] if engine == "workers" else ["--engine", engine]),
            "--listen", f"tcp:{ports['--listen']}:interface=127.0.0.1",
            "--admin", f"tcp:{ports['--admin']}:interface=127.0.0.1",
            "--backend", "127.0.0.1:9",
        )
    finally:
        taken.close()
    text = out.stdout + out.stderr
    assert out.returncode == 1
    assert "Traceback" not in text
    assert f"lbproxy: cannot listen on tcp:{ports[flag]}:interface=127.0.0.1: Address already in use" in text.splitlines()
    assert "Site starting" not in text and "listening on" not in text, text


class _Running:
    """One twistd lbproxy child, read until it says both listeners listen."""

    def __init__(self, *args, preexec_fn=None, deadline=30.0):
        import selectors
        import time

        self.proc = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec_fn,
        )
        self.text = ""
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + deadline
        try:
            while "admin API and UI listening on" not in self.text:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise AssertionError(f"twistd did not start:\n{self.text}")
                if selector.select(timeout=max(0.0, end - time.monotonic())):
                    self.text += os.read(self.proc.stdout.fileno(), 65536).decode(errors="replace")
        finally:
            selector.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _send_q(port):
    """The Send-Q column of ss for a listener: its backlog, as the kernel
    applies it."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    return [int(line.split()[2]) for line in out.stdout.splitlines()]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["twisted", "fast"])
@pytest.mark.parametrize("args, expected", [
    ([], "default"),
    (["--backlog", "77"], 77),
    (["--listen-backlog", "33"], 33),
])
def test_listener_backlog_is_what_was_asked(engine, args, expected):
    """The proxy listener's accept queue in the kernel (ss's Send-Q) is
    4096 capped by somaxconn by default, --backlog when given, and the
    endpoint's backlog= over both; both listeners are logged at start."""
    from lbproxy.listening.endpoints import default_backlog

    listen, admin = _free_port(), _free_port()
    description = f"tcp:{listen}:interface=127.0.0.1"
    if args and args[0] == "--listen-backlog":
        description += f":backlog={args[1]}"
        args = ["--backlog", "1000"]
    want = default_backlog() if expected == "default" else expected
    running = _Running("lbproxy", "--engine", engine, "--listen", description,
                       "--admin", f"tcp:{admin}:interface=127.0.0.1", "--backend", "127.0.0.1:9", *args)
    try:
        assert _send_q(listen) == [want]
        assert f"proxy ({engine} engine) listening on 127.0.0.1:{listen} ({description}, backlog {want})" in running.text
        assert f"admin API and UI listening on 127.0.0.1:{admin}" in running.text
    finally:
        running.stop()


def _limit_nofile(soft, hard):
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


@pytest.mark.integration
def test_open_files_limit_raised_and_max_connections_fitted():
    """Started with a soft limit of 256 (hard 1024, set in the child
    only), lbproxy raises its soft limit to 1024 and lowers the default
    --max-connections to what fits, saying so."""
    from lbproxy.startup.open_files import RESERVED

    listen, admin = _free_port(), _free_port()
    running = _Running(
        "lbproxy", "--listen", f"tcp:{listen}:interface=127.0.0.1",
        "--admin", f"tcp:{admin}:interface=127.0.0.1", "--backend", "127.0.0.1:9",
        preexec_fn=_limit_nofile(256, 1024),
    )
    try:
        limits = Path(f"/proc/{running.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["1024", "1024"], line
        fits = (1024 - RESERVED - 1) // 2
        assert f"--max-connections is {fits}, not 10000" in running.text
    finally:
        running.stop()


def test_max_connections_that_cannot_fit_refuses_to_start():
    """A given --max-connections that the hard open-files limit cannot
    hold stops twistd with one line naming the numbers."""
    from lbproxy.startup.open_files import RESERVED

    out = _twistd("lbproxy", "--listen", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1",
                  "--backend", "127.0.0.1:9", "--max-connections", "5000", preexec_fn=_limit_nofile(256, 1024))
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 1
    assert text.splitlines()[-1] == (
        f"lbproxy: --max-connections 5000 needs {10000 + RESERVED + 1} open files "
        f"(2 per connection + {RESERVED + 1}) but the limit is 1024; "
        "lower --max-connections or raise the limit (ulimit -n, LimitNOFILE=)"
    ), text
    assert "listening on" not in text


def test_backend_help_names_every_option_the_parser_takes():
    """Every key=value option that parse_backend_spec accepts (probed: the
    keys its own refusal lists, and the backend fields of a config) is
    named in --help of --backend, and the help names no option it refuses."""
    import re

    from lbproxy.model.errors import ConfigError
    from lbproxy.model.parse import parse_backend_spec
    from lbproxy.model.schema import BACKEND_FIELDS
    from lbproxy.startup.tap import Options

    with pytest.raises(ConfigError) as refused:
        parse_backend_spec("127.0.0.1:1,colour=red")
    listed = re.search(r"\(([^)]*)\)", str(refused.value)).group(1).split(", ")

    def accepted(key):
        try:
            parse_backend_spec(f"127.0.0.1:1,{key}=1")
        except ConfigError as e:
            return "unknown option" not in str(e)
        return True

    keys = {k for k in {*listed, *BACKEND_FIELDS, "proxy", "maxconn"} if accepted(k)}
    assert {"weight", "proxy", "maxconn", "id", "state"} <= keys
    text = " ".join(str(Options()).split())
    start = text.index("--backend=")
    help_text = text[start:text.index("--", start + 10)]
    named = set(re.findall(r"(\w+)=", help_text.split("with the keys", 1)[1]))
    assert keys == named, help_text


@pytest.mark.integration
def test_worker_log_lines_name_their_module():
    """A worker's lines name lbproxy's module (C{[lbproxy.control.worker_main#info]
    worker 0 relaying on ...}), not C{[__main__#info]}: a worker runs as
    C{python -m lbproxy.control.worker_main}, so a plain C{Logger()} was
    named after C{__main__}."""
    import selectors
    import time

    listen, admin = _free_port(), _free_port()
    running = _Running("lbproxy", "--workers", "2", "--listen", f"tcp:{listen}:interface=127.0.0.1",
                       "--admin", f"tcp:{admin}:interface=127.0.0.1", "--backend", "127.0.0.1:9")
    selector = selectors.DefaultSelector()
    selector.register(running.proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + 30
    try:
        while running.text.count("relaying on") < 2:
            assert time.monotonic() < end and running.proc.poll() is None, running.text
            if selector.select(timeout=max(0.0, end - time.monotonic())):
                running.text += os.read(running.proc.stdout.fileno(), 65536).decode(errors="replace")
        lines = [line for line in running.text.splitlines() if "relaying on" in line]
        assert all("[lbproxy.control.worker_main#info] worker " in line for line in lines), lines
        assert "[__main__" not in running.text
    finally:
        selector.close()
        running.stop()


LOCAL = "tcp:0:interface=127.0.0.1"
SERVICE = '[services.a]\nlisten = ["{listen}"]\nbackends = [{{ host = "127.0.0.1", port = 9 }}]\n'


def test_config_file_that_is_not_text_names_the_file(tmp_path):
    """A --config file that is not UTF-8 was a UnicodeDecodeError (a
    traceback under twistd): it is a UsageError naming the flag and file."""
    path = tmp_path / "services.toml"
    path.write_bytes(b"garbage\x00\xff")
    with pytest.raises(UsageError, match=f"^--config {path}: not valid TOML: not UTF-8 text"):
        parse("--config", str(path))


def test_config_file_bad_listen_names_the_file_and_service(tmp_path):
    """A malformed listen in the --config file is reported in the file's
    service, not as a --listen flag the user never gave."""
    path = tmp_path / "services.toml"
    path.write_text(SERVICE.format(listen="tcp:notaport"))
    with pytest.raises(UsageError, match=f"^--config {path}: service 'a' listen 'tcp:notaport' is not a valid endpoint"):
        parse("--config", str(path))


def test_config_file_listens_keep_their_order(tmp_path):
    """The services' endpoints are the spec's listens in file order, each once."""
    path = tmp_path / "services.toml"
    path.write_text(SERVICE.format(listen="tcp:0:interface=127.0.0.2")
                    + SERVICE.replace("services.a", "services.b").format(listen="tcp:0:interface=127.0.0.3")
                    + SERVICE.replace("services.a", "services.c").format(listen="tcp:0:interface=127.0.0.2"))
    spec = parse("--config", str(path)).spec
    assert [e.description for e in spec.listens] == ["tcp:0:interface=127.0.0.2", "tcp:0:interface=127.0.0.3"]


@pytest.mark.parametrize("flag", ["--control-socket", "--pid-file"])
def test_files_made_later_need_their_directory_now(tmp_path, flag):
    """--control-socket and --pid-file are created once lbproxy runs (the
    socket after the proxy listens, the pid file once it accepts): a
    missing directory was a traceback then (or a pid file silently never
    written); it is a UsageError now, before anything binds."""
    missing = tmp_path / "no" / "such"
    with pytest.raises(UsageError, match=f"^{flag} '{missing}': the directory '{missing.parent}' does not exist"):
        parse(flag, str(missing))
    with pytest.raises(UsageError, match=f"^{flag} '{tmp_path}' is a directory"):
        parse(flag, str(tmp_path))
    assert parse(flag, str(tmp_path / "f")).spec.__getattribute__(flag[2:].replace("-", "_")) == str(tmp_path / "f")


def test_control_socket_path_must_fit_a_unix_socket(tmp_path):
    """A socket path over 107 bytes cannot be bound; it is refused up front."""
    long = tmp_path / ("s" * 120)
    with pytest.raises(UsageError, match="longer than a UNIX socket path may be"):
        parse("--control-socket", str(long))


def test_config_file_tls_files_are_read_at_parse_time(tmp_path):
    """A --config service whose certificate is missing or not PEM is this
    flag's error, naming the file, the service and the certificate (it was
    a traceback from the first bind)."""
    path = tmp_path / "services.toml"
    path.write_text(SERVICE.format(listen="tcp:0:interface=127.0.0.1")
                    + f'tls = {{ certificates = [ {{ cert = "{tmp_path}/x.crt", key = "{tmp_path}/x.key" }} ] }}\n')
    with pytest.raises(UsageError, match=f"^--config {path}: service 'a': tls: certificate '{tmp_path}/x.crt': No such file"):
        parse("--config", str(path))
    (tmp_path / "x.crt").write_text("not a certificate\n")
    (tmp_path / "x.key").write_text("not a key\n")
    with pytest.raises(UsageError, match="holds no PEM certificate"):
        parse("--config", str(path))


@pytest.mark.parametrize("extra, listen, error", [
    ('tls = {{ certificates = [ {{ cert = "{tmp}/gone.crt", key = "{tmp}/gone.key" }} ] }}\n', LOCAL,
     "service 'a': tls: certificate '{tmp}/gone.crt': No such file or directory"),
    ("", "tcp:notaport",
     "service 'a': listen 'tcp:notaport': the port must be a number from 0 to 65535, not 'notaport'"),
])
def test_twistd_stored_config_that_cannot_start_is_one_line(tmp_path, extra, listen, error):
    """A stored config (--state-dir) whose certificate file was removed
    since, or whose listen was edited into a malformed one (checksum
    redone): twistd stops with one line naming the service and what is
    wrong, exit 1, instead of a traceback from the bind."""
    import json

    from lbproxy.control.store.envelope import checksum
    from lbproxy.model.tomlfile import load_services

    toml = tmp_path / "s.toml"
    toml.write_text(SERVICE.format(listen=LOCAL) + extra.format(tmp=tmp_path))
    body = load_services(str(toml)).to_json()
    body["services"][0]["listen"] = [listen]
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"format": 1, "checksum": checksum(body), "config": body}))
    out = _twistd("lbproxy", "--state-dir", str(state), "--admin", LOCAL)
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert errors == [f"lbproxy: cannot start: {error.format(tmp=tmp_path)}"], out.stderr
