"""
lbproxyctl without a server: the command line (usage errors are exit 2,
--help works on every verb), the SSE parser, the declarative plan and
diff (ids kept by address, per-field changes, nothing for an identical
service), the tables, and the console script's entry point.
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import pytest

from lbproxy.cli import declarative, main as cli
from lbproxy.cli.client import Answer, parse_sse
from lbproxy.cli.output import table

REPO = Path(__file__).resolve().parents[1]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def verbs() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    return sorted(sub.choices)


def test_every_verb_has_help_with_an_example(capsys):
    """--help on every verb exits 0 and shows an example line."""
    assert {"status", "services", "backends", "add", "remove", "drain", "enable", "weight", "strategy",
            "apply", "diff", "history", "rollback", "events"} <= set(verbs())
    for verb in verbs():
        code, _, _ = run(verb, "--help")
        text = capsys.readouterr().out
        assert code == 0 and f"lbproxyctl {verb}" in text and "example:" in text, verb


@pytest.mark.parametrize("argv", [
    (), ("nosuchverb",), ("backends",), ("weight", "s", "b1", "heavy"), ("apply",),
    ("rollback", "latest"), ("status", "--timeout", "soon"),
])
def test_usage_errors_exit_2(argv, capsys):
    """A missing or malformed argument is a usage error, exit 2, before any request."""
    assert run(*argv)[0] == 2


@pytest.mark.parametrize("argv, prog, reason", [
    (("nosuchverb",), "lbproxyctl", "argument VERB: invalid choice: 'nosuchverb'"),
    (("backends",), "lbproxyctl backends", "the following arguments are required: service"),
    (("weight", "s", "b1", "heavy"), "lbproxyctl weight", "argument weight: invalid int value: 'heavy'"),
    (("status", "--timeout", "0"), "lbproxyctl status", "argument --timeout: must be a positive number"),
    (("status", "--bogus"), "lbproxyctl", "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line_and_a_hint(argv, prog, reason, capsys):
    """A usage error is one line naming the verb and what is wrong, then
    where the help is, not argparse's whole usage block before it."""
    assert run(*argv)[0] == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"{prog}: {reason}" + lines[0][len(prog) + 2 + len(reason):], f"see: {prog} --help"], lines


def test_token_file_that_is_not_text_is_usage(tmp_path):
    """A binary --token-file was a UnicodeDecodeError traceback; it is a
    usage error naming the file, before any request."""
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run("--admin", "http://127.0.0.1:1", "--token-file", str(path), "status")
    assert (code, err) == (2, f"lbproxyctl: --token-file {path} is not a text file\n")


def test_add_needs_host_and_port():
    """add's HOST:PORT is checked before anything is sent (exit 2, no connection: port 1 is never tried)."""
    code, _, err = run("--admin", "http://127.0.0.1:1", "add", "svc", "nohost")
    assert code == 2 and "HOST:PORT" in err


def test_token_file_missing_is_usage(tmp_path):
    """An unreadable --token-file is a usage error naming the file."""
    code, _, err = run("--token-file", str(tmp_path / "absent"), "status")
    assert code == 2 and "absent" in err


def test_common_options_before_and_after_the_verb():
    """--json and --admin work before the verb and after it, and one given before is not undone after."""
    parser = cli.build_parser()
    assert parser.parse_args(["--json", "status"]).json is True
    assert parser.parse_args(["status", "--json"]).json is True
    args = parser.parse_args(["--admin", "http://a:1", "status"])
    assert args.admin == "http://a:1" and args.timeout == 10.0


@pytest.mark.parametrize("admin", ["ftp://host/", "http://", "http://h:port"])
def test_a_bad_admin_url_is_usage(admin):
    """--admin that is not an http(s) URL with a host is a usage error (2), not unreachable (3)."""
    code, _, err = run("--admin", admin, "status")
    assert code == 2 and err.startswith("lbproxyctl: --admin: the admin API") and err.count("\n") == 1, err


def test_a_bad_admin_url_from_the_environment_names_it(monkeypatch):
    """A bad $LBPROXY_ADMIN is named as such: the user gave no --admin, so
    an error about 'the admin API' alone does not say where to look."""
    monkeypatch.setenv("LBPROXY_ADMIN", "ftp://host/")
    code, _, err = run("status")
    assert (code, err) == (2, "lbproxyctl: $LBPROXY_ADMIN: the admin API must be an http:// or https:// URL, "
                              "not 'ftp://host/'\n")


def test_docs_show_every_verb():
    """docs/cli.rst has an example of every verb and the four exit codes."""
    text = (REPO / "docs" / "cli.rst").read_text()
    for verb in verbs():
        assert f"lbproxyctl {verb}" in text, verb
    for code in ("0     done", "1     refused", "2     usage", "3     unreachable"):
        assert code in text


def test_parse_sse_events_comments_and_multiline_data():
    """The event stream format: id/event/data fields, comments skipped, a blank line ends an event."""
    stream = [b"retry: 2000\n", b"\n", b": ping\n", b"id: 7\n", b"event: config\n", b'data: {"a":1}\n', b"\n",
              b"data: one\n", b"data: two\n", b"\n"]
    assert list(parse_sse(stream)) == [("7", "config", '{"a":1}'), ("7", "message", "one\ntwo")]


def test_answer_version_from_etag_or_body():
    """The config version comes from the ETag, else the body's version."""
    assert Answer(200, {}, '"12"').version == 12
    assert Answer(200, {"version": 3}, None).version == 3
    assert Answer(200, [], 'W/"x"').version is None


def test_table_aligns_columns():
    """Columns are padded to the widest cell; None shows as -."""
    out = io.StringIO()
    table(("ID", "WEIGHT"), [("b1", 1), ("backend-two", None)], out)
    assert out.getvalue().splitlines() == ["ID           WEIGHT", "b1           1", "backend-two  -"]


FILE = """
[services.redis]
listen = ["tcp:6379"]
connect_timeout = 0.5
backends = [{ host = "10.0.0.1", port = 6379 }, { host = "10.0.0.2", port = 6379, weight = 2 }]
"""


def load(tmp_path, text=FILE):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return declarative.read_file(str(path))


def as_server(bodies):
    """The services as GET /api/v1/services would show them after apply."""
    return {name: {**declarative.normalized(declarative.with_ids(b, None)), "listening": [], "active_connections": 0}
            for name, b in bodies.items()}


def test_plan_creates_then_finds_nothing_to_change(tmp_path):
    """A service the server lacks is created; once the server has it as normalized, it is unchanged."""
    bodies = load(tmp_path)
    (step,) = declarative.plan(bodies, {})
    assert step.action == "create" and [b["id"] for b in step.body["backends"]] == ["b1", "b2"]
    (step,) = declarative.plan(bodies, as_server(bodies))
    assert (step.action, step.changes) == ("unchanged", [])


def test_plan_diffs_per_field_and_keeps_ids_by_address(tmp_path):
    """
    A changed weight and setting are per-field changes; a backend at the
    address of a server backend keeps its id; a new one gets an id no
    backend has; a backend gone from the file is removed.
    """
    server = as_server(load(tmp_path))
    server["redis"]["backends"][0]["id"] = "db-a"
    changed = FILE.replace("connect_timeout = 0.5", "connect_timeout = 1.5").replace(
        '{ host = "10.0.0.1", port = 6379 }, { host = "10.0.0.2", port = 6379, weight = 2 }',
        '{ host = "10.0.0.1", port = 6379, weight = 4 }, { host = "10.0.0.3", port = 6379 }')
    (step,) = declarative.plan(load(tmp_path, changed), server)
    assert step.action == "replace"
    assert [b["id"] for b in step.body["backends"]] == ["db-a", "b1"]
    assert [c.line() for c in step.changes] == [
        "~ redis, connect_timeout: 0.5 -> 1.5",
        "~ redis, backend db-a, weight: 1 -> 4",
        "- redis, backend b2: 10.0.0.2:6379 weight 2 up",
        "+ redis, backend b1: 10.0.0.3:6379 weight 1 up",
    ]


def test_nested_settings_diff_by_field(tmp_path):
    """A nested object (health_check) shows the one field that changed, as health_check.interval."""
    server = as_server(load(tmp_path))
    changed = FILE + 'health_check = { type = "tcp", interval = 5 }\n'
    (step,) = declarative.plan(load(tmp_path, changed), server)
    assert [c.line() for c in step.changes] == ["~ redis, health_check.interval: 1.0 -> 5.0"]


def test_a_bad_file_names_the_field(tmp_path):
    """A file that is not valid is refused with the server model's message."""
    with pytest.raises(declarative.FileError, match="port must be at most 65535"):
        load(tmp_path, FILE.replace("port = 6379 }", "port = 70000 }", 1))
    with pytest.raises(declarative.FileError, match="not valid TOML"):
        load(tmp_path, "[services.x\n")


def test_a_binary_file_is_named(tmp_path):
    """A file that is not UTF-8 (a binary, a UTF-16 export) is refused
    naming the file, not with a bare codec error (and, under twistd's
    --config, not with a traceback)."""
    path = tmp_path / "s.toml"
    path.write_bytes(b"garbage\x00\xff")
    with pytest.raises(declarative.FileError, match=f"^{path}: not valid TOML: not UTF-8 text"):
        declarative.read_file(str(path))


def test_console_script_points_at_main():
    """pyproject's lbproxyctl script is lbproxy.cli.main:run, and lbproxy.cli is packaged."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["lbproxyctl"] == "lbproxy.cli.main:run"
    assert "lbproxy.cli" in project["tool"]["setuptools"]["packages"]
    assert callable(cli.run)


def test_help_imports_no_twisted():
    """--help stays fast: the CLI's command line imports neither Twisted nor the server."""
    import subprocess
    import sys

    code = ("import sys, lbproxy.cli.main as m; m.build_parser(); "
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('twisted', 'klein', 'jsonschema'))))")
    r = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                       cwd=str(REPO), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
