"""The README's "Use a trained network" example runs as printed on a real run's checkpoint and scores what the run
itself scored: the checkpoint, the net inside it and the normalisation it names are the ones training used."""

import json
import re
import subprocess
import sys

import pytest

from src.paths import REPO
from src.train import train
from tests.runs import fast_cfg


def readme_example() -> str:
    """The first python block under '## Use a trained network'."""
    section = (REPO / "README.md").read_text().split("## Use a trained network", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_the_inference_example_scores_what_the_run_scored(tmp_path):
    cfg = fast_cfg(tmp_path, "lenet5", "ste=clipped_relu", "quant.bits=2", "trainer.limit_val_batches=1.0")
    summary = train(cfg)
    assert summary["status"] == "finished"
    code = readme_example()
    ckpt = re.search(r'^ckpt = "([^"]+)"', code, re.M)
    assert ckpt and 'root="data"' in code, "the example names a checkpoint and the data root"
    code = code.replace(ckpt[1], str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    code = code.replace(
        'root="data"', f'root="{cfg.paths.data_dir}", verify_checksums=False'
    )  # the tests' files
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    top1 = float(re.search(r"test images: ([\d.]+) %", out.stdout)[1])
    val = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert val["val_examples"] <= 1000  # the example scores the first 1000: here the whole test split
    assert top1 == pytest.approx(val["val_acc"], abs=0.006)  # printed with two decimals
