"""``python -m lbproxy.cli``: the same as ``lbproxyctl``."""

import sys

from lbproxy.cli.main import main

sys.exit(main())
