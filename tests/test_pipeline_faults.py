"""The pipeline under faults: a second pipeline on the same out dir, the pipeline killed (SIGKILL, SIGTERM) while a
multirun runs, a multirun with a failed job, bad arguments, and the per-stage attempt history.

Most tests run the real pipeline (lock, supervisor, process groups) on a one-stage profile written to tmp_path,
with a stand-in for ``python -m src.train -m`` that writes like a multirun (and forks like joblib's workers), so
they take seconds; one test kills a real src.train multirun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.lock import pipeline_lock
from src.reproduce import jobs, profile
from src.reproduce.cli import main
from src.reproduce.supervise import GRACE_S
from tests.conftest import REPO
from tests.runs import fake_data, job_run

PROFILE = {
    "stages": ["pretrain"],
    "seeds": [0],
    "nets": ["lenet5_mnist"],
    "overrides": {"all": [], "images": [], "pretrain": []},
}
# A multirun stand-in: a run dir with config.yaml (started, not finished), then two processes of the multirun's
# group (like a joblib worker beside its launcher), each appending to <run>/<pid>.pid until stopped.
FOREVER = """
import os, sys, time
from pathlib import Path
run = Path(sys.argv[1]) / "job"
run.mkdir(parents=True, exist_ok=True)
(run / "config.yaml").write_text("seed: 0\\n")
os.fork()
with open(run / f"{os.getpid()}.pid", "w") as f:
    while True:
        f.write("x")
        f.flush()
        time.sleep(0.05)
"""
# A multirun whose one job failed, as src.train reports it: a summary.json with status failed, a last error line.
FAILS = """
import sys
from pathlib import Path
from src.runs import write_summary
run = Path(sys.argv[1]) / "lenet5-mnist-fp-s0"
run.mkdir(parents=True, exist_ok=True)
write_summary(run, {}, {}, {"status": "failed", "reason": "error: bits must be 1-16"})
sys.exit("error: 1 of 1 jobs failed: lenet5-mnist-fp-s0")
"""
# The pipeline in a process of its own, with the test profile and a stand-in multirun: argv profiles dir, script
# of the stand-in ("" for the real src.train), then the pipeline's arguments.
DRIVER = """
import sys
from pathlib import Path
from src.reproduce import jobs, profile
from src.reproduce.cli import main
profile.PROFILES = Path(sys.argv[1])
if sys.argv[2]:
    jobs.train_command = lambda stage_dir, *_: [sys.executable, "-c", sys.argv[2], str(stage_dir)]
main(sys.argv[3:])
"""


@pytest.fixture
def profiles(tmp_path, monkeypatch) -> Path:
    """A profiles dir holding ``test`` (PROFILE), also used by the pipeline in this process."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "test.yaml").write_text(yaml.safe_dump(PROFILE))
    monkeypatch.setattr(profile, "PROFILES", folder)
    return folder


def start_pipeline(profiles: Path, out: Path, stand_in: str = FOREVER, *extra: str) -> subprocess.Popen:
    """The pipeline in a subprocess on profile ``test`` writing to ``out``."""
    argv = [sys.executable, "-c", DRIVER, str(profiles), stand_in, "--profile", "test", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*argv, *extra], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in "ZX"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running_stand_in(out: Path) -> tuple[Path, list[int]]:
    """The stand-in's run dir and pids, once both of its processes are writing."""
    run = out / "pretrain" / "job"
    # generous: a pipeline starting beside a training run took over 60 s here (2026-12-05); a pass waits no longer
    wait_for(lambda: len(list(run.glob("*.pid"))) == 2, 300, "the multirun to start")
    return run, [int(p.stem) for p in run.glob("*.pid")]


def sizes(run: Path) -> dict:
    return {p.name: p.stat().st_size for p in run.iterdir()}


@pytest.mark.slow
def test_second_pipeline_on_the_same_dir_is_refused_in_one_line(tmp_path, profiles):
    out = tmp_path / "out"
    first = start_pipeline(profiles, out)
    try:
        run, pids = running_stand_in(out)
        with pytest.raises(SystemExit) as refused:  # the same command again, here in this process
            main(["--profile", "test", "--out", str(out)])
        assert str(refused.value) == f"error: another pipeline is running on {out} (pid {first.pid})"
        before = sizes(run)
        time.sleep(0.3)
        assert first.poll() is None and all(map(alive, pids))  # the first pipeline goes on untouched
        assert all(sizes(run)[name] > size for name, size in before.items() if name.endswith(".pid"))
        assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["job", "logs"]
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_refusal_from_the_command_line_is_one_line_and_non_zero(tmp_path):
    out = tmp_path / "out"
    with pipeline_lock(out):
        done = subprocess.run(
            [sys.executable, "-m", "src.reproduce", "--profile", "demo", "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == f"error: another pipeline is running on {out} (pid {os.getpid()})\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_sigkill_of_the_pipeline_stops_its_multirun_and_frees_the_lock(tmp_path, profiles):
    out = tmp_path / "out"
    pipeline = start_pipeline(profiles, out)
    run, pids = running_stand_in(out)
    group = multirun_group(pipeline.pid)
    assert set(members(group)) == {group, *pids}  # the supervisor and the two processes of the multirun
    pipeline.kill()  # nothing in the pipeline can clean up: the supervisor's PR_SET_PDEATHSIG does
    pipeline.wait()
    wait_for(lambda: not members(group), 10, f"the processes of group {group} to die")
    before = sizes(run)
    time.sleep(0.3)
    assert sizes(run) == before  # nobody writes there any more
    with pipeline_lock(out):  # the dead pipeline's lock went with it
        pass


@pytest.mark.slow
def test_sigterm_stops_the_multirun_records_the_attempt_and_a_rerun_relaunches_in_place(tmp_path, profiles):
    out = tmp_path / "out"
    pipeline = start_pipeline(profiles, out)
    run, pids = running_stand_in(out)
    pipeline.send_signal(signal.SIGTERM)
    _, err = pipeline.communicate(timeout=20)
    assert pipeline.returncode != 0
    assert err.strip().splitlines() == ["error: pipeline stopped during stage pretrain; re-run it to resume"]
    wait_for(lambda: not any(map(alive, pids)), 5, f"{pids} to die")
    (attempt,) = json.loads((out / "pipeline.json").read_text())["stages"]["pretrain"]["attempts"]
    assert attempt["status"] == "interrupted" and attempt["wall_time_s"] > 0
    # the same command again: the unfinished run is relaunched where it is, never renamed
    again = start_pipeline(profiles, out)
    running_stand_in(out)
    again.kill()
    again.wait()
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["job", "logs"]


@pytest.mark.slow
def test_failed_stage_names_its_failed_jobs_and_the_log(tmp_path, profiles, monkeypatch):
    monkeypatch.setattr(
        jobs, "train_command", lambda stage_dir, *_: [sys.executable, "-c", FAILS, str(stage_dir)]
    )
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as failed:
        main(["--profile", "test", "--out", str(out)])
    (log,) = (out / "pretrain" / "logs").iterdir()
    assert str(failed.value) == (
        "error: stage pretrain failed: 1 job failed: lenet5-mnist-fp-s0 (error: bits must be 1-16); "
        f"log: {log}"
    )
    assert "error: 1 of 1 jobs failed" in log.read_text()
    stage = json.loads((out / "pipeline.json").read_text())["stages"]["pretrain"]
    assert [a["status"] for a in stage["attempts"]] == ["failed"] and not stage["skipped"]


def test_pipeline_json_keeps_every_attempt_of_a_stage(tmp_path, profiles, monkeypatch):
    def finish(stage_dir, args, launcher):  # one multirun: the FP run of seed 0, finished
        run = stage_dir / "lenet5-mnist-fp-s0"
        run.mkdir(parents=True)
        job_run(run, {"experiment": "lenet5_mnist", "seed": 0, "quant": "fp"})
        time.sleep(0.05)

    monkeypatch.setattr(jobs, "run_hydra", finish)
    out = tmp_path / "out"
    for _ in range(2):
        main(["--profile", "test", "--out", str(out)])
    stage = json.loads((out / "pipeline.json").read_text())["stages"]["pretrain"]
    ran, skipped = stage["attempts"]
    assert ran["status"] == "ran" and skipped["status"] == "skipped" and ran["started"] <= skipped["started"]
    assert stage["wall_time_s"] == ran["wall_time_s"] >= 0.05 and not stage["skipped"]


def test_a_flat_record_from_before_attempts_becomes_the_first_attempt(tmp_path, profiles, monkeypatch):
    monkeypatch.setattr(jobs, "run_hydra", lambda *a: None)
    out = tmp_path / "out"
    out.mkdir()
    old = {"profile": "test", "stages": {"pretrain": {"wall_time_s": 120.0, "skipped": False}}}
    (out / "pipeline.json").write_text(json.dumps(old))
    main(["--profile", "test", "--out", str(out)])
    stage = json.loads((out / "pipeline.json").read_text())["stages"]["pretrain"]
    assert [a["status"] for a in stage["attempts"]] == ["ran", "ran"]
    assert stage["attempts"][0] == {"started": None, "wall_time_s": 120.0, "status": "ran"}
    assert stage["wall_time_s"] >= 120.0


def test_bad_out_or_profile_is_one_line_and_writes_nothing(tmp_path, profiles):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"^error: cannot write to --out .*a_file/out: Not a directory$"):
        main(["--profile", "test", "--out", str(blocker / "out")])
    with pytest.raises(SystemExit, match="^error: unknown profile 'nope'; valid profiles: test$"):
        main(["--profile", "nope", "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "profiles"]


def processes() -> dict[int, list[str]]:
    """/proc/<pid>/stat of every process, the fields after the command: state, ppid, pgrp, ..."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
    return stats


def multirun_group(pipeline_pid: int) -> int:
    """The process group of the pipeline's multirun: the one its supervisor, a child of the pipeline, leads."""
    (supervisor,) = [pid for pid, s in processes().items() if int(s[1]) == pipeline_pid]
    return supervisor


def members(group: int) -> list[int]:
    """The live processes of a process group."""
    return [pid for pid, s in processes().items() if int(s[2]) == group and s[0] not in "ZX"]


def real_pipeline(tmp_path: Path, profiles: Path, *extra: str) -> subprocess.Popen:
    """The pipeline on profile ``test`` with real src.train multiruns: LeNet-5 on tiny MNIST files, CPU, CSV."""
    data = fake_data(tmp_path / "data")
    args = [f"paths.data_dir={data}", "data.verify_checksums=false", "data.download=false", *extra]
    common = ["trainer=cpu", "trainer.enable_progress_bar=false", "logger=csv"]
    (profiles / "test.yaml").write_text(
        yaml.safe_dump(PROFILE | {"overrides": PROFILE["overrides"] | {"all": common}})
    )
    return start_pipeline(profiles, tmp_path / "out", "", *args)


@pytest.mark.slow
def test_sigkill_of_the_pipeline_stops_a_real_joblib_multirun(tmp_path, profiles):
    """Both training jobs run in joblib's worker processes, grandchildren of the supervisor: all of them stop."""
    pipeline = real_pipeline(
        tmp_path,
        profiles,
        "--launcher",
        "joblib",
        "--seeds",
        "0,1",
        "hydra.launcher.n_jobs=2",
        "trainer.max_epochs=1000",
    )
    out = tmp_path / "out" / "pretrain"
    try:
        wait_for(lambda: len(list(out.glob("*/metrics.csv"))) == 2, 120, "both jobs to train")
        group = multirun_group(pipeline.pid)
        assert len(members(group)) >= 4  # supervisor, src.train (joblib's launcher), two workers
    finally:
        pipeline.kill()
        pipeline.wait()
    wait_for(lambda: not members(group), GRACE_S + 10, f"the processes of group {group} to die")


@pytest.mark.slow
def test_a_run_cut_off_by_sigkill_resumes_in_place(tmp_path, profiles):
    """Contract with src.train: last.ckpt after every epoch; the same multirun resumes an unfinished run in place."""
    extra = ["trainer.max_epochs=5", "data.batch_size=2"]  # 128 steps an epoch: seconds, time to cut it off
    pipeline = real_pipeline(tmp_path, profiles, *extra)
    stage = tmp_path / "out" / "pretrain"
    try:
        wait_for(lambda: list(stage.glob("*/checkpoints/last.ckpt")), 120, "the first epoch's checkpoint")
    finally:
        pipeline.kill()
        pipeline.wait()
    (run,) = [p.parent for p in stage.glob("*/config.yaml")]
    assert not (run / "summary.json").exists(), "the run finished before it was cut off: slow it down"
    again = real_pipeline(tmp_path, profiles, *extra)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert [p.parent for p in stage.glob("*/config.yaml")] == [run]  # same dir, nothing moved aside
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 5
    epochs = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    assert len(epochs) == 7  # header, the starting point, 5 epochs: those after the resume appended
