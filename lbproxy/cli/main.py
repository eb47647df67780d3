"""
C{lbproxyctl}'s command line: argparse with one subparser per verb.

Exit codes scripts can trust: 0 done, 1 refused (the server's message, or
a file that is not valid), 2 usage, 3 the admin API cannot be reached (or
what answers is not one).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

DEFAULT_ADMIN = "http://127.0.0.1:8081"

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3

EPILOG = """\
environment:
  LBPROXY_ADMIN   the admin API's URL when --admin is not given (default %s)
  LBPROXY_TOKEN   the admin token when --token-file is not given

exit codes: 0 done, 1 refused (the server's message is printed), 2 usage,
3 the admin API cannot be reached.
""" % DEFAULT_ADMIN


class Usage(Exception):
    """A usage error found after parsing (exit 2)."""


class Parser(argparse.ArgumentParser):
    """
    Usage errors exit 2 with one line naming the verb and what is wrong,
    and where the help is (argparse's default prints the whole usage
    first, which buries the reason).
    """

    def error(self, message: str) -> Any:
        self.exit(USAGE, f"{self.prog}: {message}\nsee: {self.prog} --help\n")


def _common(suppress: bool) -> argparse.ArgumentParser:
    """
    The options every verb takes, before or after the verb; after it their
    defaults are suppressed so they do not undo the ones given before.
    """
    default = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--admin", metavar="URL", default=default(None),
                   help=f"the admin API (default $LBPROXY_ADMIN, else {DEFAULT_ADMIN})")
    g.add_argument("--token-file", metavar="FILE", default=default(None),
                   help="file whose first line is the admin token (default $LBPROXY_TOKEN)")
    g.add_argument("--json", action="store_true", default=default(False),
                   help="print JSON (for scripts) instead of tables")
    g.add_argument("--timeout", type=_seconds, metavar="SECONDS", default=default(10.0),
                   help="seconds to wait for an answer (default 10)")
    return p


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return seconds


def _conditional(p: argparse.ArgumentParser) -> None:
    p.add_argument("--if-match", metavar="VERSION", type=int,
                   help="change only if the config is still at VERSION (else refused, exit 1)")


def build_parser() -> argparse.ArgumentParser:
    from lbproxy.cli import verbs

    common = _common(suppress=True)
    parser = Parser(prog="lbproxyctl", description="Control an lbproxy through its admin API.",
                    epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                    parents=[_common(suppress=False)])
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, run: Callable[..., int], help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common],
                           epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run)
        return p

    verb("status", verbs.status, "the lbproxy's version, uptime, config version and connections",
         "lbproxyctl status")
    verb("services", verbs.services, "every service: where it listens, strategy, backends",
         "lbproxyctl services")
    p = verb("backends", verbs.backends, "the backends of a service, with health and traffic",
             "lbproxyctl backends postgres")
    p.add_argument("service")
    p = verb("add", verbs.add, "add a backend to a service",
             "lbproxyctl add postgres 10.0.1.13:5432 --weight 2")
    p.add_argument("service")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--weight", type=int)
    p.add_argument("--id", help="the backend's id (default: the server picks b1, b2, ...)")
    p.add_argument("--state", choices=["up", "draining", "disabled"])
    _conditional(p)
    p = verb("remove", verbs.remove, "remove a backend (its connections drain, or --force closes them)",
             "lbproxyctl remove postgres b3")
    p.add_argument("service")
    p.add_argument("backend")
    p.add_argument("--force", action="store_true", help="close its open connections now")
    _conditional(p)
    for name, state, text in (("drain", "draining", "take no new connections; open ones go on"),
                              ("enable", "up", "put a drained or disabled backend back in service"),
                              ("disable", "disabled", "take no new connections")):
        p = verb(name, verbs.set_state(state), f"{text} (state {state})", f"lbproxyctl {name} postgres b1")
        p.add_argument("service")
        p.add_argument("backend")
        _conditional(p)
    p = verb("weight", verbs.weight, "set a backend's weight", "lbproxyctl weight redis b2 3")
    p.add_argument("service")
    p.add_argument("backend")
    p.add_argument("weight", type=int)
    _conditional(p)
    p = verb("strategy", verbs.strategy, "show a service's strategy, or set it",
             "lbproxyctl strategy redis least-connections")
    p.add_argument("service")
    p.add_argument("name", nargs="?", help="the strategy to set (omit to show the current one)")
    p.add_argument("--options", metavar="JSON", help='the strategy\'s options, e.g. \'{"seed": 1}\'')
    _conditional(p)
    p = verb("apply", verbs.apply, "make the services of a --config TOML file so, as one version (PATCH /services)",
             "lbproxyctl apply -f services.toml --dry-run")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="a TOML file of [services.NAME] tables")
    p.add_argument("--dry-run", action="store_true", help="print the diff and change nothing")
    _conditional(p)
    p = verb("diff", verbs.diff, "what apply -f FILE would change (no output: nothing)",
             "lbproxyctl diff -f services.toml")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="a TOML file of [services.NAME] tables")
    p = verb("history", verbs.history, "the config versions kept, or one version's changes",
             "lbproxyctl history 12")
    p.add_argument("version", nargs="?", type=int)
    p = verb("rollback", verbs.rollback, "put a version of the history back in force (as a new version)",
             "lbproxyctl rollback 12")
    p.add_argument("version", type=int)
    _conditional(p)
    p = verb("events", verbs.events, "follow the live event feed, one line per event (Ctrl-C stops)",
             "lbproxyctl events --type backend")
    p.add_argument("--type", action="append", metavar="TYPE",
                   help="only events of this type (repeatable): config, service, backend, store, "
                        "lifecycle, stats, route, ...")
    p.add_argument("--all", action="store_true", help="the traffic events (stats, route) too")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise Usage(f"--token-file {args.token_file}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise Usage(f"--token-file {args.token_file} is not a text file") from None
        if not token:
            raise Usage(f"--token-file {args.token_file} is empty")
        return token
    return os.environ.get("LBPROXY_TOKEN") or None


def _admin_url(value: str, given: str = "--admin") -> str:
    """
    @param given: where C{value} came from (C{--admin} or
        C{$LBPROXY_ADMIN}), named when it is bad.
    """
    from urllib.parse import urlsplit

    url = value if "://" in value else "http://" + value
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Usage(f"{given}: the admin API must be an http:// or https:// URL, not {value!r}")
    try:
        parts.port
    except ValueError:
        raise Usage(f"{given}: the admin API URL {value!r} has a bad port") from None
    return url


def main(argv: list[str] | None = None, out: Any = None, err: Any = None) -> int:
    from lbproxy.cli.client import AdminClient, Refused, Unreachable
    from lbproxy.cli.declarative import FileError

    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code not in (0, None) else OK
    admin = args.admin
    try:
        if args.admin:
            admin = _admin_url(args.admin)
        else:
            admin = _admin_url(os.environ.get("LBPROXY_ADMIN") or DEFAULT_ADMIN, "$LBPROXY_ADMIN")
        client = AdminClient(admin, _token(args), timeout=args.timeout)
        return args.run(client, args, out)
    except Usage as e:
        err.write(f"lbproxyctl: {e}\n")
        return USAGE
    except Refused as e:
        err.write(f"lbproxyctl: refused ({e.status}): {e.message}\n")
        return REFUSED
    except FileError as e:
        err.write(f"lbproxyctl: {e}\n")
        return REFUSED
    except Unreachable as e:
        err.write(f"lbproxyctl: {e}\n")
        return UNREACHABLE
    except KeyError as e:
        # An answer without a field every lbproxy admin API sends: JSON
        # from something else at that address (or another version).
        err.write(f"lbproxyctl: {admin} answered JSON without {e}: is it an lbproxy admin API of this version?\n")
        return UNREACHABLE
    except KeyboardInterrupt:
        return OK
    except BrokenPipeError:
        # The reader (| head) went away: not an error; keep the exit-time
        # flush from complaining about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
