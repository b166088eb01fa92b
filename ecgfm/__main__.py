"""``python -m ecgfm``."""

import sys

from ecgfm.cli import main

sys.exit(main())
