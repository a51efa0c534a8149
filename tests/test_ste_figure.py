"""The picture of the STEs (python -m src.theory stes): each panel's curves are the registry's own forward and
backward, checked against the independent oracles of tests/test_quant.py."""

import numpy as np
import pytest
from PIL import Image

from src.quant import STES, get_ste
from src.theory.__main__ import main
from src.theory.ste_figure import ALPHA, BITS, ste_curves
from tests.test_quant import grad_oracle, staircase_oracle

LEVELS = 2**BITS - 1


@pytest.mark.parametrize("name", list(STES))
def test_each_panel_draws_the_stes_own_backward(name):
    curves = ste_curves(name)
    x = curves["x"].numpy()
    np.testing.assert_array_equal(curves["staircase"].numpy(), staircase_oracle(x, ALPHA, LEVELS))
    expected = grad_oracle(name, x, np.ones_like(x), ALPHA, LEVELS)
    np.testing.assert_allclose(curves["dmu"].numpy(), expected, rtol=1e-6, atol=1e-9)
    if name == "ewgs":  # μ′ depends on the upstream gradient: no surrogate μ to draw
        assert curves["mu"] is None
    else:
        mu = get_ste(name).mu(curves["x"], curves["x"].new_tensor(ALPHA), LEVELS)
        np.testing.assert_array_equal(curves["mu"].numpy(), mu.numpy())


def test_the_command_writes_one_png_with_a_panel_per_ste(tmp_path, capsys):
    assert main(["stes", "--out", str(tmp_path / "fig")]) == 0
    path = tmp_path / "fig" / "stes.png"
    assert capsys.readouterr().out.strip() == str(path)
    width, height = Image.open(path).size
    assert (width, height) == (1152, 702)  # 4 × 3 panels of 3.2 × 2.6 in at 90 dpi
