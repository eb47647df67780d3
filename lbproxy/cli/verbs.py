"""
The verbs of C{lbproxyctl}: each takes the L{AdminClient}, the parsed
arguments and the output stream, and returns the exit code (refusals and
unreachable servers are raised and mapped to codes by L{lbproxy.cli.main}).
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import quote

from lbproxy.cli.client import AdminClient
from lbproxy.cli.output import as_json, pairs, table, when


def _svc(name: str) -> str:
    return "/services/" + quote(name, safe="")


def _backend_path(service: str, backend: str) -> str:
    return f"{_svc(service)}/backends/{quote(backend, safe='')}"


def _usage(message: str) -> Exception:
    from lbproxy.cli.main import Usage

    return Usage(message)


def _done(args: Any, out: Any, body: Any, line: str) -> int:
    if args.json:
        as_json(body, out)
    else:
        out.write(line + "\n")
    return 0


# Reads ------------------------------------------------------------------------


def status(client: AdminClient, args: Any, out: Any) -> int:
    body = client.get("/status").body
    if args.json:
        as_json(body, out)
        return 0
    rows = [("lbproxy", body.get("lbproxy")), ("node", body.get("node")),
            ("state", body.get("state")), ("started", when(body.get("started"))),
            ("uptime", f"{body.get('uptime', 0):.0f}s"), ("config version", body.get("config_version")),
            ("strategy", body.get("strategy")), ("backends", body.get("backends")),
            ("active connections", body.get("active_connections")),
            ("feed subscribers", body.get("feed_subscribers"))]
    store = body.get("store")
    if isinstance(store, dict):
        rows.append(("store", " ".join(f"{k}={v}" for k, v in store.items() if not isinstance(v, (dict, list)))))
    auth = body.get("auth") or {}
    rows.append(("token", auth.get("token")))
    pairs(rows, out)
    return 0


def services(client: AdminClient, args: Any, out: Any) -> int:
    answer = client.get("/services")
    if args.json:
        as_json(answer.body, out)
        return 0
    rows = [(s["name"], s.get("listen"), s.get("listening"), s["strategy"]["name"],
             len(s.get("backends", ())), s.get("active_connections")) for s in answer.body["services"]]
    table(("NAME", "LISTEN", "LISTENING", "STRATEGY", "BACKENDS", "ACTIVE"), rows, out)
    out.write(f"(config version {answer.version})\n")
    return 0


def backends(client: AdminClient, args: Any, out: Any) -> int:
    answer = client.get(_svc(args.service) + "/backends")
    if args.json:
        as_json(answer.body, out)
        return 0
    rows = []
    for b in answer.body["backends"]:
        health = b.get("health") or {}
        stats = b.get("stats") or {}
        rows.append((b["id"], b.get("address"), b.get("weight"), b.get("admin_state"), b.get("state"),
                     "yes" if health.get("healthy") else ("no: " + str(health.get("reason") or "-")),
                     stats.get("active"), stats.get("total"), stats.get("failures")))
    table(("ID", "ADDRESS", "WEIGHT", "ADMIN", "STATE", "HEALTHY", "ACTIVE", "TOTAL", "FAILURES"), rows, out)
    return 0


def history(client: AdminClient, args: Any, out: Any) -> int:
    if args.version is not None:
        body = client.get(f"/history/{args.version}").body
        if args.json:
            as_json(body, out)
            return 0
        out.write(f"version {body['version']}  {when(body.get('time'))}  by {body.get('by')}: "
                  f"{body.get('summary')}\n")
        for change in body.get("diff") or ():
            out.write(f"  {change.get('path')}: {_short(change.get('old'))} -> {_short(change.get('new'))}\n")
        return 0
    body = client.get("/history").body
    if args.json:
        as_json(body, out)
        return 0
    table(("VERSION", "TIME", "BY", "SUMMARY"),
          [(e["version"], when(e.get("time")), e.get("by"), e.get("summary")) for e in body], out)
    return 0


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Changes of one backend, strategy, rollback ---------------------------------------


def add(client: AdminClient, args: Any, out: Any) -> int:
    host, sep, port = args.address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise _usage(f"a backend is HOST:PORT, not {args.address!r}")
    body: dict[str, Any] = {"host": host, "port": int(port)}
    for key in ("weight", "id", "state"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    answer = client.call("POST", _svc(args.service) + "/backends", body, args.if_match)
    b = answer.body
    return _done(args, out, b, f"added backend {b['id']} ({b['address']}) to {args.service}; "
                               f"config version {answer.version}")


def remove(client: AdminClient, args: Any, out: Any) -> int:
    path = _backend_path(args.service, args.backend) + ("?force=true" if args.force else "")
    answer = client.call("DELETE", path, None, args.if_match)
    b = answer.body
    return _done(args, out, b, f"backend {args.backend} of {args.service}: {b['state']} "
                               f"({b['connections']} connections open, {b['closed']} closed); "
                               f"config version {answer.version}")


def _patch(client: AdminClient, args: Any, out: Any, body: dict[str, Any], what: str) -> int:
    answer = client.call("PATCH", _backend_path(args.service, args.backend), body, args.if_match)
    return _done(args, out, answer.body, f"backend {args.backend} of {args.service}: {what}; "
                                         f"config version {answer.version}")


def set_state(state: str) -> Callable[[AdminClient, Any, Any], int]:
    def run(client: AdminClient, args: Any, out: Any) -> int:
        return _patch(client, args, out, {"state": state}, f"state {state}")

    run.__name__ = f"set_{state}"
    return run


def weight(client: AdminClient, args: Any, out: Any) -> int:
    return _patch(client, args, out, {"weight": args.weight}, f"weight {args.weight}")


def strategy(client: AdminClient, args: Any, out: Any) -> int:
    path = _svc(args.service) + "/strategy"
    if args.name is None:
        if args.options is not None or args.if_match is not None:
            raise _usage("--options and --if-match need a strategy NAME to set")
        answer = client.get(path)
        return _done(args, out, answer.body, f"{answer.body['name']} {json.dumps(answer.body.get('options') or {})}")
    body: dict[str, Any] = {"name": args.name}
    if args.options is not None:
        try:
            body["options"] = json.loads(args.options)
        except ValueError as e:
            raise _usage(f"--options must be JSON: {e}") from None
    answer = client.call("PUT", path, body, args.if_match)
    return _done(args, out, answer.body, f"strategy of {args.service}: {answer.body['name']}; "
                                         f"config version {answer.version}")


def rollback(client: AdminClient, args: Any, out: Any) -> int:
    answer = client.call("POST", f"/history/{args.version}/rollback", {}, args.if_match)
    return _done(args, out, answer.body, f"rolled back to version {args.version}: "
                                         f"now config version {answer.version}")


# Declarative --------------------------------------------------------------------


def _plan(client: AdminClient, path: str) -> tuple[list[Any], int | None]:
    from lbproxy.cli import declarative

    bodies = declarative.read_file(path)
    answer = client.get("/services")
    current = {s["name"]: s for s in answer.body["services"]}
    return declarative.plan(bodies, current), answer.version


def diff(client: AdminClient, args: Any, out: Any) -> int:
    steps, version = _plan(client, args.file)
    changes = [c for s in steps for c in s.changes]
    if args.json:
        as_json({"version": version, "changes": [c.to_json() for c in changes]}, out)
        return 0
    for c in changes:
        out.write(c.line() + "\n")
    return 0


def apply(client: AdminClient, args: Any, out: Any) -> int:
    steps, version = _plan(client, args.file)
    if args.if_match is not None:
        # Reviewed at that version (diff --json says which): the server
        # refuses the change if anything changed since.
        version = args.if_match
    report: dict[str, Any] = {"dry_run": args.dry_run, "from_version": version,
                              "created": [], "replaced": [], "unchanged": [],
                              "changes": [c.to_json() for step in steps for c in step.changes]}
    done = {"create": "created", "replace": "replaced", "unchanged": "unchanged"}
    for step in steps:
        if not args.json:
            for c in step.changes:
                out.write(c.line() + "\n")
        report[done[step.action]].append(step.name)
    changed = [step.body for step in steps if step.action != "unchanged"]
    if changed and not args.dry_run:
        # One version for the whole file (PATCH /services): refused whole, nothing half-applied.
        answer = client.call("PATCH", "/services", {"services": changed}, version)
        version = answer.version
    report["version"] = version
    if args.json:
        as_json(report, out)
        return 0
    parts = [f"{len(report[k])} {k}" for k in ("created", "replaced", "unchanged")]
    out.write(f"{'dry run: ' if args.dry_run else ''}{', '.join(parts)}"
              f"{' (nothing sent)' if args.dry_run else ''}; config version {version}\n")
    return 0


# The feed -------------------------------------------------------------------------


TRAFFIC = ("stats", "route")


def events(client: AdminClient, args: Any, out: Any) -> int:
    import signal

    # Ctrl-C ends the feed with exit 0 even when started where SIGINT was
    # ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    wanted = set(args.type or ())
    for event_id, kind, data in client.events():
        if wanted and kind not in wanted:
            continue
        if not wanted and not args.all and kind in TRAFFIC:
            continue
        try:
            body = json.loads(data)
        except ValueError:
            body = data
        if args.json:
            out.write(json.dumps({"id": event_id, "event": kind, "data": body}, separators=(",", ":")) + "\n")
        else:
            out.write(f"{event_id or '-'} {kind} {_event_line(kind, body)}\n")
        out.flush()
    from lbproxy.cli.client import Unreachable

    raise Unreachable(f"the event feed of {client.base} ended")


def _event_line(kind: str, body: Any) -> str:
    if not isinstance(body, dict):
        return _short(body, 200)
    service = body.get("service")
    head = f"service={service}" if service else ""
    if kind in ("config", "snapshot", "reset"):
        config = body.get("config") or {}
        rest = f"version={config.get('version', body.get('version'))} backends={len(config.get('backends', ()))}"
    elif kind == "service":
        rest = f"state={body.get('state')} version={body.get('version')}"
    else:
        rest = " ".join(f"{k}={_short(v, 60)}" for k, v in body.items()
                        if k != "service" and not isinstance(v, (dict, list)))
    return " ".join(p for p in (head, rest) if p)
