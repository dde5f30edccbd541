"""``python -m nemotron3_super`` is the ``nemotron3-super`` command."""

import sys

from nemotron3_super.cli import main

sys.exit(main())
