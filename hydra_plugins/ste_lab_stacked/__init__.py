"""Hydra plugin: the stacked launcher of conf/hydra/launcher/stacked.yaml (what it does: src/stacked/launch.py).

Hydra accepts launcher classes from the ``hydra_plugins`` namespace package only; this folder joins it when the
repo root is on sys.path (``python -m src.train`` from the repo root, pytest).
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from src.stacked.launch import StackedSweep, check_max_stack


class StackedLauncher(Launcher):
    """Trains the sweep's jobs that can share a model as stacks of at most ``max_stack``; the rest one by one."""

    def __init__(self, max_stack: int = 8, force: bool = False, probe_steps: int = 5) -> None:
        self.max_stack, self.force, self.probe_steps = check_max_stack(max_stack), force, probe_steps
        self.sweep: StackedSweep | None = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweep = StackedSweep(
            hydra_context, task_function, config, self.max_stack, self.force, self.probe_steps
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.sweep.launch(job_overrides, initial_job_idx)
