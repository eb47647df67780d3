"""
The documentation builds with warnings as errors, and the pages generated
from the code say what the code does: every command-line flag, every API
operation and every interface method appears, and the documented examples
are valid.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The Sphinx build (module fixture) may take longer than the default limit.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The HTML docs built by C{sphinx-build -W} into a temporary directory."""
    out = tmp_path_factory.mktemp("docs-html")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def text_of(built: Path, page: str) -> str:
    raw = (built / page).read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def test_docs_build_without_warnings(built):
    """C{sphinx-build -W} succeeds and writes every page of the toctree."""
    for page in ("index", "install", "config", "guide-services", "operations", "cluster", "api", "plugins",
                 "interfaces", "design", "capacity"):
        assert (built / f"{page}.html").exists(), page


def test_every_command_line_flag_is_documented(built):
    """Each flag that C{lbproxy.startup.tap.Options} accepts, parameters, switches
    and C{opt_} methods alike, appears in the user guide's flag table."""
    from lbproxy.startup.tap import Options

    page = text_of(built, "install.html")
    names = [p[0] for p in Options.optParameters] + [f[0] for f in Options.optFlags] + ["backend"]
    for name in names:
        assert f"--{name}" in page, name


def test_every_api_operation_is_documented(built):
    """Each method and path of the served OpenAPI document has its own
    section in the API reference, with each of its response codes."""
    from lbproxy.web.openapi import openapi_document

    page = text_of(built, "api.html")
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            heading = f"{method.upper()} {path}"
            assert heading in page, heading
            section = page.split(heading, 1)[1]
            for code in op["responses"]:
                assert code in section, (heading, code)


def test_every_interface_method_is_documented(built):
    """Each method and attribute of every interface in
    C{lbproxy.interfaces} (the plugin authors' contract) is on its page."""
    import lbproxy.interfaces as module
    from zope.interface.interface import InterfaceClass

    page = text_of(built, "interfaces.html")
    interfaces = [v for v in vars(module).values()
                  if isinstance(v, InterfaceClass) and v.__module__ == module.__name__]
    assert len(interfaces) >= 5
    for iface in interfaces:
        assert iface.__name__ in page
        for name in iface.names():
            assert name in page, (iface.__name__, name)


def test_plugin_guide_shows_the_tested_example(built):
    """The plugin guide includes the example module the plugin tests load,
    verbatim."""
    page = text_of(built, "plugins.html")
    example = (DOCS / "examples" / "lbproxy_lowest_port.py").read_text()
    for line in example.splitlines():
        if line.strip():
            assert line.strip() in page, line


def test_capacity_page_has_measured_figures(built):
    """The capacity page shows the benchmark figures from the committed
    results (no placeholder) and the worked 50,000 connections/s example."""
    page = text_of(built, "capacity.html")
    assert "(not measured)" not in page
    bench = json.loads((DOCS / "_data" / "bench.json").read_text())
    per_cpu = bench["summary"]["close"]["lbproxy-fast"]["req_per_cpu_s"]
    assert f"{per_cpu:,.0f}" in page
    assert "50,000 new connections per second" in page


def test_flags_and_quotes_survive_into_the_html(built):
    """
    No page turns C{--flag} into an en dash or a straight quote into a
    curly one (docutils' smart quotes did, in the generated flag and metric
    tables and in the benchmark commands), so a command copied from the
    HTML works.
    """
    pages = sorted(built.glob("*.html"))
    assert len(pages) >= 10
    for path in pages:
        page = text_of(built, path.name)
        dashed = re.findall(r".{0,30}\u2013[A-Za-z].{0,20}", page)
        assert not dashed, (path.name, dashed)
        curly = re.findall(r".{0,30}[\u2018\u2019\u201c\u201d].{0,20}", page)
        assert not curly, (path.name, curly)
    install = text_of(built, "install.html")
    assert "--store and --store-prefix shares one config" in install
    assert "'Authorization: Bearer <token>'" in install
    assert "refused by --max-connections" in text_of(built, "operations.html")
    assert "store_rate.py --backends 1000 --saves 50" in text_of(built, "capacity.html")


def test_config_example_is_valid():
    """The example config document in the docs parses and names a strategy
    that exists."""
    from lbproxy.model.parse import parse_config
    from lbproxy.policy.plugins import build_strategy, strategy_factories

    config = parse_config(json.loads((DOCS / "examples" / "config.json").read_text()))
    build_strategy(config.strategy, strategy_factories())
    assert len(config.backends) == 3


def test_plugin_example_says_it_ignores_weights():
    """The example plugin picks by port, never by weight, so it says
    C{uses_weights = False} as the plugin guide asks (without it, C{GET
    /api/v1/strategies} called it weight-aware and the UI showed no "weight
    ignored" hint while it ran)."""
    import importlib.util

    from lbproxy.interfaces import IStrategyFactory
    from zope.interface.verify import verifyObject

    spec = importlib.util.spec_from_file_location("lbproxy_lowest_port", DOCS / "examples" / "lbproxy_lowest_port.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    verifyObject(IStrategyFactory, module.lowestPort)
    assert module.lowestPort.uses_weights is False


def _code_blocks(language):
    """The bodies of the C{.. code-block:: LANGUAGE} blocks of every page, by page."""
    for page in sorted(DOCS.glob("*.rst")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != f".. code-block:: {language}":
                continue
            body = []
            for following in lines[i + 1:]:
                if following.strip() and not following.startswith(" "):
                    break
                body.append(following)
            yield page.name, textwrap.dedent("\n".join(body)).strip() + "\n"


def test_toml_examples_are_config_files_lbproxy_loads(tmp_path):
    """Every TOML example in the guides is a C{--config} file that lbproxy
    reads (the TLS guide's spanned inline tables over several lines, which
    TOML forbids: copied as written, the file was refused)."""
    from lbproxy.model.tomlfile import load_services

    blocks = list(_code_blocks("toml"))
    assert {page for page, _ in blocks} >= {"guide-services.rst", "guide-tls.rst"}
    for n, (page, body) in enumerate(blocks):
        path = tmp_path / f"{n}.toml"
        path.write_text(body)
        document = load_services(str(path))
        assert document.services, (page, body)


def test_json_examples_parse(tmp_path):
    """Every C{code-block:: json} example is JSON (the traffic guide's
    fields are a body for C{PATCH /api/v1/services/NAME}, checked too)."""
    from lbproxy.model.schema import SERVICE_PATCH
    from lbproxy.model.validation import validate

    blocks = list(_code_blocks("json"))
    assert blocks
    for page, body in blocks:
        value = json.loads(body)
        if page == "guide-traffic.rst":
            validate(value, SERVICE_PATCH, "body")
