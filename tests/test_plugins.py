"""An STE from outside the repository: a package the test writes (its module and its conf/ste YAML), named by
``plugins`` and found through Hydra's search path, trains a real short run; an entry point loads the same way."""

import sys
import textwrap

import pytest
import torch

import src.plugins
from src.config import ConfigError, validate
from src.quant import STES, get_ste
from src.runs import read_run
from src.train import train
from tests.runs import fast_cfg

PLUGIN = '''
import torch

from src.quant.ste import STE, STES


@STES.register
class HalfRelu(STE):
    """mu(x) = max(x, 0)/2, mu'(x) = 1{x>0}/2: a test STE from outside the repository."""

    name = "half_relu"

    def mu(self, x, alpha, levels):
        return x.clamp(min=0) / 2

    def dmu(self, x, alpha, levels):
        return (x > 0).to(x.dtype) / 2
'''
YAML = "_target_: src.quant.get_ste\nname: half_relu\n"
OUTSIDE = ["plugins=[outside_stes.stes]", "hydra.searchpath=[pkg://outside_stes.conf]", "ste=half_relu"]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """outside_stes/ (stes.py, conf/ste/half_relu.yaml) on sys.path; its STE and modules gone afterwards."""
    root = tmp_path / "site"
    (root / "outside_stes" / "conf" / "ste").mkdir(parents=True)
    (root / "outside_stes" / "__init__.py").write_text("")
    (root / "outside_stes" / "conf" / "__init__.py").write_text("")
    (root / "outside_stes" / "stes.py").write_text(textwrap.dedent(PLUGIN))
    (root / "outside_stes" / "conf" / "ste" / "half_relu.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(root))
    yield root
    STES.pop("half_relu", None)
    for name in [m for m in sys.modules if m.startswith("outside_stes")]:
        del sys.modules[name]
    src.plugins.installed.cache_clear()


def test_an_outside_ste_trains_a_real_run(tmp_path, package):
    cfg = fast_cfg(tmp_path, "tiny", *OUTSIDE, "quant.bits=2")
    summary = train(cfg)
    run = read_run(tmp_path / "run")
    assert (
        summary["status"] == "finished"
        and run["ste"] == "half_relu"
        and run.config["plugins"] == ["outside_stes.stes"]
    )
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    get_ste("half_relu").mu(x, torch.tensor(1.0), 3).sum().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5]  # its own μ′, from the module the run imported


def test_without_plugins_the_name_is_refused_in_one_line(tmp_path, package):
    cfg = fast_cfg(tmp_path, "tiny", *OUTSIDE[1:])
    with pytest.raises(ConfigError, match=r"^unknown ste 'half_relu'; valid names: annealed_soft_staircase"):
        validate(cfg)
    cfg = fast_cfg(tmp_path, "tiny", "plugins=[outside_stes.nope]", *OUTSIDE[1:])
    with pytest.raises(
        ConfigError, match=r"^plugins: cannot import 'outside_stes.nope' \(ModuleNotFoundError"
    ):
        validate(cfg)


def test_an_entry_point_registers_without_a_config_key(tmp_path, package):
    dist = package / "outside_stes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-stes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ste_lab.plugins]\nstes = outside_stes.stes\n")
    src.plugins.installed.cache_clear()
    validate(fast_cfg(tmp_path, "tiny", *OUTSIDE[1:]))
    assert STES["half_relu"].__module__ == "outside_stes.stes"
