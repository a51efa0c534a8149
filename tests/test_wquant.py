"""Quantized weights (src/quant/weights.py, conf/wquant) against hand-computed levels and scales, detach-form and
LSQ-reference oracles for the backward, and through the framework: first/last layers, checkpoints, init, a run."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from src.config import ConfigError, validate
from src.models import build_model
from src.module import STEModule
from src.naming import run_name
from src.quant import WQUANTS, WSTES, QuantReLU, lloyd_alpha, quantize_weights, weight_quantizer
from src.quant.weights import QuantConv2d, QuantLinear
from src.reproduce.jobs import find
from src.train import train
from tests.conftest import REPO
from tests.runs import fast_cfg, job_run, make_cfg
from tests.test_profiles import planned_jobs

# Two output channels of four weights (a Linear(4, 2) weight); no w/s lands on a rounding tie (x.5) below.
W = torch.tensor([[0.9, -0.3, 0.1, -0.5], [-2.0, 0.4, 1.1, 0.2]])


def q(name, w=W, **kw):
    return weight_quantizer(name, **kw)(w)


# ---- forward: levels and scales, by hand ------------------------------------------------------------------------


def test_binary_is_sign_times_mean_abs_per_channel():
    # channel 0: mean|w| = (0.9+0.3+0.1+0.5)/4 = 0.45; channel 1: (2+0.4+1.1+0.2)/4 = 0.925
    want = torch.tensor([[0.45, -0.45, 0.45, -0.45], [-0.925, 0.925, 0.925, 0.925]])
    torch.testing.assert_close(q("binary", bits=1), want)
    assert q("binary", torch.zeros(1, 3), bits=1).tolist() == [[0.0, 0.0, 0.0]]  # sign(0) = +1, scale 0


def test_ternary_threshold_and_scale_are_twn():
    # channel 0: Δ = 0.7·0.45 = 0.315 → |w| > Δ: 0.9, 0.5 → a = 0.7; channel 1: Δ = 0.6475 → 2.0, 1.1 → a = 1.55
    want = torch.tensor([[0.7, 0.0, 0.0, -0.7], [-1.55, 0.0, 1.55, 0.0]])
    torch.testing.assert_close(q("ternary", bits=2), want)


def test_uniform_max_scale():
    # 2 bits: Qp = 1, s = max|w| → channel 0 levels {0, ±0.9}: 0.9→1, −0.3→0, 0.1→0, −0.5→−1 (0.5/0.9 = 0.56)
    want2 = torch.tensor([[0.9, 0.0, 0.0, -0.9], [-2.0, 0.0, 2.0, 0.0]])
    torch.testing.assert_close(q("uniform", bits=2, scale="max"), want2)
    # 3 bits: Qp = 3, s = 0.3 / (2/3): channel 0 rounds 3, −1, 0.33→0, −1.67→−2; channel 1 −3, 0.6→1, 1.65→2, 0.3→0
    want3 = torch.tensor([[0.9, -0.3, 0.0, -0.6], [-2.0, 2 / 3, 4 / 3, 0.0]])
    torch.testing.assert_close(q("uniform", bits=3, scale="max"), want3)


def test_uniform_lloyd_scale_is_the_gaussian_mse_step():
    # s = RMS(w)·lloyd_alpha(bits − 1): channel 0 RMS = √((0.81+0.09+0.01+0.25)/4) = √0.29
    s = math.sqrt(0.29) * lloyd_alpha(2)  # 3 bits: Qp = 3, the activations' 2-bit Lloyd α ≈ 0.6508
    assert lloyd_alpha(1) == pytest.approx(1.224, abs=1e-3)  # 3 levels on N(0,1): Max's quantizer table
    want = torch.tensor([0.9, -0.3, 0.1, -0.5]).div(s).round().clamp(-3, 3) * s
    torch.testing.assert_close(q("uniform", bits=3, scale="lloyd")[0], want)
    big = torch.randn(1, 200_000, generator=torch.Generator().manual_seed(0))  # ~N(0, 1): MSE-optimal in s
    mse = lambda s: ((big - weight_quantizer("uniform", bits=2, scale="lsq")(big, s)) ** 2).mean()  # noqa: E731
    step = weight_quantizer("uniform", bits=2, scale="lloyd").fixed_step(big)
    assert mse(step) < min(mse(step * 0.95), mse(step * 1.05))


def test_uniform_lsq_uses_the_step_and_its_init():
    quant = weight_quantizer("uniform", bits=3, scale="lsq")
    step = torch.tensor([[0.25], [0.5]])
    # channel 0: w/s = 3.6, −1.2, 0.4, −2 → 3(clamped), −1, 0, −2; channel 1: −4, 0.8, 2.2, 0.4 → −3, 1, 2, 0
    want = torch.tensor([[0.75, -0.25, 0.0, -0.5], [-1.5, 0.5, 1.0, 0.0]])
    torch.testing.assert_close(quant(W, step), want)
    torch.testing.assert_close(quant.init_step(W), torch.tensor([[0.9], [1.85]]) / math.sqrt(3))


# ---- backward ------------------------------------------------------------------------------------------------


def detach_oracle(name, ste, w, **kw):
    """The STE gradient by autograd of μ(w) + (q(w) − μ(w)).detach(), μ = w or clamp(w, −c, c), c detached."""
    quant = weight_quantizer(name, ste=ste, **kw)
    qw, clip = quant.levels(w.detach(), None)
    mu = (
        w if ste == "identity" else torch.where(w.abs() <= clip, w, w.sign() * clip)
    )  # clamp, slope 1 at |w| = c
    return mu + (qw - mu).detach()


SETTINGS = [("binary", {"bits": 1}), ("ternary", {"bits": 2})] + [
    ("uniform", {"bits": b, "scale": s}) for b in (2, 4) for s in ("max", "lloyd")
]


@pytest.mark.parametrize("ste", sorted(WSTES))
@pytest.mark.parametrize("name,kw", SETTINGS, ids=[f"{n}-{k}" for n, k in SETTINGS])
def test_backward_matches_the_detach_oracle(name, kw, ste):
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad = torch.randn_like(w)
    a, b = w.clone().requires_grad_(), w.clone().requires_grad_()
    weight_quantizer(name, ste=ste, **kw)(a).backward(grad)
    detach_oracle(name, ste, b, **kw).backward(grad)
    torch.testing.assert_close(a.grad, b.grad)
    if (
        ste == "clipped" and name != "uniform"
    ):  # something is clipped (|w| above the largest level): a real test
        assert (a.grad == 0).any() and (a.grad != 0).any()


def grad_scale(x, g):
    return x * g + (x - x * g).detach()


def test_lsq_step_and_weight_gradients_match_the_reference():
    """LSQ's reference code (Esser et al. 2020, Fig. 1 pseudo-code) with a per-channel step."""
    qp, w = 3, torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.5
    step = torch.tensor([[0.1], [0.2], [0.15], [0.3]], dtype=torch.float64)
    grad = torch.randn_like(w)
    w1, s1 = w.clone().requires_grad_(), step.clone().requires_grad_()
    weight_quantizer("uniform", bits=3, scale="lsq", ste="clipped")(w1, s1).backward(grad)
    w2, s2 = w.clone().requires_grad_(), step.clone().requires_grad_()
    s = grad_scale(s2, 1 / math.sqrt(w.shape[1] * qp))
    u = (w2 / s).clamp(-qp, qp)
    ((u.round() - u).detach() + u).mul(s).backward(grad)
    torch.testing.assert_close(w1.grad, w2.grad)
    torch.testing.assert_close(s1.grad, s2.grad)
    assert (w1.grad == 0).any()  # some |w/s| > Qp: clipped


# ---- layers and models ---------------------------------------------------------------------------------------


def lenet(wquant=None):
    torch.manual_seed(0)
    return build_model("lenet5", act=lambda: QuantReLU(2), in_shape=(1, 28, 28), wquant=wquant)


def test_first_and_last_layers_stay_float_unless_configured():
    x = torch.randn(4, 1, 28, 28)
    model = lenet(weight_quantizer("binary", bits=1))
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert kinds == [nn.Conv2d, QuantConv2d, QuantLinear, QuantLinear, nn.Linear]
    first, last = model[0], model[-1]
    torch.testing.assert_close(first(x), F.conv2d(x, first.weight, None, 1, 2))  # float: the weight itself
    h = torch.randn(4, 84)
    torch.testing.assert_close(last(h), F.linear(h, last.weight, last.bias))
    conv = model[4]  # the second conv: binary levels ±mean|w| per channel
    assert all(len(row.abs().unique()) == 1 for row in conv.quantized_weight().flatten(1))
    everything = lenet(weight_quantizer("binary", bits=1, first_last="quantized"))
    kinds = [type(m) for m in everything.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert kinds == [QuantConv2d, QuantConv2d, QuantLinear, QuantLinear, QuantLinear]


def test_state_dict_keys_are_the_float_models():
    plain = set(lenet().state_dict())
    assert set(lenet(weight_quantizer("ternary", bits=2)).state_dict()) == plain
    lsq = set(lenet(weight_quantizer("uniform", bits=4, scale="lsq")).state_dict())
    assert lsq - plain == {"4.weight_step", "9.weight_step", "12.weight_step"} and plain <= lsq


@pytest.mark.parametrize(
    "kw", [{"name": "binary", "bits": 1}, {"name": "uniform", "bits": 2, "scale": "lsq"}]
)
def test_fp_state_dict_loads_and_quantized_round_trips(kw):
    x = torch.randn(8, 1, 28, 28)
    fp = lenet()
    fp.state_dict()["4.weight"].mul_(3)  # differ from the quantized model's own init
    model = lenet(weight_quantizer(**kw)).eval()
    missing, unexpected = model.load_state_dict(fp.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith("weight_step") for k in missing)
    torch.testing.assert_close(model[4].weight, fp[4].weight)
    if kw.get("scale") == "lsq":  # the step starts from the loaded weights, LSQ's init
        torch.testing.assert_close(model[4].weight_step, 2 * fp[4].weight.abs().mean((1, 2, 3), True))
        with torch.no_grad():
            model[4].weight_step.mul_(1.1)  # a trained step, not the init: the round trip must keep it
    again = lenet(weight_quantizer(**kw)).eval()
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again(x), model(x))
    assert not torch.allclose(model(x), fp.eval()(x))  # the quantized forward is not the float one


def test_no_layer_to_quantize_is_an_error():
    with pytest.raises(ValueError, match="no conv/linear layer to quantize"):
        quantize_weights(nn.Sequential(nn.Linear(2, 2)), weight_quantizer("binary", bits=1))


# ---- config and framework ----------------------------------------------------------------------------------


def test_registry_and_config_files_agree():
    files = {p.stem: OmegaConf.load(p) for p in (REPO / "conf" / "wquant").glob("*.yaml")}
    assert sorted(files) == sorted(WQUANTS)
    for name, cfg in files.items():
        assert cfg.name == name


def test_run_names_carry_the_weight_bits():
    assert (
        run_name("lenet5", "mnist", 2, "relu", 0) == "lenet5-mnist-relu-2bit-s0"
    )  # float weights: unchanged
    assert run_name("lenet5", "mnist", 2, "relu", 0, None, "fp", None) == "lenet5-mnist-relu-2bit-s0"
    assert run_name("lenet5", "mnist", 2, "relu", 0, None, "uniform", 2) == "lenet5-mnist-relu-w2a2-s0"
    assert run_name("lenet5", "mnist", 4, "relu", 1, "x", "binary", 1) == "lenet5-mnist-relu-w1a4-s1-x"
    assert run_name("lenet5", "mnist", 2, "relu", 0, None, "ternary", 2) == "lenet5-mnist-relu-wta2-s0"
    assert run_name("lenet5", "mnist", None, "relu", 0, None, "uniform", 4) == "lenet5-mnist-w4afp-s0"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["wquant=uniform", "wquant.bits=1"], "wquant.bits must be an integer in [2, 16] for uniform, got 1"),
        (["wquant=uniform", "wquant.scale=mse"], "wquant.scale must be one of ('max', 'lloyd', 'lsq'), got 'mse'"),
        (["wquant=binary", "wquant.bits=2"], "wquant=binary has 1-bit weights: wquant.bits must be 1, got 2"),
        (["wquant=ternary", "wquant.ste=tanh"], "unknown wquant.ste 'tanh'; valid names: clipped, identity"),
        (["wquant.name=quaternary"], "unknown wquant 'quaternary'; valid names: binary, fp, ternary, uniform"),
        (["wquant=binary", "wquant.first_last=half"], "wquant.first_last must be one of ('float', 'quantized')"),
        (["wquant=binary", "+wquant.foo=1"], "unknown key(s) wquant.foo; valid: name, bits, scale, ste, first_last"),
    ],
)  # fmt: skip
def test_bad_wquant_is_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(fast_cfg(tmp_path, "tiny", *overrides))
    assert str(err.value).startswith(message)


def test_tiny_binary_run_trains_and_reloads(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "wquant=binary", "wquant.first_last=quantized", "wquant.ste=clipped")
    assert cfg.run_name == "tiny-cifar10-clipped_relu-w1a2-s0"
    summary = train(cfg)
    assert (
        summary["status"] == "finished" and summary["weights"] == "1" and math.isfinite(summary["val_loss"])
    )
    module = STEModule.load_from_checkpoint(summary["checkpoint"]).eval()
    assert isinstance(module.model[0], QuantConv2d) and isinstance(module.model[-1], QuantLinear)
    levels = module.model[0].quantized_weight().flatten(1).abs()
    assert torch.equal(levels, levels[:, :1].expand_as(levels))  # binary after the round trip
    saved = OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml")
    assert (saved.wquant.name, saved.wquant.bits) == ("binary", 1)


def test_init_from_fp_checkpoint_into_lsq_weights(tmp_path):
    fp = fast_cfg(tmp_path, "tiny", "quant=fp", run="fp")
    ckpt = train(fp)["checkpoint"]
    quant = ["wquant=uniform", "wquant.scale=lsq", "wquant.first_last=quantized", "optimizer.lr=1e-12"]
    summary = train(fast_cfg(tmp_path, "tiny", f"init.checkpoint={ckpt}", *quant, run="w4"))
    fp_state = torch.load(ckpt, weights_only=True)["state_dict"]
    state = torch.load(summary["checkpoint"], weights_only=True)["state_dict"]
    torch.testing.assert_close(state["model.0.weight"], fp_state["model.0.weight"])  # lr ≈ 0: the FP weights
    init = 2 * fp_state["model.0.weight"].abs().mean((1, 2, 3), keepdim=True) / math.sqrt(7)
    torch.testing.assert_close(state["model.0.weight_step"], init)  # LSQ's init from the loaded weights


def test_wxa_profile_plans_every_weight_and_activation_pair(tmp_path, monkeypatch):
    jobs = planned_jobs("wxa", tmp_path, monkeypatch)
    assert {k: len(v) for k, v in jobs.items()} == {"pretrain": 1, "wxa": 8}
    cfgs = [make_cfg(tmp_path / "compose", job) for job in jobs["wxa"]]
    pairs = {(c.wquant.name, c.wquant.bits, c.quant.bits) for c in cfgs}
    weights = {("fp", None), ("uniform", 4), ("uniform", 2), ("binary", 1)}
    assert pairs == {(*w, a) for w in weights for a in (2, 4)}
    assert all(c.ste.name == "clipped_relu" and c.init.checkpoint and c.model.name == "lenet5" for c in cfgs)
    assert len({c.run_name for c in cfgs}) == 8 and "lenet5-mnist-clipped_relu-2bit-s0" in {
        c.run_name for c in cfgs
    }


def test_a_done_run_matches_only_its_own_weights(tmp_path):
    job = {"experiment": "lenet5_mnist", "seed": 0, "quant.bits": 2, "ste": "clipped_relu"}
    job_run(tmp_path / "w2", job | {"wquant": "uniform", "wquant.bits": 2})
    assert find(tmp_path, job | {"wquant": "uniform", "wquant.bits": 2}).path.name == "w2"
    assert find(tmp_path, job | {"wquant": "uniform", "wquant.bits": 4}) is None
    assert find(tmp_path, job) is None  # a job that names no weight quantizer means float weights
    job_run(tmp_path / "float", job)
    assert find(tmp_path, job).path.name == "float"
