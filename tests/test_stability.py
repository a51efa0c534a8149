"""Where Figures 2 and 4 start (src/report/stability.py): the plateau rule on the starting run's curve, the coarse-gradient
table read from the gradients stage's gradients.json, and both surviving a report regenerated from its runs.csv."""

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from src.report import build_report
from src.report.__main__ import main
from src.report.figures import ci_band
from tests.test_report import md_table, write_run

RESNET4 = {"model": "resnet20", "data": "cifar10", "bits": 4}
GRAD_HEADING = "Full-batch coarse gradients at the starting minimum"


def gradients_record(own: str, norms: dict[str, float], noise: dict[str, float]) -> dict:
    """A gradients.json as src.gradients writes it (only the keys the report reads, with their real shapes)."""
    return {
        "ste": own,
        "examples": 5000,
        "split": "train (first 5000), not augmented",
        "variants": list(norms),
        "norms": {k: {"total": v, "layers": {}} for k, v in norms.items()},
        "noise": noise,
        "ratio_to_own": {k: v / norms[own] for k, v in norms.items()},
    }


def figure2_root(root: Path) -> Path:
    """Two 4-bit minima whose last epochs differ by +1.0 pt (relu: inside the 95 % CI of ±1.00 pt on 10,000 images)
    and by +3.0 pt (clipped_relu: outside), Figure 2 runs from each; gradients.json beside clipped_relu's only."""
    last = {"relu": [(0.4, 84.0), (0.3, 85.0)], "clipped_relu": [(0.1, 88.0), (0.05, 91.0)]}
    for ste, curve in last.items():
        parent = write_run(root / "table1", ste, ste=ste, curve=curve, train_loss=curve[-1][0],
                           val_acc=curve[-1][1], **RESNET4)  # fmt: skip
        write_run(root / "fig2", f"f2-{ste}", curve=[(0.5, 80.0)], experiment="fig2_identity_repelled",
                  tag=f"from_{ste}", ste="identity", init_checkpoint=str(parent / "checkpoints" / "last.ckpt"),
                  train_loss=0.5, val_acc=80.0, epochs=1, max_epochs=1, **RESNET4)  # fmt: skip
    norms = {"clipped_relu": 0.002, "identity": 0.05, "relu": 0.004, "float_relu": 0.3}
    noise = {"clipped_relu": 0.001, "identity": 0.002, "relu": 0.001, "float_relu": 0.01}
    record = gradients_record("clipped_relu", norms, noise)
    (root / "table1" / "clipped_relu" / "gradients.json").write_text(json.dumps(record))
    return root


def starts(text: str) -> dict[str, str]:
    """The 'Starting minima' lines of Figure 2: tag -> the rest of the line."""
    block = text.split("## Figure 2", 1)[1].split("Starting minima:", 1)[1].split("\n\n")[1]
    return dict(line[2:].split(": ", 1) for line in block.splitlines())


def test_plateau_rule_and_gradient_table_at_the_figure_2_minima(tmp_path):
    root = figure2_root(tmp_path / "runs")
    text = build_report(root, tmp_path / "out").read_text()
    lines = starts(text)
    half = 196 * math.sqrt(0.84 * 0.16 / 1e4 + 0.85 * 0.15 / 1e4)  # the CI of the last change, in points
    assert f"plateaued (last change +1.00 ± {half:.2f} pt" in lines["from_relu"] and half > 1.0
    assert "still moving (last change +3.00 ±" in lines["from_clipped_relu"]
    assert "val top-1 88.00, 91.00 % over its last 2 epochs" in lines["from_clipped_relu"]  # not epoch 0
    (row,) = md_table(text, GRAD_HEADING)  # only clipped_relu's minimum has gradients.json
    assert row["start of"] == "from_clipped_relu" and row["minimum's STE"] == "clipped_relu"
    assert row["‖ḡ‖ identity"] == "0.05 (SE 0.002)" and row["‖ḡ‖ float ReLU"] == "0.3 (SE 0.01)"
    # ‖E g‖ ≈ √(‖ḡ‖² − ‖SE‖²): clipped_relu √(0.002² − 0.001²) = 0.00173, identity √(0.05² − 0.002²) = 0.04996
    # (28.8×), relu √(0.004² − 0.001²) = 0.00387 (2.24×)
    assert row["reading"] == "‖E g‖ ≈ clipped_relu 0.00173, identity 0.05 (28.8×), relu 0.00387 (2.24×)"
    (own,) = md_table(
        text, "## Coarse gradients at the minima"
    )  # every minimum with gradients.json, by its name
    assert own["run"] == "clipped_relu" and own["reading"] == row["reading"]


def test_a_report_regenerated_from_runs_csv_keeps_curves_verdicts_and_the_gradient_table(tmp_path):
    """The first report writes curves.csv beside runs.csv and copies gradients.json to <out>/gradients/<figure
    run>.json; a report of that runs.csv, the run dirs gone, reads them back: the same Figure 2 table (start,
    final, verdict), start lines (the plateau rule on the archived minima's curves), figure and gradient table. A
    runs.csv from before curves.csv (no init_checkpoint column either) says so and draws no figure."""
    root = figure2_root(tmp_path / "runs")
    first = build_report(root, tmp_path / "out").parent
    before = (first / "report.md").read_text()
    assert (first / "gradients" / "f2-clipped_relu.json").is_file()
    for path in sorted(root.rglob("*"), reverse=True):  # the run dirs are gone
        path.unlink() if path.is_file() else path.rmdir()
    text = build_report(first / "runs.csv", tmp_path / "again").read_text()
    assert md_table(text, "## Figure 2") == md_table(before, "## Figure 2")
    assert starts(text) == starts(before) and "plateaued (last change +1.00" in starts(text)["from_relu"]
    assert md_table(text, GRAD_HEADING) == md_table(before, GRAD_HEADING)
    assert md_table(text, "## Coarse gradients at the minima")[0]["run"] == "clipped_relu"
    assert (
        "Shaded: each point's 95 % binomial interval" in text
        and (tmp_path / "again" / "figure2.png").is_file()
    )
    assert "4 runs read from the archived" in text and "curves of 4 from the curves.csv beside it" in text

    (first / "curves.csv").unlink()
    old = first / "old" / "runs.csv"  # gradients/ stays beside the report it came from, as in 2026-12-04's
    old.parent.mkdir()
    pd.read_csv(first / "runs.csv").drop(columns=["init_checkpoint"]).to_csv(old, index=False)
    (old.parent / "gradients").symlink_to(first / "gradients")
    text = build_report(old, tmp_path / "older").read_text()
    assert starts(text)["from_relu"] == "the starting run is not kept (archived runs)"
    assert md_table(text, GRAD_HEADING)[0]["‖ḡ‖ identity"] == "0.05 (SE 0.002)"
    assert "*No curves:" in text and "Shaded" not in text  # no figure, so no band to describe
    assert "4 runs read from the archived" in text and "no curves" in text


def test_the_readme_block_states_each_claim_with_its_verdict_and_the_reading(tmp_path):
    """The results block names the paper's claim and time scale beside our verdict, and the gradient reading at the
    start; the report's Figure 2 section opens with the claim it tests."""
    root = figure2_root(tmp_path / "runs")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:p -->\n<!-- /results:p -->\n")
    assert main([str(root), "--out", str(tmp_path / "out"), "--profile", "p", "--readme", str(readme)]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    claim = "the paper's claim: at lr 1e-5 the identity STE is repelled from the good 4-bit minima"
    assert f"## Figure 2\n\nTested: {claim}" in text and "within ≈3,900 steps" in text
    lines = {line.split("), ", 1)[1].split(":", 1)[0]: line for line in readme.read_text().splitlines()
             if line.startswith("- Figure 2 (")}  # fmt: skip
    assert sorted(lines) == ["from_clipped_relu", "from_relu"]
    # the fixture's curves have no lr column: the verdict says so (the rule itself: tests/test_compare.py)
    assert claim in lines["from_relu"] and lines["from_relu"].endswith(
        "from_relu: no epoch at lr ≤ 1e-5: no verdict."
    )
    assert lines["from_clipped_relu"].endswith("At the start: ‖E g‖ ≈ clipped_relu 0.00173, identity 0.05 "
                                               "(28.8×), relu 0.00387 (2.24×).")  # fmt: skip


def test_ci_band_is_each_points_binomial_interval():
    """Figures 2 and 4 draw val/acc with its 95 % binomial band: 50 % on 10,000 images is ±0.98 pt, 90 % ±0.59."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [50.0, 90.0])
    ci_band(ax, 10_000)
    band = ax.collections[0].get_paths()[0].vertices  # the polygon's outline: lower then upper edge
    lows = {x: y for x, y in band if y < 50 or 60 < y < 90}
    highs = {x: y for x, y in band if 50 < y < 60 or y > 90}
    assert lows[0] == pytest.approx(49.02, abs=1e-3) and highs[0] == pytest.approx(50.98, abs=1e-3)
    assert lows[1] == pytest.approx(89.412, abs=1e-3) and highs[1] == pytest.approx(90.588, abs=1e-3)
    assert ax.collections[1].get_label() == "95 % CI (10,000 test images)"
    plt.close(fig)


def test_a_settled_start_is_named_with_the_run_it_continues_and_stays_out_of_table_1(tmp_path):
    """relu's 4-bit minimum moved +3.0 pt in its last epoch, so the settle stage trained it on (3 epochs at lr
    0.001, <root>/settle/) and Figure 2 started from there: the start line names both runs and judges the settled
    curve; Table 1 and the comparison keep one relu 4-bit run."""
    root = tmp_path / "runs"
    moving = write_run(root / "table1", "relu4", ste="relu", curve=[(0.4, 82.0), (0.3, 85.0)], val_acc=85.0,
                       **RESNET4)  # fmt: skip
    settled = write_run(root / "settle", "relu4-settled", ste="relu", tag="settled",
                        curve=[(0.3, 85.2), (0.29, 85.6), (0.29, 85.5)], val_acc=85.5, epochs=3, max_epochs=3,
                        init_checkpoint=str(moving / "checkpoints" / "last.ckpt"), config={"optimizer": {"lr": 0.001}},
                        **RESNET4)  # fmt: skip
    write_run(root / "fig2", "f2-relu", curve=[(0.5, 80.0)], experiment="fig2_identity_repelled", tag="from_relu",
              ste="identity", init_checkpoint=str(settled / "checkpoints" / "last.ckpt"), train_loss=0.5,
              val_acc=80.0, epochs=1, max_epochs=1, **RESNET4)  # fmt: skip
    text = build_report(root, tmp_path / "out").read_text()
    line = starts(text)["from_relu"]
    assert line.startswith(
        "from `relu4-settled` (`relu4` was still moving, so it was trained on for 3 epochs at lr 0.001), "
        "val top-1 85.20, 85.60, 85.50 % over its last 3 epochs: plateaued (last change -0.10"
    ), line
    section = lambda heading: text.split(heading, 1)[1].split("\n## ", 1)[0]  # noqa: E731
    assert "85.00" in section("## Table 1") and "85.50" not in section("## Table 1")
    assert "relu4-settled" not in section("## Comparison") and "85.50" not in section("## Comparison")
