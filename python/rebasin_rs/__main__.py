"""``python -m rebasin_rs``: the ``rebasin`` command."""

import sys

from rebasin_rs.cli import main

sys.exit(main())
