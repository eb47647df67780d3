"""
Sphinx directives that render lbproxy's documentation from its code at
build time, so the pages cannot drift from what the program does.

 - C{lbproxy-options}: every command-line flag of C{twistd lbproxy}, from
   L{lbproxy.startup.tap.Options}.
 - C{lbproxy-help}: the literal output of C{twistd lbproxy --help}.
 - C{lbproxy-strategies}: every strategy plugin found, with its options
   schema.
 - C{lbproxy-interfaces}: the interfaces in L{lbproxy.interfaces}.
 - C{lbproxy-openapi}: the admin API from L{lbproxy.web.openapi}.
 - C{lbproxy-bench}: the benchmark results file C{docs/_data/bench.json}.

Substitutions such as C{|bench_close_fast_cpu|} carry the benchmark's
figures into the prose (see L{bench_figures}).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "_data"
log = logging.getLogger(__name__)

_SPECIAL = re.compile(r"([\\`*_|\[\]])")


def escape(text: str) -> str:
    """
    Plain text safe to put into reST.
    """
    return _SPECIAL.sub(r"\\\1", text)


def literal(text: str) -> str:
    """
    Inline literal, whatever C{text} holds.
    """
    text = str(text)
    if "``" in text or not text.strip():
        return ":literal:`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`"
    if text != text.strip():
        return ":literal:`" + text.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return "``" + text + "``"


_FLAG = re.compile(r"(?<![\w`-])(--[a-z][a-z0-9-]*)")


def prose(text: str) -> str:
    """
    Plain text as reST with its command-line flags (C{--name}) as inline
    literals, so they read (and copy) as the flags they are.
    """
    parts = _FLAG.split(str(text))
    return "".join(escape(p) if i % 2 == 0 else "\\ " + literal(p) + "\\ " for i, p in enumerate(parts))


def epytext(doc: str) -> str:
    """
    Turn an epytext docstring into reST: C{x}/L{x}/I{x}/B{x} become inline
    literals and C{@param}/C{@return}/C{@raise}/C{@ivar} become fields.
    """
    doc = textwrap.dedent(inspect.cleandoc(doc or ""))
    out: list[str] = []
    i = 0
    plain = ""
    while i < len(doc):
        m = re.compile(r"[CLIBU]\{").match(doc, i) if doc[i] in "CLIBU" and (i == 0 or not doc[i - 1].isalnum()) else None
        if m:
            depth, j = 1, m.end()
            while j < len(doc) and depth:
                depth += {"{": 1, "}": -1}.get(doc[j], 0)
                j += 1
            inner = doc[m.end():j - 1]
            out.append(escape(plain))
            plain = ""
            out.append(literal(" ".join(inner.split())) + "\\ ")
            i = j
            continue
        plain += doc[i]
        i += 1
    out.append(escape(plain))
    text = "".join(out)
    text = re.sub(r"^@param (\w+):", r":param \1:", text, flags=re.M)
    text = re.sub(r"^@ivar (\w+):", r":ivar \1:", text, flags=re.M)
    text = re.sub(r"^@return:", ":returns:", text, flags=re.M)
    text = re.sub(r"^@raise ([^:]+):", r":raises \1:", text, flags=re.M)
    return text


class _RstDirective(SphinxDirective):
    """
    A directive that writes reST and parses it in place (titles allowed).
    """

    has_content = False

    def rst(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        lines = self.rst()
        node = nodes.section()
        node.document = self.state.document
        source = f"<{self.name}>"
        nested_parse_with_titles(self.state, StringList(lines, source), node)
        return node.children


# -- command line -------------------------------------------------------------


def command_line_options() -> list[dict[str, Any]]:
    """
    Every flag of L{lbproxy.startup.tap.Options}: long name, short name, argument,
    default and help, in the order C{--help} lists them.
    """
    from twisted.python import usage

    from lbproxy.startup.tap import Options

    out = []
    for long, short, default, doc, *_ in Options.optParameters:
        out.append({"long": long, "short": short, "arg": long.upper().replace("-", "_"),
                    "default": default, "doc": doc})
    for long, short, doc, *_ in Options.optFlags:
        out.append({"long": long, "short": short, "arg": None, "default": None, "doc": doc})
    seen: dict[Any, dict[str, Any]] = {}
    for name, method in vars(Options).items():
        if not name.startswith("opt_") or not callable(method):
            continue
        flag = name[4:].replace("_", "-")
        if method in seen:
            if len(flag) == 1:
                seen[method]["short"] = flag
            continue
        if getattr(usage.Options, name, None) is method:
            continue
        params = inspect.signature(method).parameters
        entry = {"long": flag, "short": None, "arg": flag.upper() if len(params) > 1 else None,
                 "default": None, "doc": " ".join(inspect.cleandoc(method.__doc__ or "").split())}
        seen[method] = entry
        out.append(entry)
    return out


class OptionsDirective(_RstDirective):
    def rst(self) -> list[str]:
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 28 14 58", "",
                 "   * - Flag", "     - Default", "     - Meaning"]
        for o in command_line_options():
            flag = f"--{o['long']}" + (f" {o['arg']}" if o["arg"] else "")
            if o["short"]:
                flag += f", -{o['short']}" + (f" {o['arg']}" if o["arg"] else "")
            default = literal(o["default"]) if o["default"] is not None else ""
            lines += [f"   * - {literal(flag)}", f"     - {default}", f"     - {prose(o['doc'])}"]
        return lines


class HelpDirective(SphinxDirective):
    """
    The literal output of C{twistd lbproxy --help}, run at build time.
    """

    def run(self) -> list[nodes.Node]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        code = "import sys; sys.argv = ['twistd', 'lbproxy', '--help']; from twisted.scripts.twistd import run; run()"
        proc = subprocess.run([sys.executable, "-c", code],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        if proc.returncode != 0:
            log.warning("twistd lbproxy --help failed (%s): %s", proc.returncode, proc.stderr[-2000:])
        text = proc.stdout
        if "--listen" not in text:
            log.warning("twistd lbproxy --help printed no --listen: %r", text[:500])
        node = nodes.literal_block(text, text)
        node["language"] = "text"
        return [node]


# -- strategies and interfaces --------------------------------------------------


class StrategiesDirective(_RstDirective):
    def rst(self) -> list[str]:
        from lbproxy.policy.plugins import strategy_factories

        lines: list[str] = []
        for name, factory in sorted(strategy_factories().items()):
            lines += [f"{literal(name)}", f"   {escape(factory.description)}", ""]
            if getattr(factory, "uses_weights", True) is False:
                lines += ["   Ignores backend weights (weight 0 still takes a backend out).", ""]
            props = factory.options_schema.get("properties") or {}
            if props:
                lines += ["   Options:", ""]
                for key, schema in props.items():
                    lines.append(f"   - {literal(key)}: {schema_summary(schema)}")
                lines.append("")
            else:
                lines += ["   No options.", ""]
        return lines


class InterfacesDirective(_RstDirective):
    def rst(self) -> list[str]:
        import lbproxy.interfaces as module
        from zope.interface.interface import InterfaceClass, Method

        lines: list[str] = []
        for name, iface in vars(module).items():
            if not isinstance(iface, InterfaceClass) or iface.__module__ != module.__name__:
                continue
            lines += [name, "-" * len(name), ""]
            lines += epytext(iface.__doc__ or "").splitlines() + [""]
            for attr in iface.names():
                desc = iface[attr]
                if isinstance(desc, Method):
                    sig = desc.getSignatureString()
                    lines += [f"**{escape(attr)}**\\ {literal(sig)}", ""]
                    lines += ["   " + l if l else "" for l in epytext(desc.getDoc() or "").splitlines()]
                    lines.append("")
                else:
                    lines += [f"**{escape(attr)}** (attribute)", "",
                              "   " + escape(desc.getDoc() or ""), ""]
        return lines


class MetricsDirective(_RstDirective):
    """
    Every metric C{GET /metrics} exposes, collected from a balancer with one
    backend (on a fake clock) when the documentation is built.
    """

    def rst(self) -> list[str]:
        from twisted.internet.task import Clock

        from lbproxy.policy.balancer import Balancer
        from lbproxy.model.config import Backend, Config
        from lbproxy.policy.plugins import strategy_factories
        from lbproxy.web.metrics import metrics_registry

        class Feed:
            subscriber_count = 0
            cut_offs = 0

        config = Config(version=1, backends=(Backend(id="b1", host="127.0.0.1", port=9001),))
        balancer = Balancer(config, strategy_factories(), reactor=Clock())
        balancer.pool.candidates[0].stats.observe_connect(0.001)
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 35 10 15 40", "",
                 "   * - Metric", "     - Type", "     - Labels", "     - Meaning"]
        for family in metrics_registry(balancer, Feed()).collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = sorted({k for sample in family.samples for k in sample.labels} - {"version", "strategy"}
                            if not family.name == "lbproxy" else {"version", "strategy"})
            lines += [f"   * - {literal(name if family.type != 'info' else family.name + '_info')}",
                      f"     - {family.type}", f"     - {', '.join(literal(l) for l in labels)}",
                      f"     - {prose(family.documentation)}"]
        return lines


# -- OpenAPI --------------------------------------------------------------------


def schema_summary(schema: dict[str, Any], components: dict[str, Any] | None = None) -> str:
    """
    One line of reST saying what a JSON schema accepts.
    """
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f":ref:`{name} <schema-{name.lower()}>`" if components is not None else escape(name)
    parts = []
    kind = schema.get("type")
    if kind == "array" and "items" in schema:
        parts.append("array of " + schema_summary(schema["items"], components))
    elif isinstance(kind, list):
        parts.append(" or ".join(escape(k) for k in kind))
    elif kind:
        parts.append(escape(kind))
    if "enum" in schema:
        parts.append("one of " + ", ".join(literal(json.dumps(v)) for v in schema["enum"]))
    for key, word in (("minimum", "min"), ("maximum", "max"), ("minLength", "min length"),
                      ("pattern", "pattern"), ("minProperties", "at least this many fields:")):
        if key in schema and not (key == "minimum" and schema.get("exclusiveMinimum")):
            parts.append(f"{word} {literal(schema[key])}")
    if schema.get("exclusiveMinimum"):
        parts.append(f"above {literal(schema.get('minimum'))}")
    if "default" in schema:
        parts.append(f"default {literal(json.dumps(schema['default']))}")
    if schema.get("nullable"):
        parts.append("or null")
    if kind == "object" and "properties" in schema and components is not None:
        parts.append("fields " + ", ".join(literal(k) for k in schema["properties"]))
    if "description" in schema:
        parts.append("- " + escape(schema["description"]))
    return ", ".join(parts) if parts else "any"


class OpenAPIDirective(_RstDirective):
    def rst(self) -> list[str]:
        from lbproxy.web.openapi import openapi_document

        doc = openapi_document()
        components = doc["components"]["schemas"]
        lines = [escape(doc["info"]["description"]), "",
                 f"OpenAPI {literal(doc['openapi'])}, API version {literal(doc['info']['version'])}.", ""]
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                title = f"{method.upper()} {path}"
                lines += [f".. _api-{method}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')}:", "",
                          escape(title), "-" * (len(escape(title)) + 2), "", escape(op["summary"]), ""]
                if op.get("description"):
                    lines += [escape(" ".join(op["description"].split())), ""]
                params = op.get("parameters") or []
                if params:
                    lines += ["**Parameters**", ""]
                    for p in params:
                        req = "required" if p.get("required") else "optional"
                        lines.append(f"- {literal(p['name'])} ({p['in']}, {req}): "
                                     f"{schema_summary(p.get('schema', {}), components)}"
                                     + (f" - {escape(p['description'])}" if p.get("description") else ""))
                    lines.append("")
                body = op.get("requestBody")
                if body:
                    for ctype, media in body["content"].items():
                        lines += [f"**Request body** ({literal(ctype)}): "
                                  f"{schema_summary(media['schema'], components)}", ""]
                lines += ["**Responses**", ""]
                for code, resp in op["responses"].items():
                    what = []
                    for ctype, media in (resp.get("content") or {}).items():
                        what.append(f"{literal(ctype)} {schema_summary(media.get('schema', {}), components)}")
                    headers = ", ".join(literal(h) for h in resp.get("headers") or {})
                    lines.append(f"- {literal(code)}: {escape(resp['description'])}"
                                 + (f" Body: {'; '.join(what)}." if what else "")
                                 + (f" Headers: {headers}." if headers else ""))
                lines.append("")
        lines += ["Schemas", "-------", ""]
        for name, schema in components.items():
            lines += [f".. _schema-{name.lower()}:", "", f"**{name}**", ""]
            if schema.get("description"):
                lines += [escape(schema["description"]), ""]
            props = schema.get("properties") or {}
            required = set(schema.get("required") or ())
            if props:
                for key, sub in props.items():
                    flag = " (required)" if key in required else ""
                    lines.append(f"- {literal(key)}{flag}: {schema_summary(sub, components)}")
                lines.append("")
            if schema.get("additionalProperties") is False:
                lines += ["No other fields are accepted.", ""]
            elif isinstance(schema.get("additionalProperties"), dict):
                lines += [f"Any field names, each: {schema_summary(schema['additionalProperties'], components)}.", ""]
        return lines


# -- benchmark ------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = DATA / name
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def bench_figures(bench: dict[str, Any] | None, store: dict[str, Any] | None,
                  store_big: dict[str, Any] | None, lock: dict[str, Any] | None = None) -> dict[str, str]:
    """
    The figures the prose quotes, formatted, by substitution name.  A
    figure the results do not hold is C{"(not measured)"} and logged.
    """
    out: dict[str, str] = {}
    missing: list[str] = []

    def put(name: str, value: Any, fmt: str = "{:,.0f}", optional: bool = False) -> None:
        if value is None:
            if not optional:
                missing.append(name)
            out[name] = "(not measured)"
        else:
            out[name] = fmt.format(value)

    s = (bench or {}).get("summary", {})
    for scenario in ("keepalive", "close", "bulk"):
        for proxy, short in (("haproxy", "haproxy"), ("lbproxy-fast", "fast"), ("lbproxy-twisted", "twisted")):
            key = "mib_s" if scenario == "bulk" else "rps"
            put(f"bench_{scenario}_{short}", _get(s, scenario, proxy, key))
            put(f"bench_{scenario}_{short}_cpu", _get(s, scenario, proxy, "req_per_cpu_s"))
            h, x = _get(s, scenario, "haproxy", key), _get(s, scenario, proxy, key)
            if short != "haproxy":
                put(f"bench_{scenario}_{short}_ratio", x / h if x and h else None, "{:.2f}")
                hc, xc = _get(s, scenario, "haproxy", "req_per_cpu_s"), _get(s, scenario, proxy, "req_per_cpu_s")
                put(f"bench_{scenario}_{short}_cpu_ratio", xc / hc if xc and hc else None, "{:.2f}")
        for proxy, short in (("haproxy", "haproxy"), ("lbproxy-fast", "fast"), ("lbproxy-twisted", "twisted")):
            put(f"bench_{scenario}_{short}_p50", _get(s, scenario, proxy, "p50_ms"), "{:.2f}")
            put(f"bench_{scenario}_{short}_p99", _get(s, scenario, proxy, "p99_ms"), "{:.2f}")
    put("bench_direct_nginx", _get(s, "keepalive", "direct-nginx", "rps"))
    for scenario in ("close", "keepalive"):
        put(f"bench_python_calls_{scenario}",
            _get(s, "python_calls", "lbproxy-fast", scenario, "python_calls_per_request"), "{:.1f}")
    for proxy, short in (("haproxy", "haproxy"), ("lbproxy-fast", "fast"), ("lbproxy-twisted", "twisted")):
        per = _get(bench or {}, "idle", proxy, "bytes_per_conn")
        put(f"bench_idle_{short}_kib", per / 1024 if per is not None else None, "{:.1f}")
        put(f"bench_idle_{short}_mib10k", per * 10000 / 1024**2 if per is not None else None, "{:.0f}")
    put("bench_idle_held", _get(bench or {}, "settings", "idle_held"))
    sse_name = next((n for n in ("lbproxy-fast+sse", "lbproxy-fast-sse") if _get(s, "keepalive", n)), None)
    fast, sse = _get(s, "keepalive", "lbproxy-fast", "rps"), _get(s, "keepalive", sse_name or "", "rps")
    put("bench_sse", sse)
    for key, short in (("rps", "rps"), ("req_per_cpu_s", "cpu")):
        runs = [r.get(key) for r in (_get(bench or {}, "raw", "keepalive", "lbproxy-fast") or []) if r.get(key)]
        spread = (max(runs) - min(runs)) / sorted(runs)[len(runs) // 2] * 100 if len(runs) > 1 else None
        put(f"bench_spread_{short}", spread, "{:.1f}")
    connected = _get(bench or {}, "settings", "subscribers_connected")
    if isinstance(connected, list):
        connected = min(connected) if connected else None
    put("bench_sse_subscribers", connected)
    cf, cs = _get(s, "close", "lbproxy-fast", "req_per_cpu_s"), _get(s, "close", sse_name or "", "req_per_cpu_s")
    put("bench_sse_close_cpu_change", (cs / cf - 1) * 100 if cs and cf else None, "{:+.1f}", optional=True)
    put("bench_sse_change", (sse / fast - 1) * 100 if sse and fast else None, "{:+.1f}")
    fcpu, scpu = _get(s, "keepalive", "lbproxy-fast", "req_per_cpu_s"), _get(s, "keepalive", sse_name or "", "req_per_cpu_s")
    put("bench_sse_cpu", scpu)
    put("bench_sse_cpu_change", (scpu / fcpu - 1) * 100 if scpu and fcpu else None, "{:+.1f}")
    worst = min((v for v in ((scpu / fcpu - 1) * 100 if scpu and fcpu else None,
                             (cs / cf - 1) * 100 if cs and cf else None) if v is not None), default=None)
    put("bench_sse_verdict", None if worst is None else ("meets" if worst > -5 else "does not meet"), "{}")
    put("bench_2w_fast_cpu", _get(s, "keepalive", "lbproxy-fast-2w", "req_per_cpu_s"))
    w2c = _get(s, "keepalive", "lbproxy-fast-2w", "req_per_cpu_s")
    put("bench_2w_cpu_ratio", w2c / fcpu if w2c and fcpu else None, "{:.2f}")
    put("bench_2t_haproxy_cpu", _get(s, "keepalive", "haproxy-2t", "req_per_cpu_s"))
    w1h, w2h = _get(s, "keepalive", "haproxy", "rps"), _get(s, "keepalive", "haproxy-2t", "rps")
    w2f = _get(s, "keepalive", "lbproxy-fast-2w", "rps")
    put("bench_2w_fast", w2f)
    put("bench_2t_haproxy", w2h)
    put("bench_2w_scale", w2f / fast if w2f and fast else None, "{:.2f}")
    put("bench_2t_scale", w2h / w1h if w2h and w1h else None, "{:.2f}")
    put("bench_2w_ratio", w2f / w2h if w2f and w2h else None, "{:.2f}")
    c1f, c2f = _get(s, "close", "lbproxy-fast", "rps"), _get(s, "close", "lbproxy-fast-2w", "rps")
    c1h, c2h = _get(s, "close", "haproxy", "rps"), _get(s, "close", "haproxy-2t", "rps")
    put("bench_2w_close_fast", c2f)
    put("bench_2t_close_haproxy", c2h)
    put("bench_2w_close_scale", c2f / c1f if c2f and c1f else None, "{:.2f}")
    put("bench_2t_close_scale", c2h / c1h if c2h and c1h else None, "{:.2f}")
    put("bench_time", (bench or {}).get("time"), "{}")
    put("bench_cpus", _get(bench or {}, "machine", "cpus"), "{}")
    put("bench_python", _get(bench or {}, "machine", "python"), "{}")
    put("bench_haproxy_version", _get(bench or {}, "machine", "haproxy"), "{}")
    settings = (bench or {}).get("settings") or {}
    put("bench_rounds", settings.get("rounds"), "{}")
    put("bench_duration", settings.get("duration"), "{}")
    put("bench_connections", settings.get("connections"), "{}")
    args = []
    for key, default in (("rounds", 3), ("duration", 5), ("connections", 50), ("workers", 2),
                         ("idle", 8000), ("subscribers", 20)):
        if key in settings and settings[key] != default:
            args.append(f"--{key} {settings[key]}")
    put("bench_command", ("python3 dev.py bench " + " ".join(args)).strip() if bench else None, "{}")

    # The worked example: cores for 50,000 new connections per second.
    target, utilisation = 50_000, 0.7
    put("plan_target", target)
    put("plan_utilisation", utilisation * 100)
    fc, hc = _get(s, "close", "lbproxy-fast", "req_per_cpu_s"), _get(s, "close", "haproxy", "req_per_cpu_s")
    put("plan_fast_cores_raw", target / fc if fc else None, "{:.1f}")
    put("plan_fast_cores", math.ceil(target / fc / utilisation) if fc else None, "{}")
    put("plan_haproxy_cores_raw", target / hc if hc else None, "{:.1f}")
    put("plan_haproxy_cores", math.ceil(target / hc / utilisation) if hc else None, "{}")
    put("plan_cost_close", hc / fc if hc and fc else None, "{:.2f}")
    hk, fk = _get(s, "keepalive", "haproxy", "req_per_cpu_s"), _get(s, "keepalive", "lbproxy-fast", "req_per_cpu_s")
    put("plan_cost_keepalive", hk / fk if hk and fk else None, "{:.2f}")
    hb, fb = _get(s, "bulk", "haproxy", "req_per_cpu_s"), _get(s, "bulk", "lbproxy-fast", "req_per_cpu_s")
    put("plan_cost_bulk", hb / fb if hb and fb else None, "{:.2f}")
    if fc:
        cores = math.ceil(target / fc / utilisation)
        put("plan_nodes_4", math.ceil(cores / 3) + 1)
    else:
        put("plan_nodes_4", None)
    put("plan_open", target * 2)
    for proxy, short in (("lbproxy-fast", "fast"), ("lbproxy-twisted", "twisted")):
        per = _get(bench or {}, "idle", proxy, "bytes_per_conn")
        put(f"plan_mem_mib_{short}", target * 2 * per / 1024**2 if per else None, "{:.0f}")
    bc = _get(s, "bulk", "lbproxy-fast", "req_per_cpu_s")
    put("plan_bulk_mib_per_cpu", bc, "{:,.0f}")
    put("plan_gbit_per_core", bc * 8 * 1.048576 / 1000 if bc else None, "{:.1f}")

    for name, data in (("store", store), ("store_big", store_big)):
        put(f"{name}_saves", _get(data or {}, "saves_per_second"))
        put(f"{name}_median", _get(data or {}, "median_ms"), "{:.2f}")
        put(f"{name}_p99", _get(data or {}, "p99_ms"), "{:.2f}")
        put(f"{name}_encode", _get(data or {}, "encode_ms"), "{:.2f}")
        put(f"{name}_backends", _get(data or {}, "backends"))
        put(f"{name}_bytes", _get(data or {}, "document_bytes"))
        put(f"{name}_command", _get(data or {}, "command"), "{}")
    for key in ("plain_one_thread_ns", "lock_one_thread_ns", "lock_two_threads_ns"):
        put(f"lock_{key[:-3]}", _get(lock or {}, key), "{:.0f}")
    lp, lo = _get(lock or {}, "plain_one_thread_ns"), _get(lock or {}, "lock_one_thread_ns")
    put("lock_extra_ns", lo - lp if lo and lp else None, "{:.0f}")
    put("lock_per_conn_us", (lo - lp) * 10 / 1000 if lo and lp else None, "{:.1f}")
    put("lock_per_conn_pct", (lo - lp) * 10 / 1e9 * fc * 100 if lo and lp and fc else None, "{:.0f}")
    put("conn_cpu_us", 1e6 / fc if fc else None, "{:.0f}")
    if missing:
        log.warning("benchmark figures missing from docs/_data: %s", ", ".join(missing))
    return out


class BenchDirective(_RstDirective):
    """
    The benchmark's medians as a table, with the run's settings.
    """

    def rst(self) -> list[str]:
        bench = _load("bench.json")
        if bench is None:
            log.warning("docs/_data/bench.json is missing: run python3 dev.py bench and copy "
                        "bench/results/latest.json there")
            return ["(No benchmark results.)"]
        s = bench["summary"]
        idle = bench.get("idle", {})
        names = [("haproxy", "HAProxy"), ("lbproxy-fast", "lbproxy fast"), ("lbproxy-twisted", "lbproxy twisted")]

        def cell(v: Any, fmt: str) -> str:
            return fmt.format(v) if v is not None else "-"

        def ratio(a: Any, b: Any) -> str:
            return f"{a / b:.2f}x" if a and b else "-"

        rows = [
            ("keep-alive req/s", "keepalive", "rps", "{:,.0f}"),
            ("one connection per request, req/s", "close", "rps", "{:,.0f}"),
            ("1 MiB bulk, MiB/s", "bulk", "mib_s", "{:,.0f}"),
            ("keep-alive p50 ms", "keepalive", "p50_ms", "{:.3f}"),
            ("keep-alive p99 ms", "keepalive", "p99_ms", "{:.3f}"),
            ("keep-alive requests per proxy CPU-second", "keepalive", "req_per_cpu_s", "{:,.0f}"),
            ("new connections per proxy CPU-second", "close", "req_per_cpu_s", "{:,.0f}"),
            ("bulk MiB per proxy CPU-second", "bulk", "req_per_cpu_s", "{:,.0f}"),
            ("system calls per new connection (strace)", "syscalls", "per_connection", "{:.1f}"),
            ("user CPU µs per new connection", "close", "user_us_per_req", "{:.1f}"),
            ("system CPU µs per new connection", "close", "sys_us_per_req", "{:.1f}"),
            ("Python calls per new connection (cProfile)", "python_calls",
             ("close", "python_calls_per_request"), "{:.1f}"),
            ("Python calls per keep-alive request", "python_calls",
             ("keepalive", "python_calls_per_request"), "{:.1f}"),
        ]
        lines = [".. list-table::", "   :header-rows: 1", "",
                 "   * - Median of the rounds", *[f"     - {n}" for _, n in names],
                 "     - fast / HAProxy", "     - twisted / HAProxy"]
        for label, scenario, key, fmt in rows:
            path = key if isinstance(key, tuple) else (key,)
            vals = [_get(s, scenario, n, *path) for n, _ in names]
            lines += [f"   * - {label}", *[f"     - {cell(v, fmt)}" for v in vals],
                      f"     - {ratio(vals[1], vals[0])}", f"     - {ratio(vals[2], vals[0])}"]
        vals = [_get(idle, n, "kib_per_10k_conns") for n, _ in names]
        vals = [v / 1024 if v is not None else None for v in vals]
        lines += ["   * - RSS MiB per 10,000 idle connections", *[f"     - {cell(v, '{:.1f}')}" for v in vals],
                  f"     - {ratio(vals[1], vals[0])}", f"     - {ratio(vals[2], vals[0])}", ""]
        notes = bench.get("notes") or []
        if notes:
            lines += ["Notes the benchmark recorded:", ""] + [f"- {escape(n)}" for n in notes] + [""]
        return lines


# -- setup ----------------------------------------------------------------------


def _prolog(app: Any, config: Any) -> None:
    figures = bench_figures(_load("bench.json"), _load("store-rate.json"), _load("store-rate-1000.json"),
                            _load("lock-cost.json"))
    subs = "\n".join(f".. |{k}| replace:: {escape(v)}" for k, v in figures.items())
    config.rst_prolog = (config.rst_prolog or "") + "\n" + subs + "\n"


def setup(app: Any) -> dict[str, Any]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    app.add_directive("lbproxy-options", OptionsDirective)
    app.add_directive("lbproxy-help", HelpDirective)
    app.add_directive("lbproxy-strategies", StrategiesDirective)
    app.add_directive("lbproxy-interfaces", InterfacesDirective)
    app.add_directive("lbproxy-openapi", OpenAPIDirective)
    app.add_directive("lbproxy-metrics", MetricsDirective)
    app.add_directive("lbproxy-bench", BenchDirective)
    app.connect("config-inited", _prolog)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
