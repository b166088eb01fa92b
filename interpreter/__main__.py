"""``python -m interpreter`` entry point."""

from interpreter.cli import main

raise SystemExit(main())
