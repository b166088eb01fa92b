"""The ``ecgfm`` command line: one module per command family (``main``: predict, download, demo-checkpoints,
inspect; ``batch``; ``convert``; ``evaluate``; ``probe``). Parses arguments, calls the packages below, prints; holds
no logic of its own.

May import: any ``ecgfm`` package, and :mod:`interpreter` (the thresholds it evaluates). Nothing imports it but
``python -m ecgfm`` and the ``ecgfm`` script.
"""

from ecgfm.cli.main import main

__all__ = ["main"]
