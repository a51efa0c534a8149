"""The pipeline behind `make reproduce`: profiles, sweep grouping, skipping done runs, finding checkpoints, and
the smoke profile end to end with its report checked against the runs (faults: tests/test_pipeline_faults.py)."""

import json
import math
from pathlib import Path

import pytest

from src.reproduce import jobs as multiruns
from src.reproduce import profile
from src.reproduce.cli import main
from src.reproduce.jobs import checkpoint_of, launch, sweeps
from src.reproduce.profile import load_profile
from src.reproduce.stages import Pipeline
from tests.conftest import REPO
from tests.runs import fake_data, job_run


def test_profiles_inherit_from_paper_and_replace_lists():
    paper, smoke, demo = (load_profile(p) for p in ("paper", "smoke", "demo"))
    assert paper["stages"] == ["pretrain", "table1", "fig2", "fig4", "two_layer", "report"]
    assert paper["nets"] == ["lenet5_mnist", "vgg11_cifar10", "resnet20_cifar10"] and paper["bits"] == [2, 4]
    assert smoke["stages"] == paper["stages"] and smoke["seeds"] == [0]
    assert "trainer.max_epochs=2" in smoke["overrides"]["pretrain"] and paper["overrides"]["fig2"] == [
        "callbacks.diagnostics.descent=true"
    ]
    assert demo["stages"] == ["two_layer", "report"]
    names = ", ".join(sorted(p.stem for p in profile.PROFILES.glob("*.yaml")))
    assert {"demo", "paper", "smoke"} <= set(names.split(", "))
    with pytest.raises(SystemExit, match=f"^error: unknown profile 'papr'; valid profiles: {names}$"):
        load_profile("papr")


def test_sweeps_group_jobs_into_few_multiruns():
    jobs = [
        {"experiment": "e", "seed": 0, "quant.bits": b, "ste": s}
        for b in (2, 4)
        for s in ("identity", "relu")
    ]
    assert sweeps(jobs, ("ste", "quant.bits")) == [
        ["experiment=e", "seed=0", "ste=identity,relu", "quant.bits=2,4"]
    ]
    partial = sweeps(jobs[1:], ("ste", "quant.bits"))  # not a full product: one multirun per STE
    assert sorted(partial) == [
        ["experiment=e", "seed=0", "ste=identity", "quant.bits=4"],
        ["experiment=e", "seed=0", "ste=relu", "quant.bits=2,4"],
    ]
    other_seed = jobs + [{"experiment": "e", "seed": 1, "quant.bits": 2, "ste": "relu"}]
    assert len(sweeps(other_seed, ("ste", "quant.bits"))) == 2


def finished(stage: Path, name: str, ste: str = "relu", bits: int = 2, **fields) -> Path:
    """A run of job (experiment e, seed 0, ste, bits) in stage/name, written by src/runs' writer."""
    run = job_run(stage / name, {"experiment": "e", "seed": 0, "ste": ste, "quant.bits": bits}, **fields)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    return run


def test_launch_skips_done_runs_and_relaunches_unfinished_and_failed_ones_in_place(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(multiruns, "run_hydra", lambda stage, args, launcher: calls.append(args))
    stage = tmp_path / "table1"
    finished(stage, "done", ste="relu")
    finished(stage, "diverged", ste="clipped_relu", status="diverged")
    finished(stage, "failed", ste="ewgs", status="failed", reason="boom")
    (stage / "half").mkdir()
    (stage / "half" / "config.yaml").write_text("seed: 0\n")  # started, interrupted before summary.json
    stes = ("identity", "relu", "clipped_relu", "ewgs")
    jobs = [{"experiment": "e", "seed": 0, "quant.bits": 2, "ste": s} for s in stes]
    assert launch(stage, jobs, ("ste",), ["trainer=cpu"], None)
    assert calls == [["experiment=e", "seed=0", "quant.bits=2", "ste=ewgs,identity", "trainer=cpu"]]
    # src.train resumes an unfinished run in its own dir: nothing is moved aside
    assert sorted(p.name for p in stage.iterdir()) == ["diverged", "done", "failed", "half"]
    calls.clear()
    finished(stage, "done2", ste="identity")
    finished(stage, "done3", ste="ewgs", status="finished")
    assert not launch(stage, jobs, ("ste",), [], None) and calls == []


def test_later_stages_find_their_checkpoints(tmp_path):
    stage = tmp_path / "table1"
    run = finished(stage, "a", ste="clipped_relu", bits=4)
    finished(stage, "b", ste="relu", bits=4, status="diverged")
    job = {"experiment": "e", "seed": 0, "quant.bits": 4}
    assert checkpoint_of(stage, job | {"ste": "clipped_relu"}) == str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit, match="which diverged"):
        checkpoint_of(stage, job | {"ste": "relu"})
    with pytest.raises(SystemExit, match="which is missing"):
        checkpoint_of(stage, job | {"ste": "identity"})


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    """`make reproduce PROFILE=smoke` on tiny MNIST/CIFAR-10 files in their genuine formats: every stage runs,
    the report is complete and its Table 1 equals the runs' summaries."""
    from src.report import collect_runs, table1

    data = fake_data(tmp_path / "data")
    out = tmp_path / "smoke"
    extra = [
        f"paths.data_dir={data}",
        "data.verify_checksums=false",
        "data.download=false",
        "data.train_subset=256",
        "data.val_subset=128",
    ]
    main(["--profile", "smoke", "--out", str(out), "--data-note", "synthetic test files", *extra])
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record["stages"]) == set(load_profile("smoke")["stages"])
    report = (out / "report" / "report.md").read_text()
    for png in ("figure1.png", "cgd_spurious.png", "cgd_global.png"):
        assert (out / "report" / png).is_file() and png in report
    runs = [json.loads(p.read_text()) for p in (out / "table1").glob("*/summary.json")]
    assert len(runs) == 18
    cells = table1(collect_runs(out), "val_acc")
    for run in runs:
        cell = cells[(run["data"], run["model"], run["bits"])][run["ste"]]
        assert cell.n == 1 and math.isclose(cell.mean, run["val_acc"]) and f"{run['val_acc']:.2f}" in report
    assert "synthetic test files" in report
    # a second call finds every stage done and only rewrites the report; the first call's times are kept
    main(["--profile", "smoke", "--out", str(out), *extra])
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    for name, stage in stages.items():
        first, second = stage["attempts"]
        assert first["status"] == "ran" and stage["wall_time_s"] >= first["wall_time_s"] > 0
        assert second["status"] == ("ran" if name == "report" else "skipped")


def test_make_targets_are_documented():
    makefile = (REPO / "Makefile").read_text()
    for target in ("install", "test", "lint", "train", "demo", "reproduce"):
        assert f"\n{target}:" in makefile and "##" in makefile.split(f"\n{target}:")[1].splitlines()[0]


@pytest.mark.slow
def test_pipeline_writes_only_under_its_out_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(multiruns, "run_hydra", lambda *a: None)
    monkeypatch.setattr(Pipeline, "report", lambda self: True)
    out = tmp_path / "demo"
    main(["--profile", "demo", "--out", str(out)])
    theory = out / "two_layer" / "theory"
    assert {p.name for p in theory.iterdir()} >= {
        "certificate.md",
        "figure1.png",
        "cgd_spurious.png",
        "cgd_global.png",
    }
    assert json.loads((out / "pipeline.json").read_text())["profile"] == "demo"
