"""``python -m eqprop``: the ``eqprop`` command (see ``python -m eqprop --help``)."""

import sys

from eqprop.cli import main

sys.exit(main())
