"""Jobs of a stage: which are done (found by identity in the run index), how they pack into as few Hydra multiruns
as cover them, and launching those multiruns supervised."""

from __future__ import annotations

import math
import sys
import time
from itertools import groupby
from pathlib import Path

from src.reproduce.supervise import last_line, run_logged
from src.runs import Run, failed_runs, matches, read_run

Job = (
    dict  # src.train overrides {key: value}; always names experiment, seed, and ste + quant.bits or quant=fp
)


class JobsFailed(Exception):
    """A multirun exited non-zero; the message names its failed jobs (or its last log line) and the log."""


def find(stage_dir: Path, job: Job) -> Run | None:
    """The done run of ``job`` in stage_dir, found by its identity (src/runs.matches), if any.

    A job that names no tag or weight quantizer means none (float weights); the init checkpoint is not compared:
    the earlier stage's run it names is fixed by the job's seed and experiment, wherever the out dir now lies.
    """
    want = {"tag": None, "wquant": "fp"} | {k: v for k, v in job.items() if k != "init.checkpoint"}
    runs = [read_run(p.parent) for p in sorted(stage_dir.glob("*/summary.json"))]
    return next((run for run in runs if run.done and matches(run, want)), None)


def checkpoint_of(stage_dir: Path, job: Job) -> str:
    """The last checkpoint of a done earlier-stage run: where a later stage starts."""
    run = find(stage_dir, job)
    if run is None or run.status == "diverged":
        raise SystemExit(
            f"error: a later stage starts from {job} in {stage_dir}, which "
            f"{'diverged' if run else 'is missing'}"
        )
    return run["checkpoint"]


def launch(stage_dir: Path, jobs: list[Job], sweep: tuple[str, ...], overrides: list[str], launcher) -> bool:
    """Run the jobs not done yet as Hydra multiruns over the ``sweep`` keys; False if all were done already.
    An unfinished or failed run is launched again as it is: it lands in its own dir and src.train resumes it."""
    todo = [job for job in jobs if find(stage_dir, job) is None]
    for args in sweeps(todo, sweep):
        run_hydra(stage_dir, args + overrides, launcher)
    return bool(todo)


def sweeps(jobs: list[Job], keys: tuple[str, ...]) -> list[list[str]]:
    """Override lists for as few multiruns as cover ``jobs``: jobs equal but for ``keys`` share one when they
    form the full product of those keys' values; otherwise the first key alone is swept."""
    rest = lambda job: [(k, str(v)) for k, v in job.items() if k not in keys]  # noqa: E731
    calls = []
    for fixed, group in groupby(sorted(jobs, key=rest), key=rest):
        group = list(group)
        values = {k: sorted({str(job[k]) for job in group}) for k in keys}
        if len(group) != math.prod(len(v) for v in values.values()):
            calls += [
                a
                for first in values[keys[0]]
                for a in sweeps([j for j in group if str(j[keys[0]]) == first], keys[1:] or keys)
            ]
            continue
        calls.append([f"{k}={v}" for k, v in fixed] + [f"{k}={','.join(v)}" for k, v in values.items()])
    return calls


def train_command(stage_dir: Path, args: list[str], launcher: str | None) -> list[str]:
    """The ``python -m src.train -m`` call of one multirun, its runs landing in <stage_dir>/<run_name>."""
    return [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *args,
        f"hydra.sweep.dir={stage_dir}",
        "hydra.sweep.subdir=${run_name}",
        *([f"hydra/launcher={launcher}"] if launcher else []),
    ]


def run_hydra(stage_dir: Path, args: list[str], launcher: str | None) -> None:
    """One multirun, its output in <stage_dir>/logs/; raises JobsFailed when it exits non-zero."""
    start = time.time()
    code, log = run_logged(stage_dir, train_command(stage_dir, args, launcher), args)
    if code:
        raise JobsFailed(f"{failed_jobs(stage_dir, since=start) or last_line(log)}; log: {log}")


def run_tool(stage_dir: Path, module: str, args: list[str]) -> None:
    """``python -m <module> <args>`` supervised, logged under stage_dir; raises JobsFailed when it exits non-zero."""
    code, log = run_logged(stage_dir, [sys.executable, "-m", module, *args], args)
    if code:
        raise JobsFailed(f"{last_line(log)}; log: {log}")


def failed_jobs(stage_dir: Path, since: float) -> str:
    """'N jobs failed: <run> (<reason>), ...' from the runs that failed since ``since``."""
    failed = failed_runs(stage_dir, since)
    jobs = ", ".join(f"{run.path.name} ({run['reason'] or 'no reason given'})" for run in failed)
    return f"{len(failed)} job{'s' * (len(failed) != 1)} failed: {jobs}" if failed else ""
