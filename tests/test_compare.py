"""Compare any runs: runs made by src.train, read back by the report and by reproduce; the statistics against
independent oracles; bad run files named in one line while the other runs are still reported."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from src.report.__main__ import main as report
from src.report.compare import Group, grouping_keys, ordering, setting
from src.report.stats import binomial_se, difference, stat, t975
from src.reproduce.jobs import find
from src.runs import SCHEMA, Run, read_json, read_run, write_json
from src.train import build_loggers, finish_wandb, train
from tests.conftest import REPO
from tests.runs import FAST, data_overrides, make_cfg
from tests.test_report import md_table


def run(out: Path, ste: str, seed: int, *extra: str) -> Path:
    """One tiny LeNet-5 run by src.train into out/<ste>-s<seed> (lenet5_mnist's config on test-made MNIST)."""
    run_dir = out / f"{ste}-s{seed}"
    overrides = ["experiment=lenet5_mnist", *data_overrides("lenet5", out.parent / "data"), *FAST]
    train(make_cfg(run_dir, [*overrides, "trainer.max_epochs=2", f"ste={ste}", f"seed={seed}", *extra]))
    return run_dir


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-STE × 2-seed sweep in one folder and one more STE's run in another, all trained by src.train."""
    root = tmp_path_factory.mktemp("compare")
    sweep, single = root / "sweep", root / "single"
    for ste in ("identity", "relu", "clipped_relu"):
        for seed in (0, 1):
            run(sweep, ste, seed)
    run(single, "leaky_clipped_relu", 0)
    return sweep, single


@pytest.mark.slow
def test_a_sweep_and_a_separate_run_share_one_table_and_one_figure(sweeps, tmp_path):
    out = tmp_path / "report"
    assert report([*map(str, sweeps), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    table = {
        r["group"]: r
        for r in md_table(text, "### lenet5 on mnist, experiment lenet5_mnist: 4 groups, 7 runs")
    }
    # a key only one group has (the leaky STE's ε) is part of its label, and absent from the others'
    assert set(table) == {
        "ste=identity",
        "ste=relu",
        "ste=clipped_relu",
        "ste=leaky_clipped_relu, ste.eps=0.1",
    }
    for ste in ("identity", "relu", "clipped_relu"):
        runs = [read_run(sweeps[0] / f"{ste}-s{seed}") for seed in (0, 1)]
        accs = [r["val_acc"] for r in runs]
        mean, sd = sum(accs) / 2, abs(accs[0] - accs[1]) / math.sqrt(2)  # sample std of two values
        half = 12.706 * sd / math.sqrt(2)  # t(0.975, 1 df), Student's table
        row = table[f"ste={ste}"]
        assert row["n"] == "2" and row["seeds"] == "0, 1"
        assert row["final top-1 (%)"] == f"{mean:.2f} ± {sd:.2f}"
        assert (
            row["95 % CI"] == f"[{max(mean - half, 0):.2f}, {min(mean + half, 100):.2f}]"
        )  # a % stays in [0, 100]
    one = read_run(sweeps[1] / "leaky_clipped_relu-s0")
    se = 100 * math.sqrt(one["val_acc"] / 100 * (1 - one["val_acc"] / 100) / one["val_examples"])
    leaky = table["ste=leaky_clipped_relu, ste.eps=0.1"]
    assert leaky["n"] == "1" and leaky["final top-1 (%)"] == f"{one['val_acc']:.2f}"
    assert (
        leaky["95 % CI"]
        == f"[{one['val_acc'] - 1.96 * se:.2f}, {one['val_acc'] + 1.96 * se:.2f}] (binomial, 1 run)"
    )
    assert one["val_examples"] == 32  # limit_val_batches=1 × val_batch_size 32 of the 128 test images
    figures = [line for line in text.splitlines() if line.startswith("![compare_")]
    assert figures == [
        "![compare_lenet5_mnist_lenet5_mnist_2bit.png](compare_lenet5_mnist_lenet5_mnist_2bit.png)"
    ]
    assert (out / "compare_lenet5_mnist_lenet5_mnist_2bit.png").read_bytes()[:4] == b"\x89PNG"
    assert "Orderings (pairs that differ in one key" in text


def test_runs_csv_has_the_start_time_of_every_run(sweeps, tmp_path):
    report([str(sweeps[0]), "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "runs.csv")
    assert len(table) == 6 and all(pd.to_datetime(table["started"]).dt.year >= 2025)


@pytest.mark.slow
def test_a_run_reached_twice_counts_once(sweeps, tmp_path):
    """Overlapping folders, or a runs.csv beside the run dirs it archived plus one new run (how a published result
    gets more seeds): each run is one row, and the run dir (with curves) wins over its archived row."""
    sweep, single = sweeps
    report([str(sweep), "--out", str(tmp_path / "first")])
    archived = tmp_path / "first" / "runs.csv"
    names = sorted(pd.read_csv(archived)["run_name"])
    report([str(sweep), str(sweep / "relu-s0"), str(archived), str(single), "--out", str(tmp_path / "again")])
    leaky = read_run(single / "leaky_clipped_relu-s0")["run_name"]
    assert sorted(pd.read_csv(tmp_path / "again" / "runs.csv")["run_name"]) == sorted([*names, leaky])
    assert "read from the archived" not in (tmp_path / "again" / "report.md").read_text()  # all live run dirs
    report([str(archived), str(archived), "--out", str(tmp_path / "twice")])
    assert sorted(pd.read_csv(tmp_path / "twice" / "runs.csv")["run_name"]) == names
    assert "6 runs read from the archived" in (tmp_path / "twice" / "report.md").read_text()


@pytest.mark.slow
def test_an_older_runs_csv_groups_with_new_runs_of_the_same_setting(sweeps, tmp_path):
    """Seed 0 from a runs.csv written before weight quantization existed (its rows rebuild only the protocol's
    config) and seed 1 from run dirs: one group per STE with n = 2; a key the archive does not record is unknown,
    not a difference."""
    sweep, _ = sweeps
    report([str(sweep), "--out", str(tmp_path / "first")])
    table = pd.read_csv(tmp_path / "first" / "runs.csv")
    old = tmp_path / "old" / "runs.csv"
    old.parent.mkdir()
    table[table["seed"] == 0].drop(columns=["wquant", "wbits"]).assign(git_commit="0123abc").to_csv(
        old, index=False
    )
    new = [str(sweep / f"{ste}-s1") for ste in ("identity", "relu", "clipped_relu")]
    report([str(old), *new, "--out", str(tmp_path / "both")])
    text = (tmp_path / "both" / "report.md").read_text()
    rows = md_table(text, "### lenet5 on mnist, experiment lenet5_mnist: 3 groups, 6 runs")
    assert {r["group"] for r in rows} == {"ste=identity", "ste=relu", "ste=clipped_relu"}
    assert all(r["n"] == "2" and r["seeds"] == "0, 1" for r in rows)
    assert (
        f"3 runs read from the archived `{old}` (their run dirs are gone: final numbers, no curves, no per-layer diagnostics): runs made by code `0123abc`,"
        in text
    )


def test_a_float_run_drops_the_activation_ste_only():
    """quant.bits null: the activation STE (ste.*, quant.ste.*) means nothing, the weights' STE still does; and a
    key an archived run does not record is no difference, while one a run dir lacks is."""
    ident = {"quant.bits": None, "ste.name": "relu", "quant.ste.name": "relu", "wquant.ste": "identity"}
    assert setting(Run(Path("fp"), {"identity": ident})) == {
        "quant.bits": None,
        "wquant.ste": "identity",
        "init": "scratch",
    }
    live, old = {"ste.name": "relu", "ste.eps": 0.1}, {"ste.name": "relu"}
    assert grouping_keys([live, old], [False, True]) == [] and grouping_keys([live, old]) == ["ste.eps"]


def test_reproduce_finds_a_run_by_its_identity(sweeps):
    job = {"experiment": "lenet5_mnist", "seed": 1, "quant.bits": 2, "ste": "relu"}
    assert find(sweeps[0], job).path == sweeps[0] / "relu-s1"
    assert find(sweeps[0], job | {"seed": 2}) is None
    assert find(sweeps[0], job | {"quant.bits": 4}) is None
    assert find(sweeps[0], job | {"tag": "tuned"}) is None  # a job that names no tag means none


def test_summary_holds_schema_identity_and_choices(sweeps):
    summary = read_json(sweeps[0] / "relu-s0" / "summary.json")
    assert summary["schema"] == SCHEMA and summary["choices"]["ste"] == "relu"
    assert summary["identity"]["ste.name"] == "relu" and summary["identity"]["model.channels"] == [6, 16]
    assert not any(k.startswith(("paths.", "logger.", "hydra")) for k in summary["identity"])


# ---- statistics against independent oracles ------------------------------------------------------------------


def t_cdf(t: float, df: int) -> float:
    """Student's t CDF by Simpson's rule on its density (the oracle for the quantile table)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    n, h = 20000, t / 20000
    area = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    return 0.5 + area * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30])
def test_t_quantiles_are_the_975_points_of_students_t(df):
    assert t_cdf(t975(df), df) == pytest.approx(0.975, abs=2e-4)


def group(label: str, values: dict[int, float], examples: int = 10000) -> Group:
    """A Group of finished runs (seed -> final top-1) written by the real writer."""

    class Fake:
        def __init__(self, seed, acc):
            self.summary = {"seed": seed, "val_acc": acc, "val_examples": examples, "status": "finished"}

        def __getitem__(self, key):
            return self.summary.get(key)

        def value(self, metric):
            return self.summary.get(metric)

    return Group((label,), label, [Fake(s, v) for s, v in values.items()])


def test_one_run_uses_the_binomial_se_of_its_test_set():
    s = stat(group("a", {0: 90.0}), "val_acc")
    assert s.n == 1 and s.std is None and s.how == "binomial"
    assert s.half == pytest.approx(1.96 * 100 * math.sqrt(0.9 * 0.1 / 10000))
    assert binomial_se(50.0, None) is None


def test_paired_ordering_and_not_resolved():
    a = group("clipped_relu", {0: 92.0, 1: 93.0, 2: 92.5})
    b = group("relu", {0: 80.0, 1: 81.5, 2: 80.2})
    d = [12.0, 11.5, 12.3]
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert (
        ordering(a, b)
        == f"clipped_relu > relu: 3/3 seeds, +{mean:.2f} ± {4.303 * sd / math.sqrt(3):.2f} pt (95 % CI, paired)"
    )
    assert ordering(b, a).startswith("clipped_relu > relu")  # the winner is named first
    close = group("identity", {0: 92.1, 1: 92.8, 2: 92.6})
    assert ordering(a, close).startswith("clipped_relu vs identity: not resolved, 1/3 seeds")


def test_unpaired_groups_get_welchs_interval():
    a, b = group("a", {0: 90.0, 1: 92.0}), group("b", {5: 80.0}, examples=None)
    d = difference(a, b)  # b has no test-set size: its variance is a's seed variance s² = 2.0 (1 df)
    var = 2.0 / 2 + 2.0  # s²/n + s²
    df = var**2 / ((2.0 / 2) ** 2 / 1 + 2.0**2 / 1)  # Welch–Satterthwaite
    assert d.how.startswith("Welch, the single run") and d.mean == pytest.approx(11.0)
    assert d.half == pytest.approx(t975(df) * math.sqrt(var))


def test_a_single_run_takes_the_larger_of_its_binomial_and_the_other_groups_seed_variance():
    binomial = (100 * math.sqrt(0.8 * 0.2 / 10000)) ** 2  # 0.16: one run at 80 % on 10,000 test images
    tight = group("a", {0: 90.0, 1: 90.2, 2: 90.4})  # seed variance 0.04 < 0.16: the binomial stays
    d = difference(tight, group("b", {5: 80.0}))
    var = 0.04 / 3 + binomial
    assert d.how == "Welch" and d.half == pytest.approx(t975(var**2 / ((0.04 / 3) ** 2 / 2)) * math.sqrt(var))
    wide = group("a", {0: 90.0, 1: 92.0, 2: 94.0})  # seed variance 4.0 > 0.16: one seed of it is as uncertain
    d = difference(wide, group("b", {5: 80.0}))
    var = 4.0 / 3 + 4.0
    assert d.how.startswith("Welch, the single run")
    assert d.half == pytest.approx(t975(var**2 / ((4.0 / 3) ** 2 / 2 + 4.0**2 / 2)) * math.sqrt(var))
    one, other = group("a", {0: 90.0}), group("b", {1: 80.0})  # two single runs: binomial both sides
    assert difference(one, other).how == "Welch"


# ---- bad run files: one line each, the other runs still reported ------------------------------------------------


def test_bad_run_files_are_named_and_the_rest_reported(sweeps, tmp_path):
    bad = tmp_path / "bad"
    for name in ("truncated", "csv", "newer", "config"):
        (bad / name).mkdir(parents=True)
    write_json(bad / "newer" / "summary.json", {"schema": SCHEMA + 1, "status": "finished"})
    (bad / "truncated" / "summary.json").write_text('{"schema": 2, "status": "fini')
    (bad / "config" / "config.yaml").write_text("model: [unclosed\n")
    write_json(bad / "config" / "provenance.json", {})
    csv_run = bad / "csv"
    for name in ("summary.json", "provenance.json", "config.yaml"):
        (csv_run / name).write_bytes((sweeps[1] / "leaky_clipped_relu-s0" / name).read_bytes())
    (csv_run / "metrics.csv").write_text('epoch,step,val/acc\n0,0,1\n1,"unterminated\n')
    out = tmp_path / "report"
    assert report([str(sweeps[1]), str(bad), "--out", str(out)]) == 0
    lines = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("- ⚠ Skipped")]
    assert len(lines) == 4
    assert any(
        f"{bad / 'newer' / 'summary.json'}: schema {SCHEMA + 1}, newer than this code" in x for x in lines
    )
    assert any(f"{bad / 'truncated' / 'summary.json'}: unreadable" in x for x in lines)
    assert any(f"{bad / 'config' / 'config.yaml'}: unreadable" in x for x in lines)
    assert any(f"{csv_run / 'metrics.csv'}: unreadable" in x and "curves are left out" in x for x in lines)
    assert (
        "Runs found: 2" in (out / "report.md").read_text()
    )  # the good run and the one with a bad metrics.csv


def test_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert report([str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no runs under {tmp_path}"


# ---- W&B and RunChecks ----------------------------------------------------------------------------------------


def test_wandb_config_is_flat_once_with_user_tags_and_a_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    overrides = [
        *data_overrides("lenet5", tmp_path / "data"),
        "model=lenet5",
        "logger=wandb",
        "tags=[ablation]",
    ]
    cfg = make_cfg(run_dir, overrides)
    run_dir.mkdir()
    (logger,) = build_loggers(cfg, run_dir)
    try:
        config = dict(logger.experiment.config)
        assert config["model.channels"] == [6, 16] and config["optimizer.lr"] == cfg.optimizer.lr
        assert not any("_target_" in k or k.startswith(("config", "hydra")) for k in config)
        assert "num_classes" not in config and "in_shape" not in config  # Lightning's hparams stay out
        assert set(logger.experiment.tags) >= {"ablation", "lenet5", "mnist", "clipped_relu", "a2", "seed0"}
        assert logger.experiment.group == f"single/{cfg.run_name}"
    finally:
        finish_wandb([logger])
    assert OmegaConf.select(cfg, "tags") == ["ablation"]


@pytest.mark.slow
def test_default_run_dir_is_checked_without_a_warning(tmp_path):
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "src.train", "model=tiny", "quant.bits=99"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ") and "bits" in out.stderr
    assert "InterpolationResolutionError" not in out.stderr and "RunChecks" not in out.stderr
    assert not list((tmp_path / "outputs").rglob("*.json"))  # the rejected run left no files


# ---- Figures 2 and 4: a verdict computed from the curve -------------------------------------------------------


def slow_curve(accs: list[float], losses: list[float], slow_epochs: int) -> pd.DataFrame:
    """metrics.csv as a frame: epoch 0 the start (validated), then ``slow_epochs`` at lr 1e-5, then lr 0.01."""
    rows = [{"epoch": 0, "step": 0, "val/acc": accs[0], "train/loss": None, "lr": None}]
    rows += [{"epoch": e, "step": 100 * e, "val/acc": acc, "train/loss": loss, "lr": 1e-5 if e <= slow_epochs else 0.01}
             for e, (acc, loss) in enumerate(zip(accs[1:], losses, strict=True), start=1)]  # fmt: skip
    return pd.DataFrame(rows).set_index("epoch")


def test_figure_verdicts_follow_the_rule():
    from src.report.stability import verdict

    run = {"val_examples": 10000}
    drop = slow_curve([90.0, 89.9, 85.0, 60.0, 30.0], [0.1, 0.2, 0.5, 1.5], slow_epochs=3)
    half = 196 * math.sqrt(0.9 * 0.1 / 10000 + 0.6 * 0.4 / 10000)
    assert verdict(run, drop) == (
        f"repelled: val top-1 90.00 → 60.00 % in 300 steps at lr ≤ 1e-5 (Δ -30.00 ± {half:.2f} pt, 95 % CI; "
        "train loss 0.10 → 0.50)"
    )  # the lr-0.01 epoch (30 %) is not the instability
    flat = slow_curve([71.0, 71.85, 71.3], [0.8, 0.79], slow_epochs=2)
    assert verdict(run, flat).startswith("not repelled within 200 steps: val top-1 71.00 → 71.30 %")
    rising = slow_curve([88.0, 87.9, 87.8], [0.24, 0.6], slow_epochs=2)  # accuracy flat, loss ×2.5
    assert verdict(run, rising).startswith("repelled:")
    assert verdict(run, slow_curve([90.0, 80.0], [0.1], slow_epochs=0)) == "no epoch at lr ≤ 1e-5: no verdict"
    assert verdict(run, pd.DataFrame()) == "no curve: no verdict"
