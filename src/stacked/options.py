"""The stacked launcher's own options, checked where src.train checks a sweep before its dir exists (so this module
imports nothing of the project: src.train imports it, and src.stacked imports src.train)."""

import sys


def check_max_stack(max_stack) -> int:
    """max_stack as an int >= 1, else one line and exit (before anything is written)."""
    if isinstance(max_stack, bool) or not isinstance(max_stack, int) or max_stack < 1:
        sys.exit(f"error: hydra.launcher.max_stack must be an integer >= 1, got {max_stack!r}")
    return max_stack
