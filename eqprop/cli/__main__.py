"""``python -m eqprop.cli``: the ``eqprop`` command."""

import sys

from eqprop.cli import main

sys.exit(main())
