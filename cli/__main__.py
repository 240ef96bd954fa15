"""``python -m paramsched.cli``: the ``paramsched`` command."""

import sys

from . import main

sys.exit(main())
