"""
The parts of the failover measurement that need no namespaces: reading
the load client's records into figures, and the documentation's figures
from C{docs/_data/failover.json}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.netload import LoadLog

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_load_log_reads_records_as_they_are_written(tmp_path):
    """
    Lines are read incrementally (a half-written line waits for its end);
    C{complete(t)} holds only once every attempt started by C{t} has ended
    and a later one started; the summary counts failures by reason,
    connections by the node that relayed them, and the slow ones.
    """
    path = tmp_path / "load.txt"
    write(path, "S 0 1.000000\nS 1 1.005000\nE 0 1.000000 1.001000 1 10.0.0.11\nS 2 1.0")
    log = LoadLog(path).refresh()
    assert sorted(log.started) == [0, 1] and list(log.ended) == [0]
    assert log.complete(1.004) and not log.complete(1.006)
    write(path, "10000\nE 1 1.005000 2.100000 1 10.0.0.12\n")
    assert log.complete(1.006) and not log.complete(1.02)
    write(path, "E 2 1.010000 3.010000 0 timeout\n")
    assert log.last_success_before(2.0)[1] == 1.001
    assert [r[3] for r in log.successes(1.001)] == ["10.0.0.12"]
    summary = log.summary(1.0, 1.02, {"10.0.0.11": "n1", "10.0.0.12": "n2"})
    assert summary["attempts"] == 3 and summary["failed"] == 1
    assert summary["failures"] == {"timeout": 1}
    assert summary["served_by"] == {"n1": 1, "n2": 1}
    assert summary["slow"] == 1  # 1.095 s: waited for a SYN retransmission
    assert summary["latency_max_ms"] == 1095.0
    # Attempt 2 failed while open at an event at 1.5 s: explained; a
    # failure that started after service was back (1.008) is not.
    assert log.around(1.0, 1.02, event=1.5, first=1.02) == {"open_at_event": 2, "failed_unexplained": 0}
    assert log.around(1.0, 1.02, event=1.5, first=1.008)["failed_unexplained"] == 1
    # An event known only to lie in [3.02, 3.5] (a move seen by polling):
    # attempt 2, failed at 3.01, ended before it and is unexplained; with
    # the window opening at 3.0 it was open in it.
    assert log.around(1.0, 1.02, event=3.02, first=1.02, event_end=3.5) == {
        "open_at_event": 0, "failed_unexplained": 1}
    assert log.around(1.0, 1.02, event=3.0, first=1.02, event_end=3.5) == {
        "open_at_event": 1, "failed_unexplained": 0}


def test_docs_figures_come_from_the_results_file():
    """
    The substitutions the design document quotes are read from
    C{docs/_data/failover.json}, which holds every phase; a file without
    them renders C{(not measured)} rather than a number.
    """
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        from failover_docs import FIGURES, failover_figures
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    data = json.loads((ROOT / "docs" / "_data" / "failover.json").read_text())
    figures = failover_figures(data)
    assert "(not measured)" not in figures.values(), figures
    assert figures["failover_gap"] == f'{data["summary"]["failover"]["gap_s"]["median"]:.1f}'
    assert figures["failover_command"].startswith("sudo PYTHONPATH=. ")
    assert all(failover_figures({})[name] == "(not measured)" for name, *_ in FIGURES)
    design = (ROOT / "docs" / "design.rst").read_text()
    for name in ("failover_gap", "failover_takeover", "scale_up_failed_max", "scale_down_failed_each"):
        assert f"|{name}|" in design, name
