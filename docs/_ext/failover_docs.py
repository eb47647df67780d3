"""
The measured failover figures in the documentation, from
C{docs/_data/failover.json} (written by C{bench/failover.py}).

 - Substitutions such as C{|failover_gap|} carry the figures into the
   prose (see L{failover_figures}).
 - C{lbproxy-failover}: a table of every phase with its figures per round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from lbproxy_docs import escape, literal

DATA = Path(__file__).resolve().parents[1] / "_data" / "failover.json"
log = logging.getLogger(__name__)

#: (substitution, phase, figure, statistic, format)
FIGURES = [
    ("failover_gap", "failover", "gap_s", "median", "{:.1f}"),
    ("failover_gap_min", "failover", "gap_s", "min", "{:.1f}"),
    ("failover_gap_max", "failover", "gap_s", "max", "{:.1f}"),
    ("failover_takeover", "failover", "vrrp_takeover_s", "median", "{:.1f}"),
    ("failover_takeover_max", "failover", "vrrp_takeover_s", "max", "{:.1f}"),
    ("failover_failed", "failover", "failed", "median", "{:.0f}"),
    ("failover_failed_min", "failover", "failed", "min", "{:.0f}"),
    ("failover_failed_max", "failover", "failed", "max", "{:.0f}"),
    ("failover_slow", "failover", "slow", "median", "{:.0f}"),
    ("failover_acked", "failover", "acknowledged_changes", "min", "{:.0f}"),
    ("failover_acked_present", "failover", "acknowledged_present", "min", "{:.0f}"),
    ("failover_listed", "failover", "dead_node_listed_s", "median", "{:.0f}"),
    ("rejoin_time", "rejoin", "rejoin_s", "median", "{:.1f}"),
    ("rejoin_failed_max", "rejoin", "failed", "max", "{:.0f}"),
    ("scale_up_join", "scale_up", "join_s", "median", "{:.1f}"),
    ("scale_up_failed_max", "scale_up", "failed", "max", "{:.0f}"),
    ("scale_up_attempts", "scale_up", "attempts", "median", "{:.0f}"),
    ("scale_down_handover", "scale_down", "vrrp_handover_s", "median", "{:.2f}"),
    ("scale_down_leave", "scale_down", "leave_s", "median", "{:.1f}"),
    ("scale_down_failed_max", "scale_down", "failed", "max", "{:.0f}"),
    ("scale_down_slow_max", "scale_down", "slow", "max", "{:.0f}"),
    ("scale_down_attempts", "scale_down", "attempts", "median", "{:.0f}"),
    ("scale_down_open_max", "scale_down", "open_at_event", "max", "{:.0f}"),
    ("scale_down_unexplained_max", "scale_down", "failed_unexplained", "max", "{:.0f}"),
    ("failover_unexplained_max", "failover", "failed_unexplained", "max", "{:.0f}"),
    ("no_hold_slow", "scale_down_no_hold", "slow", "median", "{:.0f}"),
    ("no_hold_failed_max", "scale_down_no_hold", "failed", "max", "{:.0f}"),
    ("no_hold_latency_max", "scale_down_no_hold", "latency_max_ms", "max", "{:,.0f}"),
]

#: (substitution, phase, figure, format): the figure of each round, listed.
EACH = [
    ("scale_down_failed_each", "scale_down", "failed", "{}"),
    ("scale_down_open_each", "scale_down", "open_at_event", "{}"),
    ("scale_down_p50_each", "scale_down", "latency_p50_ms", "{:.1f}"),
    ("no_hold_failed_each", "scale_down_no_hold", "failed", "{}"),
    ("no_hold_slow_each", "scale_down_no_hold", "slow", "{}"),
    ("failover_open_each", "failover", "open_at_event", "{}"),
]


def load() -> dict[str, Any] | None:
    return json.loads(DATA.read_text()) if DATA.exists() else None


def failover_figures(data: dict[str, Any] | None) -> dict[str, str]:
    """
    The figures the prose quotes, formatted, by substitution name; a
    figure the results do not hold is C{"(not measured)"} and logged.
    """
    out: dict[str, str] = {}
    missing = []
    summary = (data or {}).get("summary", {})
    for name, phase, key, stat, fmt in FIGURES:
        value = summary.get(phase, {}).get(key, {}).get(stat)
        if value is None:
            missing.append(name)
            out[name] = "(not measured)"
        else:
            out[name] = fmt.format(value)
    rounds = (data or {}).get("rounds") or []
    for name, phase, key, fmt in EACH:
        values = [r.get(phase, {}).get(key) for r in rounds]
        if not values or None in values:
            missing.append(name)
            out[name] = "(not measured)"
        else:
            out[name] = ", ".join(fmt.format(v) for v in values)
    settings = (data or {}).get("settings", {})
    for name, value in (("failover_command", (data or {}).get("command")), ("failover_time", (data or {}).get("time")),
                        ("failover_rounds", settings.get("rounds")), ("failover_rate", settings.get("rate")),
                        ("failover_cpus", (data or {}).get("machine", {}).get("cpus"))):
        if value is None:
            missing.append(name)
        out[name] = "(not measured)" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
    if missing:
        log.warning("failover figures missing from docs/_data/failover.json: %s", ", ".join(missing))
    return out


PHASES = [
    ("failover", "the master dies (SIGKILL, link down)", "gap_s", "no service"),
    ("rejoin", "the dead node boots and rejoins as backup", "rejoin_s", "to rejoin"),
    ("scale_up", "a third node joins", "join_s", "to join"),
    ("scale_down", "the master leaves gracefully, address held on lo", "vrrp_handover_s", "handover"),
    ("scale_down_no_hold", "the next master leaves without the hold", "vrrp_handover_s", "handover"),
]


class FailoverDirective(SphinxDirective):
    """Every phase of the failover benchmark, with its figures per round."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        data = load()
        if data is None:
            log.warning("docs/_data/failover.json is missing: run bench/failover.py")
            lines = ["(No failover results.)"]
        else:
            lines = [".. list-table::", "   :header-rows: 1", "",
                     "   * - Phase (figures of each round)", "     - Connections tried",
                     "     - Open at the event", "     - Failed", "     - Waited for a SYN retry",
                     "     - Median latency, ms", "     - Time, s"]

            def each(per: list[dict[str, Any]], key: str, fmt: str = "{}") -> str:
                return ", ".join(fmt.format(p[key]) if p.get(key) is not None else "-" for p in per)

            for phase, what, key, label in PHASES:
                per = [r[phase] for r in data["rounds"] if phase in r]
                if not per:
                    continue
                lines += [f"   * - {what}", f"     - {each(per, 'attempts')}", f"     - {each(per, 'open_at_event')}",
                          f"     - {each(per, 'failed')}", f"     - {each(per, 'slow')}",
                          f"     - {each(per, 'latency_p50_ms', '{:.1f}')}",
                          f"     - {label}: {each(per, key, '{:.2f}')}"]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, "<lbproxy-failover>"), node)
        return node.children


def _prolog(app: Any, config: Any) -> None:
    subs = "\n".join(f".. |{k}| replace:: {literal(v) if k == 'failover_command' and v[0] != '(' else escape(v)}"
                     for k, v in failover_figures(load()).items())
    config.rst_prolog = (config.rst_prolog or "") + "\n" + subs + "\n"


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("lbproxy-failover", FailoverDirective)
    app.connect("config-inited", _prolog)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
