"""The one error of an evaluation's inputs."""

from __future__ import annotations


class EvaluationInputError(ValueError):
    """Predictions or labels that cannot be evaluated as given; the message says what to fix (exit status 2)."""


def listed(names: list[str], most: int = 10) -> str:
    """``names`` for a message: the first ``most`` of them, and how many more."""
    shown = ", ".join(repr(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
