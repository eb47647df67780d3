"""
Sphinx configuration of lbproxy's documentation.

Build: C{python3 dev.py docs} (warnings are errors).  The local extension
in C{_ext/} renders the flag table, the API reference, the strategy list,
the interfaces and the benchmark figures from the code and from the
results files in C{_data/}, at build time.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))

import lbproxy  # noqa: E402

project = "lbproxy"
author = "the lbproxy developers"
copyright = "the lbproxy developers"
release = version = lbproxy.__version__

extensions = ["lbproxy_docs", "failover_docs"]
exclude_patterns = ["_build", "examples", "_data"]
templates_path = []
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {
    "description": "A TCP load balancer on Twisted",
    "fixed_sidebar": False,
    "page_width": "1240px",
    "code_font_size": "0.85em",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
pygments_style = "sphinx"
# Docutils' "smart quotes" turn ``--flag`` into an en dash and ' into a curly
# quote wherever text is not a literal (the generated tables, substitutions),
# so a command copied from the HTML fails.  Keep the characters as written.
smartquotes = False
nitpicky = False
