"""Sweeps on a real SLURM (the local one-node cluster of `make slurm-up`): a 2-STE sweep, a job preempted by
USR2 that is requeued and continues in place, a job cancelled on the cluster recorded as failed while the others
finish, and the one-line errors before submitting (no SLURM, unknown partition)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
# The paper's two-layer model on Gaussian data: no data files, each job one CPU.
TWO_LAYER = [
    "experiment=two_layer", "logger=csv", "trainer.enable_progress_bar=false", "share.threads=1",
    "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
    "hydra.sweep.subdir=${hydra.job.num}_${tag}",
]  # fmt: skip


def cluster_up() -> str | None:
    """Why the SLURM tests cannot run here, or None when a cluster answers with an available node."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (no sinfo): `make slurm-up` starts a local cluster (root, apt-get)"
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if out.returncode or not {"idle", "mix", "alloc"} & set(out.stdout.split()):
        return f"no SLURM node available ({(out.stderr or out.stdout).strip()[:80]}): `make slurm-up`"
    return None


WHY_NOT = cluster_up()
needs_cluster = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def sweep(*args: str, env: dict = ENV, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", "-m", *TWO_LAYER, *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


def job_id(run_dir: Path, timeout: float = 120) -> str:
    """The SLURM job id of a run, read from its slurm.log link (../.submitit/<job id>/...)."""
    deadline = time.time() + timeout
    while not (run_dir / "slurm.log").is_symlink():
        assert time.time() < deadline, f"{run_dir} never started"
        time.sleep(0.2)
    return Path(os.readlink(run_dir / "slurm.log")).parent.name


def start_requeued_now(job: str, timeout: float = 120) -> None:
    """Once SLURM has requeued ``job``, let it start at once (SLURM holds a requeued job for 2 minutes)."""
    deadline = time.time() + timeout
    while (
        "PENDING"
        not in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    ):
        assert time.time() < deadline, f"job {job} was not requeued"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def wait_for(done, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not done():
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def has_epoch(metrics: Path, epoch: int) -> bool:
    try:
        return epoch in pd.read_csv(metrics)["epoch"].tolist()
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.slurm
@pytest.mark.slow  # jobs start torch and Lightning on a shared 2-core node: ~40 s
@needs_cluster
def test_a_two_ste_sweep_runs_on_the_cluster_with_logs_in_the_run_dirs(tmp_path):
    out = tmp_path / "sweep"
    code, err = finish(sweep("ste=relu,clipped_relu", "trainer.max_epochs=1", f"hydra.sweep.dir={out}"))
    assert code == 0, err[-3000:]
    runs = summaries(out)
    assert [(r["ste"], r["status"]) for r in runs.values()] == [
        ("relu", "finished"),
        ("clipped_relu", "finished"),
    ]
    for name in runs:
        log = (out / name / "slurm.log").resolve()  # the job's SLURM log, inside the sweep's .submitit/
        assert log.is_relative_to(out) and "Job completed successfully" in log.read_text()
    assert "sacct" not in err  # no accounting here: job states come from squeue, without a warning per poll


@pytest.mark.slurm
@pytest.mark.slow  # three jobs, one requeued: ~2 min
@needs_cluster
def test_a_preempted_job_continues_in_place_and_a_cancelled_one_is_recorded_failed(tmp_path):
    """Three identical runs (tags a, b, c): a gets USR2 (SLURM's preemption/time-limit signal) after its first
    epoch checkpoint, is requeued by submitit and resumes from last.ckpt; b runs uninterrupted; c is cancelled.
    a ends with b's metrics in one run dir with two starts; c is failed with its log path; the sweep exits 1."""
    out = tmp_path / "sweep"
    epochs = 4
    args = [
        "tag=a,b,c",
        f"trainer.max_epochs={epochs}",
        "data.batches_per_epoch=400",
        f"hydra.sweep.dir={out}",
    ]
    proc = sweep(*args)
    a, b = out / "0_a", out / "1_b"
    # epoch 1's metrics row is written just before its checkpoint: wait for both
    wait_for(lambda: has_epoch(a / "metrics.csv", 1), "epoch 1 of a")
    wait_for(lambda: (a / "checkpoints" / "last.ckpt").is_file(), "a's first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job_id(a)], check=True)
    start_requeued_now(job_id(a))
    subprocess.run(["scancel", f"{job_id(a).split('_')[0]}_2"], check=True)  # c: the array's third task
    code, err = finish(proc)
    assert code == 1 and err.strip().splitlines()[-1] == "error: 1 of 3 jobs failed: 2_c", err[-3000:]
    runs = summaries(out)
    assert runs["0_a"]["status"] == runs["1_b"]["status"] == "finished"
    for key in ("train_loss", "val_loss", "population_loss", "epochs"):
        assert runs["0_a"][key] == runs["1_b"][key], key
    assert pd.read_csv(a / "metrics.csv")["epoch"].tolist() == list(range(epochs + 1))
    assert len(json.loads((a / "provenance.json").read_text())["starts"]) == 2
    assert len(json.loads((b / "provenance.json").read_text())["starts"]) == 1
    assert "this job is preempted" in (a / "slurm.log").read_text()
    assert runs["2_c"]["status"] == "failed"
    assert runs["2_c"]["reason"].startswith("error: SLURM job") and "log: " in runs["2_c"]["reason"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "0_a", "1_b", "2_c", "multirun.yaml",
    ]  # fmt: skip


@pytest.mark.slurm
@needs_cluster
def test_an_unknown_partition_is_one_line_before_submitting(tmp_path):
    code, err = finish(
        sweep("hydra.launcher.partition=nope", f"hydra.sweep.dir={tmp_path / 's'}"), timeout=120
    )
    assert code == 1 and err.strip().splitlines()[-1].startswith(
        "error: hydra.launcher.partition=nope does not exist; partitions: "
    )
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.slow
def test_no_slurm_is_one_line(tmp_path):
    """Without sinfo on PATH (a laptop): the launcher says so in one line and submits nothing."""
    env = ENV | {"PATH": str(tmp_path)}  # sys.executable is absolute; nothing else is found
    code, err = finish(sweep(f"hydra.sweep.dir={tmp_path / 's'}", env=env), timeout=120)
    assert code == 1 and err.strip().splitlines()[-1] == (
        "error: hydra/launcher=slurm: SLURM is not reachable (no sinfo/sbatch on PATH); "
        "`make slurm-up` starts a local one-node cluster"
    )


@pytest.mark.slurm
@pytest.mark.slow  # two 2-task jobs, each starting torch twice: ~2-3 min
@needs_cluster
def test_an_imagefolder_resnet18_ddp_job_and_a_task_count_that_does_not_match_devices(tmp_path):
    """A job of 2 SLURM tasks is one 2-rank DDP run (Lightning reads SLURM's environment): one run dir whose run
    files rank 0 writes. A job whose task count differs from trainer.devices is recorded failed in one line."""
    from tests.test_imagefolder import SMALL, write_jpegs

    root = write_jpegs(tmp_path / "jpegs", train=8, val=5)
    out = tmp_path / "sweep"
    args = [
        "experiment=resnet18_imagenet", f"data.root={root}", *SMALL, "data.num_workers=0", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.sync_batchnorm=false", "trainer.devices=2,1", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=devices${trainer.devices}",
    ]  # fmt: skip
    code, err = finish(sweep(*args), timeout=600)
    assert code == 1, err[-3000:]
    runs = summaries(out)
    assert runs["devices2"]["status"] == "finished" and runs["devices2"]["model"] == "resnet18"
    ok = out / "devices2"
    assert sorted(p.name for p in ok.iterdir()) == [
        ".hydra", "checkpoints", "config.yaml", "metrics.csv", "provenance.json", "slurm.log", "summary.json",
        "train.log",
    ]  # fmt: skip
    assert len(json.loads((ok / "provenance.json").read_text())["starts"]) == 1
    logs = sorted((ok / "slurm.log").resolve().parent.glob("*_log.out"))
    assert [p.name.rsplit("_", 2)[-2] for p in logs] == ["0", "1"]  # <job>_<task>_log.out: one per rank
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1].read_text()
    bad = runs["devices1"]
    assert bad["status"] == "failed" and "\n" not in bad["reason"]
    assert (
        "You set `devices=1` in Lightning, but the number of tasks per node configured in SLURM"
        in bad["reason"]
    )
