"""
lbproxyctl against a real lbproxy: a C{twistd -n lbproxy} child on
127.0.0.1 (free ports, a token, a state directory), the CLI run as
C{python -m lbproxy.cli} in a subprocess so its exit codes are the real
ones.  Every verb, refusals (stale If-Match, bad input, a missing token),
a usage error, an unreachable admin, the declarative apply / diff /
rollback round trip, and C{--json} of every read verb.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.lifecycle_harness import REPO, TWISTD, Proxy, free_port

pytestmark = pytest.mark.integration

TOKEN = "cli-test-token-0123456789"
LOCAL = "tcp:0:interface=127.0.0.1"


def spawn(tmp: Path) -> Proxy:
    """An lbproxy of one empty service (C{default}, no backends), with a token."""
    admin = free_port()
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    log = tmp / f"lbproxy-{time.monotonic_ns()}.log"
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "lbproxy", "--listen", LOCAL,
            "--admin", f"tcp:{admin}:interface=127.0.0.1", "--admin-token-file", str(token),
            "--state-dir", str(tmp / f"state-{admin}"), "--no-access-log", "--check", "none"]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    proxy = Proxy(0, admin, proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lbproxy exited {proc.returncode}:\n{proxy.output()}")
        try:
            get(proxy, "/status")
            return proxy
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"lbproxy did not answer:\n{proxy.output()}")


def stop(proxy: Proxy) -> None:
    proxy.signal(signal.SIGTERM)
    proxy.wait(30)


def get(proxy: Proxy, path: str):
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.admin}/api/v1{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def env_for(proxy: Proxy | None, token: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBPROXY_")}
    env["PYTHONPATH"] = str(REPO)
    if proxy is not None:
        env["LBPROXY_ADMIN"] = f"http://127.0.0.1:{proxy.admin}"
    if token:
        env["LBPROXY_TOKEN"] = TOKEN
    return env


def ctl(proxy: Proxy | None, *args: str, token: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbproxy.cli", *args], capture_output=True, text=True,
                          env=env_for(proxy, token), cwd=str(REPO), timeout=60)


def ok(proxy: Proxy, *args: str) -> str:
    r = ctl(proxy, *args)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = spawn(tmp_path_factory.mktemp("cli"))
    yield p
    stop(p)


@pytest.fixture
def fresh(tmp_path):
    p = spawn(tmp_path)
    yield p
    stop(p)


def two_services(path: Path, weight: int = 2) -> Path:
    path.write_text(f"""
[services.postgres]
listen = ["{LOCAL}"]
strategy = "least-connections"
idle_timeout = 3600
health_check = {{ type = "tcp", interval = 2, timeout = 1 }}
backends = [{{ host = "127.0.0.1", port = 15432 }}, {{ host = "127.0.0.1", port = 15433 }}]

[services.redis]
listen = ["{LOCAL}"]
connect_timeout = 0.5
backends = [{{ host = "127.0.0.1", port = 16379 }}, {{ host = "127.0.0.1", port = 16380, weight = {weight} }}]
""")
    return path


def configs(proxy: Proxy) -> list:
    return [{k: v for k, v in s.items() if k not in ("listening", "active_connections")}
            for s in get(proxy, "/services")["services"]]


def test_apply_diff_rollback_round_trip(fresh, tmp_path):
    """
    apply -f of two services on an empty lbproxy creates them as one
    version (one history entry, by cli, naming both);
    diff -f then prints nothing and exits 0; a changed file diffs per field
    and re-applies as one PUT with the other service unchanged; rollback to
    the version before the apply restores the services exactly.
    """
    # The seed (version 0) is not in the history; a first change puts version 1 there.
    ok(fresh, "strategy", "default", "random")
    before, version = configs(fresh), get(fresh, "/services")["version"]
    path = two_services(tmp_path / "services.toml")
    dry = ok(fresh, "apply", "-f", str(path), "--dry-run")
    assert "+ postgres: new service" in dry and "+ redis, backend b2: 127.0.0.1:16380 weight 2 up" in dry
    assert configs(fresh) == before, "a dry run changed something"

    out = json.loads(ok(fresh, "apply", "-f", str(path), "--json"))
    assert out["created"] == ["postgres", "redis"] and out["version"] == version + 1, out
    latest = get(fresh, "/history")[0]
    assert (latest["version"], latest["by"], latest["summary"]) == (
        version + 1, "cli", "applied: created postgres, redis"), latest
    names = [s["name"] for s in get(fresh, "/services")["services"]]
    assert names == ["default", "postgres", "redis"]
    r = ctl(fresh, "diff", "-f", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")

    two_services(path, weight=5)
    assert ok(fresh, "diff", "-f", str(path)) == "~ redis, backend b2, weight: 2 -> 5\n"
    out = json.loads(ok(fresh, "apply", "-f", str(path), "--json"))
    assert (out["replaced"], out["unchanged"]) == (["redis"], ["postgres"]), out
    assert ok(fresh, "diff", "-f", str(path)) == ""

    ok(fresh, "rollback", str(version))
    assert configs(fresh) == before


def test_apply_is_refused_on_a_stale_version_and_for_a_bad_file(fresh, tmp_path):
    """
    apply sends If-Match with the version it read, so a change made in
    between is refused with the server's 412 message (exit 1); a file
    that is not valid is refused (exit 1) before anything is sent.
    """
    path = two_services(tmp_path / "services.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[services.x]\nlisten = ["tcp:0"]\nbackends = [{ host = "h", port = 70000 }]\n')
    r = ctl(fresh, "apply", "-f", str(bad))
    assert r.returncode == 1 and "port must be at most 65535" in r.stderr, r.stderr
    assert [s["name"] for s in get(fresh, "/services")["services"]] == ["default"]

    # Reviewed at version V (diff --json says which); a change lands; apply at V is stale.
    reviewed = json.loads(ok(fresh, "diff", "-f", str(path), "--json"))["version"]
    ok(fresh, "strategy", "default", "random")
    r = ctl(fresh, "apply", "-f", str(path), "--if-match", str(reviewed))
    assert r.returncode == 1 and "refused (412)" in r.stderr and "stale" in r.stderr, r.stderr
    assert [s["name"] for s in get(fresh, "/services")["services"]] == ["default"]


def test_apply_refused_for_one_service_changes_nothing(fresh, tmp_path):
    """
    A file of two services where the server refuses one (its port is
    taken: 409) is refused whole: exit 1 with the server's message, the
    other service is not added, no version and no history entry is made.
    """
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        path = two_services(tmp_path / "services.toml")
        text = path.read_text().replace(f'[services.redis]\nlisten = ["{LOCAL}"]',
                                        f'[services.redis]\nlisten = ["tcp:{taken.getsockname()[1]}:interface=127.0.0.1"]')
        path.write_text(text)
        before = get(fresh, "/services")["version"], len(get(fresh, "/history"))
        r = ctl(fresh, "apply", "-f", str(path))
        assert r.returncode == 1 and "refused (409)" in r.stderr and "nothing changed" in r.stderr, r.stderr
        assert [s["name"] for s in get(fresh, "/services")["services"]] == ["default"]
        assert (get(fresh, "/services")["version"], len(get(fresh, "/history"))) == before
    finally:
        taken.close()


def test_backend_verbs_and_refusals(proxy):
    """
    add / weight / drain / disable / enable / remove change one backend and
    say so; the history records them as made by cli; a stale --if-match is
    the server's 412 (exit 1), a bad weight its 400 (exit 1), a missing
    token its 401 (exit 1); --token-file works without $LBPROXY_TOKEN.
    """
    out = ok(proxy, "add", "default", "127.0.0.1:19001", "--weight", "3", "--id", "web1")
    assert out.startswith("added backend web1 (127.0.0.1:19001) to default")
    version = get(proxy, "/services")["version"]
    ok(proxy, "weight", "default", "web1", "7")
    assert get(proxy, "/services/default/backends/web1")["weight"] == 7
    for verb, state in (("drain", "draining"), ("disable", "disabled"), ("enable", "up")):
        assert f"state {state}" in ok(proxy, verb, "default", "web1")
        assert get(proxy, "/services/default/backends/web1")["admin_state"] == state
    assert get(proxy, "/history")[0]["by"] == "cli"

    r = ctl(proxy, "weight", "default", "web1", "2", "--if-match", str(version))
    assert r.returncode == 1 and "refused (412)" in r.stderr and "stale" in r.stderr, r.stderr
    r = ctl(proxy, "weight", "default", "web1", "-1")
    assert r.returncode == 1 and "refused (400)" in r.stderr and "weight" in r.stderr, r.stderr
    r = ctl(proxy, "weight", "default", "web1", "2", token=False)
    assert r.returncode == 1 and "refused (401)" in r.stderr, r.stderr
    r = ctl(proxy, "add", "nosuch", "127.0.0.1:1")
    assert r.returncode == 1 and "there is no service 'nosuch'" in r.stderr
    assert get(proxy, "/services/default/backends/web1")["weight"] == 7

    token = Path(proxy.log).parent / "token"
    r = subprocess.run([sys.executable, "-m", "lbproxy.cli", "--token-file", str(token), "remove", "default", "web1"],
                       capture_output=True, text=True, env=env_for(proxy, token=False), timeout=60)
    assert r.returncode == 0 and "backend web1 of default: removed" in r.stdout, r.stderr
    assert all(b["id"] != "web1" for b in get(proxy, "/services/default/backends")["backends"])


def test_strategy_history_and_rollback_verbs(proxy):
    """
    strategy shows and sets (with --options); an unknown one is refused
    (exit 1); history lists versions and shows one; rollback puts a
    version back as a new one.
    """
    ok(proxy, "strategy", "default", "round-robin")
    version = get(proxy, "/services")["version"]
    assert "random" in ok(proxy, "strategy", "default", "random", "--options", '{"seed": 4}')
    assert ok(proxy, "strategy", "default").startswith('random {"seed": 4}')
    r = ctl(proxy, "strategy", "default", "no-such-strategy")
    assert r.returncode == 1 and "unknown strategy" in r.stderr
    listing = ok(proxy, "history")
    assert listing.splitlines()[0].split() == ["VERSION", "TIME", "BY", "SUMMARY"]
    assert f"\n{version + 1} " in listing and "strategy round-robin -> random" in listing
    assert ok(proxy, "history", str(version + 1)).startswith(f"version {version + 1} ")
    assert f"rolled back to version {version}" in ok(proxy, "rollback", str(version))
    assert get(proxy, "/services/default/strategy")["name"] == "round-robin"
    r = ctl(proxy, "rollback", "999999")
    assert r.returncode == 1 and "not in the history" in r.stderr


def test_read_verbs_print_tables_and_json(proxy):
    """status, services, backends, strategy, history: a table by default, JSON with --json."""
    ok(proxy, "add", "default", "127.0.0.1:19002")
    assert "config version:" in ok(proxy, "status")
    assert ok(proxy, "services").startswith("NAME ")
    assert ok(proxy, "backends", "default").startswith("ID ")
    for args in (("status",), ("services",), ("backends", "default"), ("strategy", "default"),
                 ("history",), ("history", "1")):
        body = json.loads(ok(proxy, *args, "--json"))
        assert body, args
    assert json.loads(ok(proxy, "--json", "services"))["services"][0]["name"] == "default"


def test_usage_and_unreachable_exit_codes(proxy):
    """A bad verb or argument is usage (2); no admin at the address is 3; --help on every verb is 0."""
    assert ctl(proxy, "frobnicate").returncode == 2
    assert ctl(proxy, "weight", "default", "b1", "heavy").returncode == 2
    r = ctl(proxy, "add", "default", "no-port-here")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = ctl(None, "--admin", f"http://127.0.0.1:{free_port()}", "status")
    assert r.returncode == 3 and "cannot reach the admin API" in r.stderr
    env = dict(env_for(proxy), LBPROXY_ADMIN=f"http://127.0.0.1:{free_port()}")
    r = subprocess.run([sys.executable, "-m", "lbproxy.cli", "status"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 3 and "cannot reach" in r.stderr, "$LBPROXY_ADMIN is not used"
    r = subprocess.run([sys.executable, "-m", "lbproxy.cli", "--admin", f"127.0.0.1:{proxy.admin}", "status"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, "--admin does not win over $LBPROXY_ADMIN"


def test_events_follow_the_feed_and_ctrl_c_exits_0(proxy):
    """
    events prints one line per event (the snapshot on connect, then the
    change this test makes), --json one JSON object per line; SIGINT
    (Ctrl-C) ends it with exit 0.
    """
    for extra, want in (((), " config service=default version="), (("--json",), '"event":"config"')):
        proc = subprocess.Popen([sys.executable, "-m", "lbproxy.cli", "events", *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env_for(proxy), cwd=str(REPO))
        lines: list[str] = []
        seen = threading.Event()

        def read(proc=proc, want=want, lines=lines, seen=seen):
            for line in proc.stdout:
                lines.append(line)
                if want in line and lines and "snapshot" in lines[0]:
                    seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while not lines and time.monotonic() < deadline:
                time.sleep(0.02)
            assert lines and "snapshot" in lines[0], (lines, proc.poll())
            ok(proxy, "weight", "default", get(proxy, "/services/default/backends")["backends"][0]["id"], "2")
            assert seen.wait(20), lines
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(20)
        assert code == 0, (code, proc.stderr.read())
        if extra:
            assert all(json.loads(line)["event"] for line in lines)


def test_the_wheel_installs_the_lbproxyctl_script(proxy, tmp_path):
    """
    The built wheel declares the console script; installed, the
    C{lbproxyctl} command itself talks to the lbproxy (exit 0).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, timeout=300, env=env, cwd=str(tmp_path), capture_output=True)
    (wheel,) = tmp_path.glob("lbproxy-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300, env=env, capture_output=True)
    script = target / "bin" / "lbproxyctl"
    assert script.exists()
    r = subprocess.run([str(script), "--json", "services"], capture_output=True, text=True, timeout=60,
                       env=dict(env_for(proxy), PYTHONPATH=str(target)), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["services"][0]["name"] == "default"


def test_bad_input_is_one_line_and_changes_nothing(proxy, tmp_path):
    """
    Against a real server: a binary token file is usage (2), a binary
    apply -f file is refused naming the file (1), a usage error is one line
    and a hint, a wrong token is the server's 401 (1); each is no
    traceback, and the config version is where it was.
    """
    before = get(proxy, "/services")["version"]
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    r = ctl(proxy, "--token-file", str(binary), "add", "default", "127.0.0.1:9")
    assert (r.returncode, r.stderr) == (2, f"lbproxyctl: --token-file {binary} is not a text file\n")
    r = ctl(proxy, "apply", "-f", str(binary))
    assert r.returncode == 1 and r.stderr.startswith(f"lbproxyctl: {binary}: not valid TOML: not UTF-8"), r.stderr
    r = ctl(proxy, "weight", "default", "b1", "heavy")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "lbproxyctl weight: argument weight: invalid int value: 'heavy'", "see: lbproxyctl weight --help"]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token-at-all\n")
    r = ctl(proxy, "--token-file", str(wrong), "add", "default", "127.0.0.1:9", token=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "refused (401)" in r.stderr, r.stderr
    assert get(proxy, "/services")["version"] == before


def test_an_admin_url_that_is_not_lbproxy_is_exit_3_in_one_line(tmp_path):
    """
    --admin pointing at another HTTP server (a web server's HTML page,
    its HTML 404/501, JSON of another shape): exit 3 with one line saying
    so, not a traceback (an HTML 200, JSON without the expected fields)
    nor the whole HTML page printed as a refusal.
    """
    import functools
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    (tmp_path / "api" / "v1").mkdir(parents=True)
    (tmp_path / "api" / "v1" / "status").write_text("<html>hello</html>\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for args, status in ((("status",), 200), (("backends", "default"), 404), (("add", "default", "127.0.0.1:9"), 501)):
            r = ctl(None, "--admin", base, *args, token=False)
            assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
            assert r.stderr.startswith(f"lbproxyctl: {base} is not an lbproxy admin API: it answered {status}"), r.stderr
        # JSON, but not the admin API's: one line naming the missing field (was a KeyError traceback).
        (tmp_path / "api" / "v1" / "services").write_text('{"x": 1}\n')
        r = ctl(None, "--admin", base, "services", token=False)
        assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"lbproxyctl: {base} answered JSON without 'services'"), r.stderr
    finally:
        server.shutdown()
        server.server_close()
