"""Sweeps on SLURM: what hydra-submitit-launcher's SLURM launcher needs around it on a cluster.

``-m hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) uses ``SlurmLauncher`` (hydra_plugins/ste_lab_slurm:
Hydra takes launchers from that package only), which adds to the
stock launcher: a one-line error before submitting when SLURM is unreachable or the partition does not exist;
each job's SLURM log linked into its run dir (``slurm.log``); a job that SLURM kills (memory, node failure, time
limit without requeue) recorded as ``failed`` in its run dir with its log path while the other jobs finish; and
no "Bypassing sacct error" warning at every poll on a cluster without accounting (submitit then reads job states
from its own result files, which is all it needs). Requeue on preemption or time limit is submitit's: its USR2
handler calls the launcher's ``checkpoint`` and requeues the job, which then runs again in the same run dir and
continues from checkpoints/last.ckpt (src/train.py resumes a run dir that holds one).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

log = logging.getLogger(__name__)
LOG_LINK = "slurm.log"  # in each run dir: the job's SLURM log (stdout and stderr of rank 0)


class QuietSacct(logging.Filter):
    """Drop submitit's "Bypassing sacct error" warning: without accounting (AccountingStorageType=none) sacct
    fails at every poll, and submitit falls back on the result files it reads anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


@contextmanager
def quiet_sacct():
    """While submitit polls: no sacct warning, and sacct's own stderr line ("accounting storage is disabled")
    kept off the terminal (submitit runs sacct with stderr inherited)."""
    submitit_log, quiet = logging.getLogger("submitit"), QuietSacct()
    submitit_log.addFilter(quiet)
    real_check_output = subprocess.check_output

    def check_output(command, **kwargs):
        if command and command[0] == "sacct":
            kwargs.setdefault("stderr", subprocess.DEVNULL)
        return real_check_output(command, **kwargs)

    subprocess.check_output = check_output
    try:
        yield
    finally:
        subprocess.check_output = real_check_output
        submitit_log.removeFilter(quiet)


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
    import submitit

    env = submitit.JobEnvironment()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if env.global_rank == 0:
        link = run_dir / LOG_LINK
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(env.paths.stdout, run_dir))
    return task_function(cfg)
