"""src.report on synthetic run dirs written here in src/train.py's format, with numbers the tests know."""

from __future__ import annotations

import hashlib
import math
import platform
import statistics
from itertools import takewhile
from pathlib import Path

import pytest
import yaml

from src.paper import TABLE1, TABLE2
from src.report import build_report, collect_runs, read_curves, table1
from src.report.__main__ import main
from src.report.provenance import wall_times
from src.report.table1 import fmt
from src.rundir import write_rows
from src.runs import read_json, write_json, write_pipeline, write_provenance, write_summary, write_tuning

VERSIONS = {"python": "3.11.7", "torch": "2.14.1", "numpy": "2.4.6"}
CONFIG = {
    "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "scheduler": {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "milestones": [20, 40], "gamma": 0.1},
    "data": {"batch_size": 64, "augment": False, "val_subset": None},
}


PROVENANCE = {
    "git_commit": "abc123",
    "versions": VERSIONS,
    "hardware": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2, "gpu": "none"},
    "data_root": "/data",
    "data_checksums_verified": True,
    "command": "python -m src.train",
}


def write_run(root: Path, name: str, curve=None, prov=None, config=None, starts=None, **fields) -> Path:
    """A run dir written by src/runs' own writers, as src.train writes it; ``curve`` = [(train_loss, val_acc)] per
    epoch after the start row; ``starts``: the UTC time of each start (a resumed run has several)."""
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "experiment": None,
        "tag": None,
        "model": "lenet5",
        "data": "mnist",
        "ste": "relu",
        "bits": 2,
        "alpha_mode": "fixed",
        "seed": 0,
        "train_subset": None,
        "val_subset": None,
        "epochs": 50,
        "max_epochs": 50,
        "status": "finished",
        "reason": None,
        "train_loss": 0.01,
        "val_loss": 0.05,
        "val_acc": 99.0,
        "val_acc_best": 99.1,
        "best_epoch": 48,
        "val_examples": 10000,
        "population_loss": None,
        "epoch_time_s": 1.0,
        "wall_time_s": 10.0,
        "init_checkpoint": str(
            root / "fp" / "last.ckpt"
        ),  # quantized Table-1 runs start from an FP checkpoint
        "checkpoint": str(run / "checkpoints" / "last.ckpt"),
    } | fields
    if summary["model"] in TABLE2:  # by default each net follows the paper's Table 2 length
        epochs = TABLE2[summary["model"]]["epochs"]
        summary |= {"epochs": fields.get("epochs", epochs), "max_epochs": fields.get("max_epochs", epochs)}
    summary["diverged"] = summary["status"] == "diverged"
    resolved = run_config(name, summary, config or {})
    (run / "config.yaml").write_text(yaml.safe_dump(resolved))
    choices = {k: summary[k] for k in ("model", "data", "ste", "experiment")}
    write_summary(run, resolved, choices, summary)
    for i, when in enumerate(starts or ["2025-01-01T00:00:00+00:00"]):
        write_provenance(run, PROVENANCE | {"time_utc": when} | (prov or {}), resumed=i > 0)
    write_metrics(run / "metrics.csv", curve or [(summary["train_loss"], summary["val_acc"])])
    return run


def run_config(name: str, summary: dict, extra: dict) -> dict:
    """The resolved config src.train would have saved for ``summary``'s run (CONFIG's recipe), with ``extra``."""
    paper = TABLE2.get(summary["model"], TABLE2["lenet5"])  # the recipe of Table 2 for this net
    recipe = {
        "optimizer": CONFIG["optimizer"] | {"lr": paper["lr"]},
        "scheduler": CONFIG["scheduler"] | {"milestones": paper["milestones"]},
    }
    config = (
        CONFIG
        | recipe
        | {
            "run_name": name,
            "seed": summary["seed"],
            "tag": summary["tag"],
            "model": {"name": summary["model"]},
            "ste": {"name": summary["ste"]},
            "quant": {"bits": summary["bits"], "alpha": "lloyd", "alpha_mode": summary["alpha_mode"]},
            "trainer": {"max_epochs": summary["max_epochs"]},
            "init": {"checkpoint": summary["init_checkpoint"]},
        }
    )
    config["data"] = CONFIG["data"] | {
        "batch_size": paper["batch_size"],
        "train_subset": summary["train_subset"],
        "val_subset": summary["val_subset"],
    }
    return config | extra


def write_metrics(path: Path, curve, start_acc: float = 50.0) -> None:
    """metrics.csv by src/rundir's writer: epoch 0 is the starting point (validation only), then e = 1..N."""
    rows, best = [{"epoch": 0, "step": 0, "val/loss": 2.0, "val/acc": start_acc}], start_acc
    for e, (loss, acc) in enumerate(curve, start=1):
        best = max(best, acc if acc is not None else best)
        row = {"epoch": e, "step": 10 * e, "train/loss": loss, "val/loss": 1.0, "val/acc": acc}
        rows.append({k: v for k, v in row.items() if v is not None} | {"val/acc_best": best, "lr": 0.01})
    write_rows(path, rows)


def md_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading``, as dicts keyed by its header."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = list(takewhile(lambda line: line.startswith("|"), lines[start:]))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block]
    return [dict(zip(cells[0], r, strict=True)) for r in cells[2:]]


def row(table: list[dict[str, str]], network: str, bits: str) -> dict[str, str]:
    """One Table-1 row by network and bit width."""
    return next(r for r in table if r["Network"] == network and r["BitWidth"] == bits)


SEEDS = {"identity": [98.1, 98.4, 98.2], "relu": [99.1, 99.3, 99.0], "clipped_relu": [99.2, 99.25, 99.3]}
LOSSES = {"identity": [0.031, 0.022, 0.027], "relu": [0.004, 0.006, 0.005], "clipped_relu": [0.12, 0.15, 0.2]}


@pytest.fixture
def table_root(tmp_path: Path) -> Path:
    """LeNet5 2-bit: three seeds per STE; ResNet20 4-bit with a violated ordering; diverged cells on VGG11."""
    root = tmp_path / "runs"
    for ste, accs in SEEDS.items():
        for seed, (acc, loss) in enumerate(zip(accs, LOSSES[ste], strict=True)):
            write_run(root, f"lenet-{ste}-s{seed}", ste=ste, seed=seed, val_acc=acc, train_loss=loss)
    for ste, acc in {"identity": 60.0, "relu": 50.0, "clipped_relu": 90.0}.items():  # relu < identity: ✗
        write_run(root, f"resnet-{ste}", model="resnet20", data="cifar10", bits=4, ste=ste, val_acc=acc)
    for seed in (0, 1):  # all of relu diverged; one of clipped_relu's two seeds diverged
        nulls = {
            "status": "diverged",
            "reason": "train/loss = nan at epoch 3",
            "train_loss": None,
            "val_acc": None,
        }
        write_run(root, f"vgg-relu-s{seed}", model="vgg11", data="cifar10", **nulls, seed=seed)
        clipped = nulls | {"val_acc": 10.0} if seed else {"val_acc": 91.5}  # 10.0: logged before the NaN
        write_run(
            root, f"vgg-clip-s{seed}", model="vgg11", data="cifar10", ste="clipped_relu", seed=seed, **clipped
        )
    return root


def test_table1_cells_are_mean_std_n_of_the_summaries(table_root: Path):
    runs = collect_runs(table_root)
    assert len(runs) == 9 + 3 + 4
    for metric, seeds in (("val_acc", SEEDS), ("train_loss", LOSSES)):
        cells = table1(runs, metric)[("mnist", "lenet5", 2)]
        for ste, values in seeds.items():
            assert cells[ste].n == 3 and cells[ste].diverged == 0
            assert cells[ste].mean == pytest.approx(statistics.mean(values))
            assert cells[ste].std == pytest.approx(statistics.stdev(values))


def test_rendered_table1_shows_paper_ours_n_and_difference(table_root: Path):
    text = build_report(table_root).read_text()
    for heading, metric, seeds in (("Table 1a", "val_acc", SEEDS), ("Table 1b", "train_loss", LOSSES)):
        lenet = row(md_table(text, heading), "LeNet5", "2")
        for ste, label in (
            ("identity", "identity"),
            ("relu", "vanilla ReLU"),
            ("clipped_relu", "clipped ReLU"),
        ):
            paper = TABLE1[("mnist", "lenet5", 2)][ste][metric == "val_acc"]
            mean, std = statistics.mean(seeds[ste]), statistics.stdev(seeds[ste])
            assert lenet[f"{label} paper"] == fmt(paper, metric)
            assert lenet[f"{label} ours"] == f"{fmt(mean, metric)} ± {fmt(std, metric)} (n=3)"
            assert lenet[f"{label} Δ"] == fmt(mean - paper, metric, sign=True)
    assert [r["Network"] for r in md_table(text, "Table 1a")][:6] == ["LeNet5"] * 2 + ["VGG11"] * 2 + [
        "ResNet20"
    ] * 2


def test_loss_and_accuracy_formats_follow_the_paper():
    assert [fmt(x, "train_loss") for x in (0.026, 8.8e-4, 0.19, 1.56, 0.1)] == [
        "2.6e-2",
        "8.8e-4",
        "0.19",
        "1.56",
        "0.10",
    ]
    assert fmt(-0.0123, "train_loss", sign=True) == "-1.2e-2" and fmt(0.5, "val_acc", sign=True) == "+0.50"
    assert fmt(99.234, "val_acc") == "99.23" and fmt(None, "val_acc") == "—"


def test_diverged_cells_show_diverged_with_k_of_n(table_root: Path):
    text = build_report(table_root).read_text()
    vgg = row(md_table(text, "Table 1a"), "VGG11", "2")
    assert vgg["vanilla ReLU ours"] == "diverged (n=2)" and vgg["vanilla ReLU Δ"] == "—"
    assert (
        vgg["clipped ReLU ours"] == "91.50 (n=1, 95 % CI ±0.55 binomial); diverged 1 of 2"
    )  # n=1: no ± std, its binomial CI
    assert vgg["clipped ReLU Δ"] == fmt(91.5 - 90.92, "val_acc", sign=True)
    assert row(md_table(text, "Table 1b"), "VGG11", "2")["vanilla ReLU ours"] == "diverged (n=2)"


def test_ordering_check_flags_a_violating_row(table_root: Path):
    check = md_table(build_report(table_root).read_text(), "## Ordering check")
    verdict = "ours: clipped ≥ ReLU > identity"
    resnet, lenet = row(check, "ResNet20", "4"), row(check, "LeNet5", "2")
    assert resnet[verdict] == "✗" and resnet["vanilla ReLU"] == "50.00" and resnet["identity"] == "60.00"
    assert resnet["paper's numbers"] == "✓" and resnet["scope"] == "claim (deep net)"
    # the paper's own LeNet5 2-bit numbers break it: clipped 99.23 < ReLU 99.24
    assert lenet[verdict] == "✓" and lenet["paper's numbers"] == "✗"
    assert lenet["scope"] == "for information"


@pytest.fixture
def figure_root(tmp_path: Path) -> Path:
    """Two 4-bit ResNet20 Table-1 minima, Figure 2 runs from each, a Figure 4 run, theory outputs, pipeline.json."""
    root = tmp_path / "runs"
    resnet = {"model": "resnet20", "data": "cifar10", "bits": 4}
    parents = {
        ste: write_run(root / "table1", ste, ste=ste, train_loss=loss, val_acc=acc, **resnet)
        for ste, loss, acc in (("relu", 0.3, 85.0), ("clipped_relu", 0.05, 91.0))
    }
    for ste, parent in parents.items():
        curve = [(0.5, 80.0), (1.2, 60.0), (1.6, 45.0)]
        write_run(
            root / "fig2",
            f"f2-{ste}",
            curve=curve,
            experiment="fig2_identity_repelled",
            tag=f"from_{ste}",
            ste="identity",
            init_checkpoint=str(parent / "checkpoints" / "last.ckpt"),
            train_loss=1.6,
            val_acc=45.0,
            epochs=3,
            max_epochs=3,
            **resnet,
        )
    write_run(
        root / "fig4",
        "f4",
        curve=[(0.3, 86.0), (0.4, 84.0)],
        experiment="fig4_relu_2bit",
        tag="from_clipped_relu",
        **resnet | {"bits": 2},
        train_loss=0.4,
        val_acc=84.0,
        epochs=2,
    )
    theory = root / "two_layer" / "theory"
    theory.mkdir(parents=True)
    for name in ("figure1.png", "cgd_spurious.png", "cgd_global.png"):
        (theory / name).write_bytes(b"\x89PNG fake " + name.encode())
    (theory / "certificate.md").write_text("| STE | vanishes |\n|---|---|\n| relu | yes |\n")
    pipeline = {
        "profile": "smoke",
        "seeds": [0],
        "stages": {"fig2": {"wall_time_s": 4000.0, "skipped": False}},
        "data_note": "CIFAR-10 from the JPEG rebuild",
    }
    write_pipeline(root, pipeline)
    return root


def test_figures_are_written_linked_and_start_where_the_runs_start(figure_root: Path):
    path = build_report(figure_root, figure_root / "out")
    text, out = path.read_text(), path.parent
    for name in ("figure2.png", "figure4.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in text
    fig2 = {r["run"]: r for r in md_table(text, "## Figure 2")}
    # start: the parent's final train loss / the step-0 validation; final: the summary; paper: Table 1 and legend
    assert fig2["from_relu"]["ours start"] == "0.30 / 50.00"
    assert fig2["from_relu"]["ours final"] == "1.60 / 45.00"
    assert fig2["from_clipped_relu"]["ours start"] == "5.0e-2 / 50.00"
    assert fig2["from_relu"]["paper final"] == "1.48 / 49.73"
    assert fig2["from_clipped_relu"]["paper start"] == "4.0e-2 / 91.24"
    assert fig2["from_relu"]["epochs run / max"] == "3 / 3"
    (fig4,) = md_table(text, "## Figure 4")
    assert fig4["paper start"] == "0.24 / 88.38" and fig4["paper final"] == "—"
    assert fig4["ours start"] == "— / 50.00"  # no init_checkpoint: no training loss at the start
    assert "CReLU 1.53 / 47.48 %" in text and "88.38 %" in text


def test_theory_outputs_are_copied_and_the_certificate_included(figure_root: Path):
    # twice with out inside ROOT: the copies in ROOT/report must not be taken for sources
    build_report(figure_root)
    text = build_report(figure_root).read_text()
    for name in ("figure1.png", "cgd_spurious.png", "cgd_global.png"):
        copy = figure_root / "report" / name
        assert copy.read_bytes() == (figure_root / "two_layer" / "theory" / name).read_bytes()
        assert f"]({name})" in text
    assert "| relu | yes |" in text and "No two-layer runs found." in text


def test_other_rows_and_registry_stes_follow_the_papers(tmp_path: Path):
    write_run(tmp_path, "tiny-ltr", model="tiny", data="cifar10", ste="log_tailed_relu", val_acc=40.0)
    write_run(tmp_path, "lenet-ltr", ste="log_tailed_relu", val_acc=99.5)
    text = build_report(tmp_path).read_text()
    table = md_table(text, "Table 1a")
    assert [(r["Network"], r["BitWidth"]) for r in table][6:] == []
    assert list(table[0])[-3:] == ["log_tailed_relu paper", "log_tailed_relu ours", "log_tailed_relu Δ"]
    assert (
        list(table[0])[3] == "identity paper"
        and table[0]["log_tailed_relu ours"] == "99.50 (n=1, 95 % CI ±0.14 binomial)"
    )
    # a net the paper never ran is a reduced protocol: its own table, ours only, no paper column, no Δ
    reduced = md_table(text, "(reduced protocol: model tiny is not in the paper's Table 1")
    assert reduced == [
        {"Dataset": "CIFAR10", "Network": "tiny", "BitWidth": "2"}
        | {f"{ste} ours": "—" for ste in ("identity", "vanilla ReLU", "clipped ReLU")}
        | {"log_tailed_relu ours": "40.00 (n=1, 95 % CI ±0.96 binomial)"}
    ]


def test_two_layer_runs_plot_population_loss_per_ste(tmp_path: Path):
    root = tmp_path / "runs"
    for ste, final in (("relu", 0.02), ("identity", 0.9)):
        run = write_run(
            root,
            ste,
            model="two_layer",
            data="gaussian",
            ste=ste,
            bits=1,
            val_acc=None,
            population_loss=final,
            epochs=2,
            max_epochs=2,
        )
        lines = [
            "epoch,step,train/loss,val/loss,val/acc,val/acc_best,lr,time/epoch_s,val/population_loss",
            "0,0,,1.4,,,,,1.5",
            "1,2,1.2,1.0,,,0.01,0.1,1.1",
            f"2,4,0.6,0.5,,,0.01,0.1,{final}",
        ]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    text = build_report(root).read_text()
    assert (root / "report" / "two_layer.png").is_file() and "](two_layer.png)" in text
    rows = {r["STE"]: r for r in md_table(text, "## Two-layer model")}
    assert rows["relu"]["start population loss"] == "1.5" and rows["relu"]["final population loss"] == "0.02"
    assert rows["identity"]["final population loss"] == "0.9"
    assert "No quantized Table-1 runs." in text and "Table 1a" not in text


def test_read_curves_gives_one_row_per_epoch_from_the_start(tmp_path: Path):
    write_run(tmp_path, "r", curve=[(2.4, 10.0), (2.5, 12.0)])
    curves = read_curves(collect_runs(tmp_path)[0])
    assert list(curves.index) == [0, 1, 2] and list(curves["val/acc"]) == [50.0, 10.0, 12.0]
    assert list(curves["train/loss"].dropna().index) == [1, 2]


def section(text: str, heading: str) -> list[str]:
    """The non-empty lines of a '## ' section."""
    body = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def test_empty_root_exits_nonzero_with_one_line(tmp_path: Path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    assert main([str(root)]) != 0
    assert capsys.readouterr().err == f"error: no runs under {root}\n"
    assert not (root / "report").exists()


def test_sections_without_runs_are_one_line(tmp_path: Path):
    write_run(tmp_path / "runs", "fp", bits=None, init_checkpoint=None)
    text = build_report(tmp_path / "runs").read_text()
    assert section(text, "## Table 1")[0] == "No quantized Table-1 runs."
    assert "No Figure 2 runs (experiment `fig2_identity_repelled`).\n" in text and "## Figure 2" not in text
    assert "No Figure 4 runs" in text and "## Figure 4" not in text
    assert "No weights × activations runs (quantized weights or stage dir `wxa`).\n" in text
    assert "No tuning studies (tuning.json) or tuned runs.\n" in text
    assert "No STE diagnostics in the runs' metrics.csv (diag/, disagree/ or descent/ columns).\n" in text
    assert "## Inside the STE" not in text and "## Weights" not in text and "## Paper schedule" not in text
    assert "\n\n\n" not in text  # an empty section leaves no doubled blank line
    assert section(text, "## Two-layer model") == [
        "No theory outputs (figure1.png, cgd_*.png, certificate.md) found.",
        "No two-layer runs found.",
    ]


def test_provenance_versions_commits_data_and_pipeline(figure_root: Path):
    write_run(
        figure_root / "extra",
        "fp",
        bits=None,
        prov={"git_commit": "def456+dirty", "versions": VERSIONS | {"torch": "2.9.0"}},
    )
    for run in (figure_root / "table1").iterdir():  # the CIFAR runs read a copy with unverified checksums
        prov = read_json(run / "provenance.json") | {"data_checksums_verified": False}
        write_json(run / "provenance.json", prov)
    text = build_report(figure_root, figure_root / "out").read_text()
    prov = text.split("## Provenance", 1)[1]
    assert "- Profile: smoke" in prov and "Profile: **smoke**" in text
    assert "`abc123` (5 runs), `def456+dirty` (1 run)" in prov and "uncommitted changes" in prov
    assert "| torch | 2.14.1 (5 runs), 2.9.0 (1 run) |" in prov and "| numpy | 2.4.6 (6 runs) |" in prov
    assert "CIFAR-10 JPEG rebuild" in prov and "“CIFAR-10 from the JPEG rebuild”" in prov
    assert "Test CPU, 2 cores (torch threads 2), GPU: none (6 runs)" in prov
    assert "| fig2 | 1.11 h | ran |" in prov and "Summed wall time of the 6 runs: 1.0 min" in prov
    fp = {"training loss": "1.0e-2 (n=1)", "validation accuracy (%)": "99.00 (n=1, 95 % CI ±0.20 binomial)"}
    assert md_table(text, "Table 1c") == [{"Dataset": "MNIST", "Network": "LeNet5"} | fp]


def test_verified_cifar_is_not_called_a_copy(figure_root: Path):
    (figure_root / "pipeline.json").unlink()
    text = build_report(figure_root, figure_root / "out", profile="paper").read_text()
    assert "JPEG rebuild" not in text and "- Profile: paper" in text and "No pipeline.json" in text


def test_protocol_table_flags_smoke_runs_and_the_banner_follows(tmp_path: Path):
    paper_root, smoke_root = tmp_path / "paper", tmp_path / "smoke"
    write_run(paper_root, "lenet", epochs=50, max_epochs=50)
    write_run(smoke_root, "lenet", epochs=1, max_epochs=1, train_subset=512)
    paper, smoke = (build_report(r).read_text() for r in (paper_root, smoke_root))
    group = lambda text: md_table(text, "### Protocol actually run")[0]  # noqa: E731
    assert group(paper)["paper's protocol"] == "yes" and "Reduced protocol" not in paper
    assert group(smoke)["paper's protocol"] == "**no**: max_epochs 1 ≠ 50; train_subset 512"
    assert (
        group(smoke)["train_subset"] == "512 (1 run)"
        and "**Reduced protocol** — not the paper's: epochs 1 (paper 50); train_subset 512 (paper: all)"
        in smoke
    )
    assert "weight_decay=0.0001" in group(smoke)["recipe"] and "milestones=[20, 40]" in group(smoke)["recipe"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_run_dirs_are_never_modified_and_the_report_is_not_read_back(table_root: Path):
    before = snapshot(table_root)
    first = build_report(table_root).read_text()
    after = {k: v for k, v in snapshot(table_root).items() if not k.startswith("report/")}
    assert after == before
    (table_root / "broken").mkdir()
    (table_root / "broken" / "summary.json").write_text("{not json")
    second = build_report(table_root).read_text()
    assert "Runs found: 16" in first and "Runs found: 16" in second
    assert f"- ⚠ Skipped: {table_root / 'broken' / 'summary.json'}: unreadable (JSONDecodeError" in second


def test_cli_writes_report_md(table_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli-out"
    assert main([str(table_root), "--out", str(out), "--profile", "paper"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert "Profile: **paper**" in (out / "report.md").read_text()


@pytest.fixture
def knob_root(tmp_path: Path) -> Path:
    """VGG11 2-bit clipped_relu: seeds 0, 1 (seed 0 twice), a pact run, a scratch run, a 1-epoch run, a short
    run, a diverged run, a failed run and an interrupted one."""
    root = tmp_path / "runs"
    vgg = {"model": "vgg11", "data": "cifar10", "ste": "clipped_relu", "epochs": 200, "max_epochs": 200}
    write_run(root, "a-s0-old", **vgg, val_acc=80.0, starts=["2025-01-01T00:00:00+00:00"])
    write_run(root, "b-s0-new", **vgg, val_acc=90.0, starts=["2025-02-01T00:00:00+00:00"])
    write_run(root, "c-s1", **vgg, seed=1, val_acc=92.0, curve=[(1.0, 60.0), (0.5, 92.0)])
    write_run(root, "d-pact", **vgg, alpha_mode="pact", val_acc=93.0)
    write_run(root, "e-scratch", **vgg, seed=2, init_checkpoint=None, val_acc=50.0)
    write_run(root, "f-one-epoch", **vgg | {"max_epochs": 1, "epochs": 1}, seed=3, val_acc=40.0)
    write_run(root, "g-short", **vgg | {"epochs": 7}, seed=4, val_acc=41.0)
    write_run(
        root, "h-nan", **vgg, seed=5, status="diverged", reason="val/loss = inf at epoch 3", val_acc=10.0
    )
    failed = root / "i-failed"
    failed.mkdir()
    write_summary(failed, {"run_name": "i-failed"}, {}, {"status": "failed", "reason": "boom"})
    interrupted = write_run(root, "j-interrupted", **vgg, seed=6)
    (interrupted / "summary.json").unlink()
    return root


def test_runs_csv_has_one_row_per_run_with_its_knobs(knob_root: Path):
    import pandas as pd

    out = build_report(knob_root).parent
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 10 and runs["path"].is_unique
    for column in (
        "model", "data", "bits", "ste", "ste_eps", "alpha_mode", "init", "epochs", "max_epochs", "lr",
        "scheduler", "milestones", "batch_size", "train_subset", "val_subset", "seed", "tag", "val_acc",
        "val_acc_best", "best_epoch", "train_loss", "val_loss", "wall_time_s", "status", "reason",
    ):  # fmt: skip
        assert column in runs, column
    status = dict(zip(runs["run_name"], runs["status"], strict=True))
    assert status["i-failed"] == "failed" and status["j-interrupted"] == "interrupted"
    assert status["h-nan"] == "diverged" and status["c-s1"] == "finished"
    assert runs.set_index("run_name").loc["e-scratch", "init"] == "scratch"


def test_cells_average_seeds_alone_and_flag_a_repeated_seed(knob_root: Path):
    cells = table1(collect_runs(knob_root))
    main_row, pact = cells[("cifar10", "vgg11", 2)]["clipped_relu"], cells[("cifar10", "vgg11", 2, "pact")]
    assert sorted(main_row.values) == [90.0, 92.0]  # the newer seed-0 run counts, the older one does not
    assert main_row.repeats == ("seed 0 ×2",) and main_row.diverged == 1 and main_row.n_runs == 3
    assert pact["clipped_relu"].values == (93.0,)
    text = build_report(knob_root).read_text()
    table = md_table(text, "Table 1a")
    assert row(table, "VGG11", "2")["clipped ReLU ours"] == "91.00 ± 1.41 (n=2); diverged 1 of 3; seed 0 ×2"
    assert row(table, "VGG11", "2 (pact)")["clipped ReLU ours"] == "93.00 (n=1, 95 % CI ±0.50 binomial)"
    best = row(md_table(text, "Table 1a′"), "VGG11", "2")["clipped ReLU"]
    assert best == "99.10 ± 0.00 (n=2) @ epoch 48; diverged 1 of 3; seed 0 ×2"


def test_runs_off_protocol_are_listed_apart_with_the_reason(knob_root: Path):
    text = build_report(knob_root).read_text()
    others = {r["run"]: r["why"] for r in md_table(text, "### Other runs (not in Table 1)")}
    assert set(others) == {"e-scratch", "f-one-epoch", "g-short", "i-failed", "j-interrupted"}
    assert others["e-scratch"] == "started from scratch, not from an FP checkpoint"
    assert others["f-one-epoch"].startswith("not the row's majority protocol: max_epochs 1 (row: 200)")
    assert others["g-short"] == "stopped at epoch 7 of 200 without diverging"
    assert others["i-failed"] == "failed: boom" and others["j-interrupted"].startswith("interrupted")
    for acc in ("50.00", "40.00", "41.00"):  # out of Table 1's cells (the Comparison shows every run)
        assert acc not in text.split("## Table 1")[1].split("### Other runs")[0]
    diverged = md_table(text, "### Diverged runs")
    assert [(r["run"], r["why"]) for r in diverged] == [("h-nan", "val/loss = inf at epoch 3")]


def test_table1_curves_and_bars_are_written(knob_root: Path):
    out = build_report(knob_root).parent
    text = (out / "report.md").read_text()
    for name in (
        "table1_cifar10_vgg11_2bit.png",
        "table1_cifar10_vgg11_2bit_pact.png",
        "final_cifar10_vgg11.png",
    ):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in text
    (run,) = [r for r in collect_runs(knob_root) if r["run_name"] == "c-s1"]
    assert list(read_curves(run).index) == [0, 1, 2]
    assert sum(p.stat().st_size for p in out.iterdir()) < 2_000_000


def test_resumed_runs_list_their_starts_and_are_not_warned(tmp_path: Path):
    write_run(tmp_path, "resumed", starts=[f"2025-01-0{d}T00:00:00+00:00" for d in (1, 2)])
    text = build_report(tmp_path).read_text()
    host = platform.node()
    assert (
        f"`resumed` (2 starts): 2025-01-01T00:00:00+00:00 on {host} at `abc123`; 2025-01-02T00:00:00+00:00 on {host}"
        in text
    )
    assert "unfinished" not in text


def test_readme_block_gets_the_headline_rows_of_this_profile(table_root: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:p -->\nold\n<!-- /results:p -->\nafter\n")
    out = tmp_path / "docs" / "p"
    assert main([str(table_root), "--out", str(out), "--profile", "p", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- /results:p -->\nafter\n")
    block = text.split("<!-- results:p -->")[1]
    assert (
        f"[{out}/report.md](docs/p/report.md)" in block and "| MNIST | LeNet5 | 2 |" in block
    )  # link: from the readme
    assert f"--readme {readme}`" in block
    assert "| CIFAR10 | VGG11 | 4 |" not in block  # only rows that ran (the fixture has no VGG11 4-bit runs)


# --- weights × activations -----------------------------------------------------------------------------

WXA = {  # (wquant name, bits, scale, activation bits) -> final val_acc of seeds 0 and 1; bits as conf/wquant has them
    ("fp", None, None, 2): (99.0, 98.8),
    ("fp", None, None, 4): (99.2, 99.1),
    ("uniform", 4, "lloyd", 2): (98.9, 98.5),
    ("uniform", 4, "lsq", 2): (98.6, 98.4),  # a second 4-bit row: its scale tells it apart
    ("uniform", 2, "lloyd", 2): (98.0, 97.1),
    ("uniform", 2, "lloyd", 4): (98.4, 98.2),
    ("binary", 1, None, 2): (95.5, 94.0),
    ("ternary", 2, None, 2): (97.0, 96.2),
}
ROWS = ["float", "4-bit (scale=lloyd)", "4-bit (scale=lsq)", "2-bit", "ternary", "1-bit (binary)"]


def wquant(name: str, bits=None, scale=None) -> dict:
    """A resolved conf/wquant node."""
    node = {"_target_": "src.quant.weights.weight_quantizer", "name": name, "bits": bits, "scale": scale}
    return {"wquant": node | {"ste": "identity", "first_last": "float"}}


@pytest.fixture
def wxa_root(tmp_path: Path) -> Path:
    """The wxa stage (2 seeds per weight × activation cell), float Table-1 runs, a binary run and a failed 2-bit
    run that landed in table1/ (neither may enter Table 1)."""
    root = tmp_path / "runs"
    for (name, wbits, scale, abits), accs in WXA.items():
        for seed, acc in enumerate(accs):
            write_run(root / "wxa", f"{name}{wbits}{scale}-a{abits}-s{seed}", ste="clipped_relu", bits=abits,
                      seed=seed, val_acc=acc, epochs=3, max_epochs=3, wall_time_s=30.0,
                      config=wquant(name, wbits, scale))  # fmt: skip
    for seed, acc in enumerate((99.3, 99.1)):
        write_run(root / "table1", f"t1-s{seed}", ste="clipped_relu", seed=seed, val_acc=acc)
    write_run(
        root / "table1", "stray-binary", ste="clipped_relu", seed=5, val_acc=50.0, config=wquant("binary", 1)
    )
    write_run(root / "table1", "failed-w2", ste="clipped_relu", seed=6, status="failed", reason="boom",
              config=wquant("uniform", 2, "lloyd"))  # fmt: skip
    return root


def test_wxa_table_cells_are_mean_std_over_seeds(wxa_root: Path):
    text = build_report(wxa_root).read_text()
    table = md_table(text, "### MNIST LeNet5, STE clipped_relu")
    assert [r["weights"] for r in table] == ROWS and list(table[0]) == ["weights", "A 4-bit", "A 2-bit"]
    cells = {r["weights"]: r for r in table}
    for (name, wbits, scale, abits), accs in WXA.items():
        label = {"fp": "float", "ternary": "ternary", "binary": "1-bit (binary)"}.get(name, f"{wbits}-bit")
        label += f" (scale={scale})" if wbits == 4 else ""
        if name == "binary":
            accs = (*accs, 50.0)  # the stray binary run of table1/ is a W×A run (seed 5)
        spread = f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} (n={len(accs)})"
        assert cells[label][f"A {abits}-bit"] == spread, (name, wbits, abits)
    assert cells["4-bit (scale=lsq)"]["A 4-bit"] == "—"
    caption = text.split("### MNIST LeNet5, STE clipped_relu", 1)[1]
    assert "STE: clipped_relu (18 runs)" in caption and "Seeds: 0, 1, 5, 6" in caption
    assert "Epochs run / max: 3 / 3 (16 runs), 50 / 50 (2 runs)" in caption
    assert "name=uniform, bits=2, first_last=float, scale=lloyd, ste=identity (5 runs)" in caption
    assert "Wall time: 8.3 min summed over 18 runs" in caption  # 16 × 30 s + 2 × 10 s
    assert "- ⚠ `failed-w2` (w2a2): failed: boom" in text


def test_weight_quantized_runs_stay_out_of_table1_and_carry_their_bits(wxa_root: Path):
    import pandas as pd

    text = build_report(wxa_root).read_text()
    clipped = row(md_table(text, "Table 1a"), "LeNet5", "2")["clipped ReLU ours"]
    assert clipped == f"{statistics.mean([99.3, 99.1]):.2f} ± {statistics.stdev([99.3, 99.1]):.2f} (n=2)"
    assert "### Other runs" not in text  # the stray and failed W×A runs are not listed as Table-1 outsiders
    runs = pd.read_csv(wxa_root / "report" / "runs.csv").set_index("run_name")
    binary = runs.loc["binary1None-a2-s0", ["wquant", "wbits", "wa", "kind"]]
    assert binary.tolist() == ["binary", 1, "w1a2", "wxa"]
    assert runs.loc["ternary2None-a2-s1", "wa"] == "wta2" and runs.loc["uniform2lloyd-a4-s0", "wa"] == "w2a4"
    assert runs.loc["fpNoneNone-a4-s0", "wa"] == "wfa4" and runs.loc["fpNoneNone-a4-s0", "kind"] == "wxa"
    assert runs.loc["t1-s0", ["wquant", "wa", "kind"]].tolist() == ["fp", "wfa2", "table1"]
    assert "Runs found: 20 (Table 1 2, weights × activations 18)" in text


# --- paper schedule vs tuned ---------------------------------------------------------------------------


def optimizer(lr: float, wd: float) -> dict:
    return {"optimizer": CONFIG["optimizer"] | {"lr": lr, "weight_decay": wd}}


@pytest.fixture
def tune_root(tmp_path: Path) -> Path:
    """table1/ (paper schedule, lr 0.1, wd 1e-4), a relu 2-bit study in Optuna's summary form with three trial run
    dirs and two tuned seeds, and a clipped_relu 2-bit study in another form (no best: its best complete trial)."""
    root = tmp_path / "tune-runs"
    for ste, accs in (("relu", (97.0, 97.4)), ("clipped_relu", (98.0, 98.2))):
        for seed, acc in enumerate(accs):
            write_run(root / "table1", f"{ste}-s{seed}", ste=ste, seed=seed, val_acc=acc)
    trials = [(0.05, 1e-4, 96.5, "COMPLETE"), (0.0123, 3e-5, 97.9, "COMPLETE"), (0.3, 0.0, None, "FAIL")]
    study = root / "tune" / "lenet5_mnist" / "relu-2bit"  # src/reproduce/stages.py's layout
    for i, (lr, wd, value, _) in enumerate(trials):
        write_run(study, f"trial{i}_relu", seed=0, val_acc=value or 10.0, epochs=2, max_epochs=2, train_subset=5000,
                  wall_time_s=60.0, config=optimizer(lr, wd))  # fmt: skip
    records = [  # src/tune.py's format
        {
            "number": i,
            "state": state,
            "params": {"optimizer.lr": lr, "optimizer.weight_decay": wd},
            "value": v,
            "run_status": "finished",  # the trial run's own status: Optuna's state decides
        }
        for i, (lr, wd, v, state) in enumerate(trials)
    ]
    doc = {"ste": "relu", "bits": 2, "holdout": 5000, "trials": records, "best": records[1]}
    write_tuning(study, doc)
    for seed, acc in enumerate((98.1, 98.6)):
        write_run(
            root / "tuned",
            f"relu-tuned-s{seed}",
            seed=seed,
            tag="tuned",
            val_acc=acc,
            config=optimizer(0.0123, 3e-5),
        )
    other = root / "tune" / "lenet5_mnist" / "clipped_relu-2bit"  # another format: the reader copes
    other.mkdir(parents=True)
    states = [
        ("TrialState.COMPLETE", 0.02, 98.3),
        ("TrialState.PRUNED", 0.2, 99.9),
        ("TrialState.COMPLETE", 0.07, 98.5),
    ]
    other_doc = {
        "trials": [
            {"params": {"lr": lr, "weight_decay": 1e-4}, "value": v, "state": s} for s, lr, v in states
        ]
    }
    write_tuning(other, other_doc)
    return root


def test_tuned_table_takes_the_studys_best_and_both_schedules_accuracy(tune_root: Path):
    text = build_report(tune_root).read_text()
    rows = {r["STE"]: r for r in md_table(text, "## Paper schedule vs tuned")}
    relu = rows["relu"]
    assert relu["paper schedule: lr / wd"] == "0.1 / 0.0001"
    paper, tuned = (97.0, 97.4), (98.1, 98.6)
    assert (
        relu["paper schedule: final top-1"]
        == f"{statistics.mean(paper):.2f} ± {statistics.stdev(paper):.2f} (n=2)"
    )
    assert relu["tuned: lr / wd"] == "0.0123 / 3e-05" and relu["tuned: best holdout top-1"] == "97.90"
    assert relu["trials (complete of all)"] == "2 of 3"
    assert relu["tuned: final top-1"] == f"{statistics.mean(tuned):.2f} ± {statistics.stdev(tuned):.2f} (n=2)"
    assert relu["Δ final (tuned − schedule)"] == fmt(
        statistics.mean(tuned) - statistics.mean(paper), "val_acc", sign=True
    )
    # no best recorded: the complete trial of highest value, never the pruned 99.9
    clipped = rows["clipped_relu"]
    assert clipped["tuned: lr / wd"] == "0.07 / 0.0001" and clipped["tuned: best holdout top-1"] == "98.50"
    assert clipped["tuned: final top-1"] == "—" and clipped["trials (complete of all)"] == "2 of 3"
    assert (
        clipped["Network"] == "LeNet5"
    )  # from the Table-1 runs of its STE and bits: no trial dirs, no tuned runs
    studies = "clipped_relu 2 bit: 3 trials, holdout not stated; relu 2 bit: 3 trials, holdout 5000 examples."
    assert f"Studies: {studies} Budget per trial: 2 epochs, train_subset 5000 (3 runs)" in text
    assert "searched lr 0.0123–0.3, weight_decay 0–0.0001" in text and "3.0 min over 3 trial runs" in text


@pytest.mark.parametrize(
    "tuned_clipped, answer",
    [
        (
            (98.2, 98.3, 98.5),
            "**partly**: no ordering reverses; resolved in one arm only: relu vs clipped_relu "
            "(clipped_relu > relu → unresolved).",
        ),
        (
            (96.9, 97.5, 97.2),
            "**yes, reversed**: relu vs clipped_relu (clipped_relu > relu → relu > clipped_relu).",
        ),
        ((99.0, 99.5, 99.3), "**no**: every pair of STEs is ordered the same way in both arms"),
    ],
)
def test_ranking_answer_compares_paired_cis_of_both_arms(tmp_path: Path, tuned_clipped, answer):
    """Schedule: clipped_relu − relu = (1.0, 0.8, 0.9) over seeds 0–2, 0.90 ± 4.303·0.1/√3 = ±0.25: resolved.
    Tuned relu (98.1, 98.6, 98.3): clipped_relu − relu = (0.1, −0.3, 0.2) contains 0 (partly: the ordering is
    lost), (−1.2, −1.1, −1.1) reverses it (yes), (0.9, 0.9, 1.0) keeps it (no)."""
    root = tmp_path / "runs"
    arms = {"table1": ({"relu": (97.0, 97.4, 97.2), "clipped_relu": (98.0, 98.2, 98.1)}, {}),
            "tuned": ({"relu": (98.1, 98.6, 98.3), "clipped_relu": tuned_clipped}, {"tag": "tuned"})}  # fmt: skip
    for arm, (accs, tag) in arms.items():
        for ste, values in accs.items():
            for seed, acc in enumerate(values):
                write_run(root / arm, f"{ste}-s{seed}", ste=ste, seed=seed, val_acc=acc, **tag)
    text = build_report(root).read_text()
    section = text.split("### Does tuning change the ranking of the STEs?", 1)[1]
    assert f"MNIST LeNet5 2-bit (seeds 0, 1, 2): {answer}" in section
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (
        f"- paper schedule: clipped_relu > relu: 3/3 seeds, +0.90 ± {half:.2f} pt (95 % CI, paired)"
        in section
    )


def test_tuning_runs_stay_out_of_table1(tune_root: Path):
    text = build_report(tune_root).read_text()
    relu = row(md_table(text, "Table 1a"), "LeNet5", "2")["vanilla ReLU ours"]
    assert relu == f"{statistics.mean([97.0, 97.4]):.2f} ± {statistics.stdev([97.0, 97.4]):.2f} (n=2)"
    assert "### Other runs" not in text and "Runs found: 9 (Table 1 4, tuning trials 3, tuned 2)" in text


def test_readme_block_gets_the_wxa_and_tuned_tables(wxa_root: Path, tune_root: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- results:wxa -->\n<!-- /results:wxa -->\n<!-- results:tune -->\n<!-- /results:tune -->\n"
    )
    assert (
        main([str(wxa_root), "--out", str(tmp_path / "w"), "--profile", "wxa", "--readme", str(readme)]) == 0
    )
    assert (
        main([str(tune_root), "--out", str(tmp_path / "t"), "--profile", "tune", "--readme", str(readme)])
        == 0
    )
    wxa, tune = readme.read_text().split("<!-- results:tune -->")
    assert (
        "Weights × activations, MNIST LeNet5, STE clipped_relu:" in wxa
        and "| 2-bit | 98.30 ± 0.14 (n=2) |" in wxa
    )
    assert "| MNIST | LeNet5 | 2 |" in wxa  # the float Table-1 runs of the fixture
    assert "Paper schedule vs tuned:" in tune and "| 0.0123 / 3e-05 |" in tune and "Weights ×" not in tune


# --- inside the STE ------------------------------------------------------------------------------------

LAYERS = ("features.3", "classifier.1")  # model order, which is not the alphabetical one
SATURATED = {"relu": 0.2, "clipped_relu": 0.4}  # + 0.01 seed + 0.1 layer index + 0.001 epoch
COSINE = {("relu", "clipped_relu"): 0.8, ("clipped_relu", "relu"): 0.6}  # + 0.1 seed


def diag_row(ste: str, seed: int, epoch: int) -> dict:
    """One metrics.csv row with the diagnostics; the descent probe runs at epochs 0 and 2 only."""
    row = {"epoch": epoch, "step": 10 * epoch, "val/acc": 90.0 + epoch}
    for i, layer in enumerate(LAYERS):
        row[f"diag/{layer}/below"] = 0.5 - 0.1 * i
        row[f"diag/{layer}/saturated"] = SATURATED[ste] + 0.01 * seed + 0.1 * i + 0.001 * epoch
        row[f"diag/{layer}/level0"] = 0.3
        row[f"diag/{layer}/level_entropy"] = 1.5 + 0.1 * seed
        row[f"diag/{layer}/grad_norm"] = 0.01
    for other in ("identity", "relu", "clipped_relu"):
        row[f"disagree/{other}"] = 1.0 if other == ste else COSINE.get((ste, other), 0.3) + 0.1 * seed
        row[f"disagree/{other}/{LAYERS[0]}"] = 0.5
    if epoch in (0, 2):
        for t, scale in (("0.01", 1.0), ("0.1", 10.0)):
            row[f"descent/coarse/{t}"] = -(0.02 + 0.01 * seed) * scale
            row[f"descent/random/{t}"] = 0.001 * scale
            row[f"descent/fp/{t}"] = -0.01 * scale
        row |= {"descent/smooth_cos": 0.7 + 0.1 * seed, "descent/smooth_cos_fp": 0.9, "descent/loss": 0.1}
        row |= {"descent/smooth_cos_noise": 0.004, "descent/smooth_slope": -0.02 - 0.01 * seed}
        row |= {
            "descent/smooth_slope_se": 0.004,
            "descent/smooth_slope_fp": 0.001,
            "descent/smooth_slope_fp_se": 0.01,
        }
    return row


@pytest.fixture
def diag_root(tmp_path: Path) -> Path:
    """Two seeds of relu and clipped_relu with diagnostics in table1/, and a Figure 2 run probed at its start."""
    root = tmp_path / "runs"
    for ste in SATURATED:
        for seed in (0, 1):
            run = write_run(root / "table1", f"{ste}-s{seed}", ste=ste, seed=seed, epochs=2, max_epochs=2)
            write_rows(run / "metrics.csv", [diag_row(ste, seed, e) for e in range(3)])
    run = write_run(root / "fig2", "f2", ste="identity", experiment="fig2_identity_repelled", tag="from_relu",
                    model="resnet20", data="cifar10", bits=4, epochs=2, max_epochs=2)  # fmt: skip
    probe = {"descent/coarse/0.01": -0.5, "descent/random/0.01": 0.1, "descent/fp/0.01": -0.3}
    later = {"descent/coarse/0.01": -0.9, "descent/random/0.01": 0.2, "descent/fp/0.01": -0.1}
    rows = [{"epoch": 0, "step": 0}, {"epoch": 1, "step": 5, **probe}, {"epoch": 2, "step": 10, **later}]
    write_rows(run / "metrics.csv", rows)  # the first probe (epoch 1) is the starting minimum's
    return root


def test_inside_the_ste_lists_layers_and_final_diagnostics(diag_root: Path):
    path = build_report(diag_root)
    text, out = path.read_text(), path.parent
    body = text.split("## Inside the STE", 1)[1]
    assert "### MNIST LeNet5, wfa2, stage table1" in body
    assert "Layers (model order): features.3, classifier.1." in body
    layers = {(r["STE"], r["layer"]): r for r in md_table(body, "Final epoch, mean over seeds")}
    assert (
        layers[("relu", "features.3")]["fraction saturated (above c)"] == "0.207"
    )  # 0.2 + mean(0, .01) + .002
    assert layers[("clipped_relu", "classifier.1")]["fraction saturated (above c)"] == "0.507"
    assert layers[("relu", "classifier.1")]["level entropy (bits)"] == "1.55"
    assert list(layers) == [(s, layer) for s in ("relu", "clipped_relu") for layer in LAYERS]
    agree = {r["STE"]: r for r in md_table(body, "Cosines at the final epoch")}
    assert agree["relu"]["vs clipped_relu"] == "0.85" and agree["relu"]["vs relu"] == "1"
    assert agree["clipped_relu"]["vs relu"] == "0.65" and "smooth_cos" not in agree["relu"]
    smooth = {r["STE"]: r for r in md_table(body, "The Gaussian-smoothed loss at the last probe")}
    # mean of −0.02 and −0.03 ± 1.96·√(2·0.004²)/2 = 0.0055: below 0, so it descends; the FP slope 0.001 ± 0.014 not
    assert smooth["relu"]["slope along −coarse (95 % CI)"] == "-0.025 ± 0.0055 (descends)"
    assert smooth["relu"]["slope along −FP ReLU (95 % CI)"] == "0.001 ± 0.014 (not resolved)"
    assert smooth["relu"]["cos(ĝ, coarse)"] == "0.75" and smooth["relu"]["noise 1/√d"] == "0.004"
    probe = {(r["run"], r["t"]): r for r in md_table(body, "Descent probe at the last probed epoch")}
    assert (
        probe[("relu", "0.01")]["Δ loss, coarse"] == "-0.025"
        and probe[("relu", "0.1")]["Δ loss, coarse"] == "-0.25"
    )
    assert probe[("clipped_relu", "0.1")]["Δ loss, random"] == "0.01"
    start = {
        (r["run"], r["t"]): r for r in md_table(body, "### Figure 2: the probe around the starting minimum")
    }
    assert (
        start[("from_relu", "0.01")]["Δ loss, coarse"] == "-0.5"
        and start[("from_relu", "0.01")]["Δ loss, fp"] == "-0.3"
    )
    for png in [  # one faceted figure per diagnostic (a row per group), not one file per group and metric
        f"{m}.png"
        for m in ("saturated", "level_entropy", "below", "grad_norm", "disagree", "descent", "probe")
    ] + ["probe_fig2.png"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in body, png


def test_descent_profile_reads_one_epoch_per_direction(diag_root: Path):
    from src.report.diagnostics import descent_profile, probe_epoch

    (run,) = [r for r in collect_runs(diag_root) if r["run_name"] == "relu-s1"]
    curve = read_curves(run)
    assert probe_epoch(curve) == 2
    profile = descent_profile(curve, 2)
    assert list(profile.index) == [0.01, 0.1] and sorted(profile) == ["coarse", "fp", "random"]
    assert profile.loc[0.1, "coarse"] == pytest.approx(-0.3) and profile.loc[0.01, "fp"] == pytest.approx(
        -0.01
    )
    assert descent_profile(curve, 1).empty


def test_stage_times_say_when_a_stage_was_only_found_done():
    """A stage whose every attempt was a skip shows 0 s: the row says its runs were trained outside the record."""
    fig2, fig4 = {"wall_time_s": 5400.0, "skipped": False}, {"wall_time_s": 0, "skipped": True}
    lines = wall_times([], {"stages": {"fig2": fig2, "fig4": fig4}})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[-1].splitlines()[2:]]
    assert rows == [["fig2", "1.50 h", "ran"], ["fig4", "0.0 s", "found done (trained outside this record)"]]
    assert lines[1] == "- Pipeline stages (total 1.50 h):"
