"""hydra/launcher=stacked (src/stacked): a stacked group of jobs against the same jobs run alone by src.train.

The oracle is K separate runs through the real entry point. In float64 (trainer.precision=64-true) the stack's
grouped convolutions sum in another order than the run alone by ~1e-16 relative, far below anything that moves
a quantizer level here, so every metrics.csv value is equal and every weight within 1e-12. In float32 the same
order differences (~1e-7) can move a pre-activation across a step edge kα; measured after 2 epochs of 3 steps
(LeNet-5, 3 STEs): metrics within 3e-7, weights within 1e-6 (asserted with margin below).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import src.stacked.fit as stacked_fit
from src.evaluate import evaluate
from src.quant.quantizer import quant_relu
from src.rundir import read_rows
from src.runs import read_json, read_run
from src.stacked.group import train_group
from src.stacked.launch import ONE_BY_ONE, StackedSweep
from src.stacked.plan import plan
from src.stacked.probe import StackTooBig
from src.stacked.ste import _IntervalSTEFn, bounds
from src.train import build, train
from tests.conftest import REPO
from tests.runs import FAST, fake_data, fast_cfg, make_cfg

# 2 epochs of 3 steps, no diagnostics (stacked runs do not compute them; plan.why_not refuses them)
SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.diagnostics=null"]
# per job: the STE, seed, lr and weight decay differ inside one group
JOBS = [
    ["ste=identity", "seed=0"],
    ["ste=relu", "seed=1", "optimizer.lr=0.05"],
    ["ste=clipped_relu", "seed=2", "optimizer.weight_decay=0.001"],
]


def alone_and_stacked(
    tmp_path: Path, model: str, jobs: list[list[str]], *common: str
) -> list[tuple[Path, Path]]:
    """Each job trained alone by src.train and all of them as one stack; (alone run dir, stacked run dir) each."""
    for i, job in enumerate(jobs):
        train(fast_cfg(tmp_path, model, *SHORT, *common, *job, run=f"alone{i}"))
    train_group(
        [fast_cfg(tmp_path, model, *SHORT, *common, *job, run=f"stack{i}") for i, job in enumerate(jobs)]
    )
    return [(tmp_path / f"alone{i}", tmp_path / f"stack{i}") for i in range(len(jobs))]


def assert_same_run(
    alone: Path, stacked: Path, metrics_tol: float, weight_tol: float, loops: str = ""
) -> None:
    """metrics.csv (but wall-clock time/*), the checkpoint's weights, optimizer state, schedule and Lightning's
    loop counters (``loops="fit_loop"``: only those of training, for a run resumed by another path than the
    oracle's, whose validate_loop counts the validation of its first start only)."""
    rows_a, rows_s = read_rows(alone / "metrics.csv"), read_rows(stacked / "metrics.csv")
    assert [list(r) for r in rows_a] == [list(r) for r in rows_s]  # the same columns in the same order
    for ra, rs in zip(rows_a, rows_s, strict=True):
        for key in ra:
            if not key.startswith("time/"):
                assert math.isclose(ra[key], rs[key], rel_tol=0, abs_tol=metrics_tol), (
                    stacked.name,
                    ra["epoch"],
                    key,
                )
    ca, cs = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False) for d in (alone, stacked))
    assert list(ca) == list(cs)
    counters = (lambda c: c["loops"][loops]) if loops else (lambda c: c["loops"])  # noqa: E731
    assert (ca["epoch"], ca["global_step"], counters(ca)) == (cs["epoch"], cs["global_step"], counters(cs))
    assert ca["lr_schedulers"] == cs["lr_schedulers"] and ca["best"] == pytest.approx(
        cs["best"], abs=metrics_tol
    )
    assert list(ca["state_dict"]) == list(cs["state_dict"])
    for key, value in ca["state_dict"].items():
        torch.testing.assert_close(cs["state_dict"][key], value, rtol=0, atol=weight_tol, msg=key)
    momentum = [s["momentum_buffer"] for s in ca["optimizer_states"][0]["state"].values()]
    for got, want in zip(
        [s["momentum_buffer"] for s in cs["optimizer_states"][0]["state"].values()], momentum, strict=True
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=weight_tol)
    assert ca["optimizer_states"][0]["param_groups"] == cs["optimizer_states"][0]["param_groups"]
    sa, ss = read_json(alone / "summary.json"), read_json(stacked / "summary.json")
    assert (ss["status"], ss["epochs"], ss["best_epoch"]) == (sa["status"], sa["epochs"], sa["best_epoch"])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("ste", ["identity", "relu", "clipped_relu"])
def test_interval_ste_is_the_registry_ste(ste, bits):
    """Forward and gradient of the per-slice STE equal quant_relu's with the registry STE, bit for bit."""
    gen = torch.Generator().manual_seed(bits)
    x = (torch.randn(4096, generator=gen) * 3).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    grad, alpha, levels = torch.randn(4096, generator=gen), torch.tensor(0.37), 2**bits - 1
    out = quant_relu(x, bits, alpha, ste)
    out.backward(grad)
    lo, hi = (torch.tensor(b) for b in bounds(ste, levels))
    out2 = _IntervalSTEFn.apply(x2, alpha, lo, hi, levels)[0]
    out2.backward(grad)
    assert torch.equal(out, out2) and torch.equal(x.grad, x2.grad)


@pytest.mark.slow
def test_stacked_lenet5_in_float64_equals_each_run_alone(tmp_path):
    """3 STEs with their own seed, lr and weight decay as one stack: every run's metrics.csv values equal, its
    checkpoint (weights, momentum, schedule, Lightning's loop counters) as the run alone wrote it."""
    for alone, stacked in alone_and_stacked(tmp_path, "lenet5", JOBS, "trainer.precision=64-true"):
        assert_same_run(alone, stacked, metrics_tol=0.0, weight_tol=1e-12)
        prov = read_json(stacked / "provenance.json")
        assert prov["stack"]["k"] == 3 and prov["starts"][-1]["stack"]["jobs"] == [
            "stack0",
            "stack1",
            "stack2",
        ]


@pytest.mark.slow
def test_stacked_lenet5_3_stes_2_seeds_in_float32_within_the_measured_tolerance(tmp_path):
    """The issue's check: LeNet-5, 3 STEs × 2 seeds, lr and weight decay per job, float32 (the default)."""
    jobs = [[*job[:1], f"seed={seed}", *job[2:]] for job in JOBS for seed in (0, 1)]
    for alone, stacked in alone_and_stacked(tmp_path, "lenet5", jobs):
        assert_same_run(alone, stacked, metrics_tol=2e-6, weight_tol=1e-5)


@pytest.mark.slow  # ~50 s on the loaded 2-core CPU
def test_stacked_resnet20_a_few_steps_equals_each_run_alone(tmp_path):
    """ResNet-20 (option-A shortcuts, channels_last, CIFAR crop and flip): 2 jobs, 1 epoch of 2 steps, float64,
    data.on_device (one shared copy of the data, batches gathered with per-slice index tensors)."""
    jobs = [
        ["ste=relu", "seed=0", "optimizer.lr=0.1"],
        ["ste=clipped_relu", "seed=1", "optimizer.weight_decay=0"],
    ]
    common = ["trainer.precision=64-true", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
              "data.on_device=true"]  # fmt: skip
    for alone, stacked in alone_and_stacked(tmp_path, "resnet20", jobs, *common):
        assert_same_run(alone, stacked, metrics_tol=0.0, weight_tol=1e-12)


@pytest.mark.slow
def test_a_slice_that_diverges_stops_alone(tmp_path):
    """A huge lr diverges one slice: its summary says diverged with the reason; the other equals its run alone."""
    jobs = [["seed=0"], ["seed=1", "optimizer.lr=1e6"]]
    pairs = alone_and_stacked(tmp_path, "lenet5", jobs, "trainer.precision=64-true", "trainer.max_epochs=3")
    assert_same_run(*pairs[0], metrics_tol=0.0, weight_tol=1e-12)
    alone, stacked = (read_json(d / "summary.json") for d in pairs[1])
    assert stacked["status"] == "diverged" == alone["status"] and stacked["reason"] == alone["reason"]
    assert stacked["epochs"] == alone["epochs"] < 3


@pytest.mark.slow
def test_killed_group_resumes_as_a_group_or_alone(tmp_path, monkeypatch):
    """A group killed after epoch 1 of 2: each slice's checkpoint is ordinary (src.evaluate reads it; src.train
    resume= continues it alone), and the same group started again continues the rest; both equal the run alone."""
    common = ["trainer.precision=64-true"]
    jobs = JOBS[:2]
    for i, job in enumerate(jobs):
        train(fast_cfg(tmp_path, "tiny", *SHORT, *common, *job, run=f"alone{i}"))
    end_epoch = stacked_fit.end_epoch

    def killed_after_first(s, epoch):
        stop = end_epoch(s, epoch)
        if (
            epoch == 0 and s.run_dir.name == "stack1"
        ):  # the last slice: every slice's epoch-1 files are written
            raise KeyboardInterrupt  # as a kill between epochs
        return stop

    monkeypatch.setattr(stacked_fit, "end_epoch", killed_after_first)
    cfgs = [fast_cfg(tmp_path, "tiny", *SHORT, *common, *job, run=f"stack{i}") for i, job in enumerate(jobs)]
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs)
    monkeypatch.undo()
    assert read_run(tmp_path / "stack0").status == "interrupted"
    assert (
        0 <= evaluate(tmp_path / "stack0")["test_acc"] <= 100
    )  # the checkpoint of a slice, read as any run's
    train(fast_cfg(tmp_path, "tiny", *SHORT, *common, *jobs[0], run="stack0"))  # slice 0 alone, in place
    train_group(
        [fast_cfg(tmp_path, "tiny", *SHORT, *common, *job, run=f"stack{i}") for i, job in enumerate(jobs)][1:]
    )
    # slice 1 resumed as a group: exact. Slice 0 resumed by src.train: Lightning loads the float64 checkpoint
    # into the float32 model src.train builds, then converts it (as for any 64-true run resumed), so its
    # weights carry one float32 rounding (~1e-8 relative) from then on
    assert_same_run(tmp_path / "alone1", tmp_path / "stack1", 0.0, 1e-12, loops="fit_loop")
    assert_same_run(tmp_path / "alone0", tmp_path / "stack0", 1e-6, 1e-6, loops="fit_loop")
    for i in range(2):
        assert len(read_json(tmp_path / f"stack{i}" / "provenance.json")["starts"]) == 2


def test_plan_groups_what_can_share_a_model(tmp_path):
    """seed, lr, wd and the three STEs may differ inside a group; batch size may not; other STEs and
    diagnostics stay alone with the reason; 5 jobs at max_stack 4 are stacks of 3 and 2."""
    jobs = [["ste=identity", "seed=0"], ["ste=relu", "seed=1", "optimizer.lr=0.3"],
            ["ste=clipped_relu", "optimizer.weight_decay=0"], ["seed=3", "data.batch_size=8"],
            ["ste=ewgs"], ["seed=5", "callbacks.diagnostics.every_n_steps=5"],
            ["seed=6", "data.on_device=true"], ["seed=7", "data.on_device=true"]]  # fmt: skip
    cfgs = []
    for i, job in enumerate(jobs):
        extra = [] if "callbacks.diagnostics.every_n_steps=5" in job else ["callbacks.diagnostics=null"]
        cfgs.append((i, fast_cfg(tmp_path, "lenet5", *extra, *job, run=f"j{i}"), "mnist"))
    stacks, alone = plan(cfgs, max_stack=8)
    assert stacks == [[0, 1, 2], [6, 7]]  # data.on_device: a group of its own (one copy on the device)
    assert alone[3] == "no other job of the sweep shares its model"
    assert alone[4].startswith("ste=ewgs") and alone[5].startswith("callbacks.diagnostics is on")
    five = [
        (i, fast_cfg(tmp_path, "tiny", "callbacks.diagnostics=null", f"seed={i}", run=f"f{i}"), "mnist")
        for i in range(5)
    ]
    assert sorted(map(len, plan(five, max_stack=4)[0])) == [2, 3]


def test_a_stack_that_does_not_fit_is_one_line_naming_group_and_k(tmp_path, monkeypatch):
    """Out of memory in the probe: one line with the group, K and a smaller max_stack, before any run file."""
    cfgs = [
        fast_cfg(tmp_path, "tiny", "callbacks.diagnostics=null", f"seed={i}", run=f"s{i}") for i in range(4)
    ]
    slices = [stacked_fit.Slice(c, *_built(c)) for c in cfgs]

    def no_memory(*args, **kwargs):
        raise StackTooBig("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("src.stacked.launch.speedup", no_memory)
    sweep = StackedSweep(None, None, None, max_stack=4, force=True, probe_steps=0)
    message = sweep.check(slices)
    assert message.startswith("error: stacked group tiny/cifar10 (K=4) does not fit in memory")
    assert message.endswith("try hydra.launcher.max_stack=2") and "\n" not in message
    assert not any((tmp_path / f"s{i}").exists() for i in range(4))


def _built(cfg):
    run_dir, resume, datamodule, module = build(cfg)
    return run_dir, datamodule, module, resume


def test_a_stack_slower_than_one_by_one_falls_back_and_says_so_once(tmp_path, monkeypatch):
    """The probe measures 0.73x (LeNet-5 K=4 on the 2-core CPU): the group runs one by one, said once per sweep;
    force=true only checks that the stack fits and stacks."""
    cfgs = [
        fast_cfg(tmp_path, "tiny", "callbacks.diagnostics=null", f"seed={i}", run=f"s{i}") for i in range(2)
    ]
    slices = [stacked_fit.Slice(c, *_built(c)) for c in cfgs]
    monkeypatch.setattr("src.stacked.launch.speedup", lambda *a, **k: 0.73)
    sweep = StackedSweep(None, None, None, max_stack=4, force=False, probe_steps=5)
    assert sweep.check(slices) == sweep.check(slices) == ONE_BY_ONE
    assert len(sweep.said) == 1 and "0.73x the throughput of one by one" in next(iter(sweep.said))
    assert StackedSweep(None, None, None, max_stack=4, force=True, probe_steps=5).check(slices) is None


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """python -m src.train -m hydra/launcher=stacked ... on tiny fake MNIST, 1 epoch of 2 steps, in tmp_path."""
    data = fake_data(tmp_path / "data")
    command = [sys.executable, "-m", "src.train", "-m", "hydra/launcher=stacked", "model=tiny", "data=mnist",
               f"paths.data_dir={data}", "data.verify_checksums=false", "data.download=false", "data.batch_size=16",
               *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a Python start per command: ~30 s each on the loaded 2-core CPU
def test_cli_sweep_stacks_the_groupable_jobs_and_runs_the_rest_alone(tmp_path):
    out = cli(
        tmp_path,
        "hydra.launcher.force=true",
        "callbacks.diagnostics=null",
        "ste=identity,relu,ewgs",
        "seed=0,1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "6 jobs in 1 stacks (K = 4), 2 one by one" in out.stderr + out.stdout
    runs = sorted((tmp_path / "sweep").glob("*_tiny-*"))
    assert len(runs) == 6 and all(read_run(r).status == "finished" for r in runs)
    for run in runs:
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        stack = read_json(run / "provenance.json").get("stack")
        assert (stack or {}).get("k") == (None if "ewgs" in run.name else 4), run.name


@pytest.mark.slow
def test_cli_no_groupable_jobs_run_one_by_one_said_once(tmp_path):
    out = cli(tmp_path, "seed=0,1")  # callbacks.diagnostics on (the default): not stacked
    assert out.returncode == 0, out.stderr[-3000:]
    said = [line for line in (out.stderr + out.stdout).splitlines() if "no jobs to stack" in line]
    assert len(said) == 1 and said[0].endswith(
        "running all 2 one by one (callbacks.diagnostics is on (callbacks.diagnostics=null stacks))"
    )
    assert all(read_run(r).status == "finished" for r in (tmp_path / "sweep").glob("*_tiny-*"))


@pytest.mark.slow
def test_cli_max_stack_below_one_is_one_line_and_writes_nothing(tmp_path):
    out = cli(tmp_path, "hydra.launcher.max_stack=0", "seed=0,1")
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1]
        == "error: hydra.launcher.max_stack must be an integer >= 1, got 0"
    )
    assert not (tmp_path / "sweep").exists()


def test_paper_fast_stacks_every_job_of_its_stages(tmp_path, monkeypatch):
    """conf_tools/pipeline/paper_fast.yaml: each multirun the pipeline launches is stacked whole, in stacks of
    K = 3 (as the profile states), on the paper's protocol (200 epochs) with trainer=gpu."""
    from src.reproduce import jobs as pipeline_jobs
    from src.reproduce.profile import load_profile
    from src.reproduce.stages import Pipeline
    from tests.test_profiles import expand, write_summary

    multiruns = []

    def fake_run(stage_dir: Path, args: list[str], launcher) -> None:  # records a multirun, launches nothing
        multiruns.append(expand(args))
        for job in multiruns[-1]:
            write_summary(stage_dir, dict(a.split("=", 1) for a in job))

    monkeypatch.setattr(pipeline_jobs, "run_hydra", fake_run)
    pipeline = Pipeline(load_profile("paper_fast") | {"name": "paper_fast"}, tmp_path, None, [])
    pipeline.pretrain(), pipeline.table1()
    assert [len(m) for m in multiruns] == [
        3,
        6,
        6,
        6,
    ]  # FP: 3 seeds; Table 1: per seed, 3 STEs × 2 bit widths
    for n, multirun in enumerate(multiruns[:2]):  # the FP stage and one seed's Table 1 (the others alike)
        assert all("hydra/launcher=stacked" in job for job in multirun)
        overrides = [[o for o in job if not o.startswith("hydra/")] for job in multirun]
        composed = [
            (i, make_cfg(tmp_path / "c" / f"{n}_{i}", job), "cifar10") for i, job in enumerate(overrides)
        ]
        assert all(
            cfg.trainer.max_epochs == 200 and cfg.trainer.accelerator == "gpu" for _, cfg, _ in composed
        )
        stacks, alone = plan(composed, max_stack=8)
        assert not alone and [len(s) for s in stacks] == [3] * (len(multirun) // 3)
