"""``python -m proxyd``: the same as the ``proxyd`` command."""

import sys

from proxyd.cli import main

sys.exit(main())
