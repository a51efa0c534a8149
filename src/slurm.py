"""Sweeps on SLURM: what hydra-submitit-launcher's SLURM launcher needs around it on a cluster.

``-m hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) uses ``SlurmLauncher`` (hydra_plugins/ste_lab_slurm:
Hydra takes launchers from that package only), which adds to the
stock launcher: a one-line error before submitting when SLURM is unreachable or the partition does not exist;
each job's SLURM log linked into its run dir (``slurm.log``); a job that SLURM kills (memory, node failure, time
limit without requeue) recorded as ``failed`` in its run dir with its log path while the other jobs finish; and
on a cluster without accounting, job states from squeue instead of a failing sacct (submitit would warn
"Bypassing sacct error" at every poll and never see a killed job end). Requeue on preemption or time limit is submitit's: its USR2
handler calls the launcher's ``checkpoint`` and requeues the job, which then runs again in the same run dir and
continues from checkpoints/last.ckpt (src/train.py resumes a run dir that holds one).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)
LOG_LINK = "slurm.log"  # in each run dir: the job's SLURM log (stdout and stderr of rank 0)


def squeue_fallback(sacct: list[str]) -> list[str]:
    """A job-state command for submitit: its sacct call, else (accounting disabled, so sacct fails) squeue's view
    of the same jobs in sacct's format. slurmctld keeps ended jobs MinJobAge seconds (600 in scripts/slurm), so a
    job SLURM killed is seen as ended; without this, submitit warns at every poll and waits for it forever."""
    ids = ",".join(sacct[i + 1] for i, arg in enumerate(sacct) if arg == "-j")
    squeue = f"squeue -h -t all -o '%i|%T|%N' -j {shlex.quote(ids)}"
    return ["sh", "-c", f"{shlex.join(sacct)} 2>/dev/null || {{ echo 'JobID|State|NodeList'; {squeue}; }}"]


class FallbackWatcher(SlurmInfoWatcher):
    """submitit's SLURM state watcher with :func:`squeue_fallback`."""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        return None if command is None else squeue_fallback(command)


def watch_without_sacct() -> None:
    """Make submitit's SLURM jobs read their states through :class:`FallbackWatcher` (this process only).

    submitit's job arrays are built as SlurmJob whatever the executor's job_class, so the watcher they share
    (a class attribute) is the one place to change it.
    """
    if not isinstance(SlurmJob.watcher, FallbackWatcher):
        SlurmJob.watcher = FallbackWatcher(delay_s=600)  # submitit's delay: polls at 2, 4, 8 ... s, then 60 s


def check_cluster(partition: str | None) -> None:
    """One line and exit when sbatch would fail: no SLURM commands, no controller, or an unknown partition."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        sys.exit("error: hydra/launcher=slurm: SLURM is not reachable (no sinfo/sbatch on PATH); `make slurm-up` "
                 "starts a local one-node cluster")  # fmt: skip
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        sys.exit("error: hydra/launcher=slurm: sinfo did not answer within 30 s (is slurmctld up?)")
    if out.returncode:
        reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"error: hydra/launcher=slurm: SLURM is not reachable: {reason}")
    partitions = sorted(set(out.stdout.split()))
    if partition and partition not in partitions:
        sys.exit(
            f"error: hydra.launcher.partition={partition} does not exist; partitions: {', '.join(partitions)}"
        )


def link_log(task_function, cfg):
    """The job's task: link its SLURM log into the run dir (rank 0 only), then train."""
    import submitit  # SLURM jobs only: Hydra imports this module (hydra_plugins) at every src.train start

    env = submitit.JobEnvironment()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if env.global_rank == 0:
        link = run_dir / LOG_LINK
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(env.paths.stdout, run_dir))
    return task_function(cfg)
