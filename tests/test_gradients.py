"""Full-batch coarse gradients (src/gradients.py): against the two-layer model's closed forms (Lemma 9 and eqs. 11,
26 of Yin et al. 2019) at its spurious and global minimizers, and on a LeNet-5 run against direct autograd."""

import copy
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.evaluate import load_run
from src.gradients import FLOAT, PAPER_STES, full_batch_gradients, main
from src.module import LOSSES, build_from_config
from src.quant import QuantReLU
from src.theory import expected_coarse_grad, make_teacher, spurious_minimizer
from src.theory.coarse import sample_inputs
from src.train import train
from tests.runs import fast_cfg

M, N = 4, 5  # small m, n: the Monte Carlo error is small next to Lemma 9's ‖E g_id‖ ≈ 0.27 for this teacher
BATCHES, BATCH = 32, 4096  # 131,072 samples of Z; 32 batch means give each coordinate's standard error
Z_MAX = 5.0  # |ĝ − E g| ≤ 5 SE per coordinate: 9 coordinates, a false alarm has probability < 1e-4


def two_layer(tmp_path, v, w) -> nn.Module:
    """The framework's two-layer model (conf: model=two_layer, quant=binary: σ = 1{x>0}) at (v, w), float64."""
    cfg = fast_cfg(tmp_path, "two_layer", f"data.m={M}", f"data.n={N}")
    model, _, _ = build_from_config(OmegaConf.to_container(cfg, resolve=True), (M, N), None)
    model.double()  # before the copy: (v, w) exactly the minimizer, not its float32 rounding
    with torch.no_grad():
        model.v.copy_(v), model.w.copy_(w)
    return model


def teacher_batches(v_star, w_star, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """BATCHES batches of fresh Z (BATCH, m, n) and their labels y* = v*ᵀσ(Zw*)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(BATCHES):
        z = sample_inputs(BATCH, M, N, gen)
        out.append((z, (z @ w_star > 0).double() @ v_star))
    return out


@pytest.mark.parametrize("where", ["spurious", "global"])
def test_full_batch_coarse_gradient_matches_the_closed_forms_at_the_two_layer_minimizers(tmp_path, where):
    """ḡ of each paper STE (and ∂ℓ/∂v) within Monte Carlo error of E[g] (Lemmas 4, 7, 9; eqs. 10, 11, 14, 26).
    ‖w‖ = 1.3 ≠ 1: clipped ReLU's E[g] depends on it. Lemma 9: at the spurious minimizer (θ = π) identity's E[g_w]
    has the printed norm 2(m−1)(1ᵀv*)²/(√(2π)(m+1)²) ≠ 0 and ĝ_id is far from 0, while relu's and clipped ReLU's
    vanish (Lemmas 6, 8). At the global minimizer (θ = 0, v = v*) every E[g_w] vanishes, identity's too (eq. 14:
    ‖v*‖²(ŵ − w*) = 0): on the two-layer model the identity STE is unstable at the spurious minimizers only."""
    v_star, w_star = make_teacher(M, N, seed=0)
    w_star = w_star / w_star.norm()
    v, w = (spurious_minimizer(v_star), -1.3 * w_star) if where == "spurious" else (v_star, 1.3 * w_star)
    model, batches = two_layer(tmp_path, v, w), teacher_batches(v_star, w_star)
    loss = LOSSES[model.loss]
    grads, count, noise = full_batch_gradients(model, loss, batches)
    per_batch = [full_batch_gradients(model, loss, [b])[0] for b in batches]
    assert count == BATCHES * BATCH and list(grads) == ["clipped_relu", "identity", "relu", FLOAT]
    for ste in PAPER_STES:
        expected = dict(zip(("v", "w"), expected_coarse_grad(ste, v, w, v_star, w_star), strict=True))
        for key in ("v", "w"):
            spread = torch.stack([g[ste][key] for g in per_batch])  # (BATCHES, len)
            se = spread.std(dim=0) / math.sqrt(BATCHES)
            # + 1e-12: at the global minimizer every sample's residual is 0, so ĝ, E g and SE are 0 (to rounding)
            assert torch.all((grads[ste][key] - expected[key]).abs() <= Z_MAX * se + 1e-12), (ste, key)
        # ‖SE(ḡ)‖ over every coordinate: equal batches, so the batch means' sample std / √B, coordinate-wise
        spread = torch.cat([torch.stack([g[ste][k] for g in per_batch]) for k in ("v", "w")], dim=1)
        assert noise[ste] == pytest.approx(float(spread.std(dim=0).norm()) / math.sqrt(BATCHES), rel=1e-9)
        noise_w = float(torch.stack([g[ste]["w"] for g in per_batch]).std(dim=0).norm()) / math.sqrt(BATCHES)
        if ste == "identity" and where == "spurious":
            lemma9 = 2 * (M - 1) * float(v_star.sum()) ** 2 / (math.sqrt(2 * math.pi) * (M + 1) ** 2)
            assert float(expected["w"].norm()) == pytest.approx(lemma9, rel=1e-12)
            assert float(grads[ste]["w"].norm()) > 20 * noise_w  # non-zero, far outside the noise
        else:
            assert float(expected["w"].norm()) < 1e-12  # the closed form vanishes here
    assert torch.equal(model.w, w.to(model.w)) and {model.act.ste.name} == {"clipped_relu"}  # nothing changed


def trained_lenet(tmp_path):
    """A seconds-long LeNet-5 run (2-bit clipped ReLU, BN) on tiny MNIST: its run dir."""
    cfg = fast_cfg(tmp_path, "lenet5", "ste=clipped_relu", "quant.bits=2")
    assert train(cfg)["status"] == "finished"
    return tmp_path / "run"


def autograd_oracle(model: nn.Module, loss_fn, x, y) -> dict[str, torch.Tensor]:
    """The weights' gradient of the mean loss over (x, y) as one batch, in eval mode: plain autograd."""
    model.eval()
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    grads = torch.autograd.grad(loss_fn(model(x), y), list(weights.values()))
    return {n: g.double() for n, g in zip(weights, grads, strict=True)}


def float_copy(model: nn.Module) -> nn.Module:
    """A copy with every QuantReLU replaced by nn.ReLU: the float net, built independently of src.probe."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantReLU):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.ReLU())
    return model


@pytest.mark.slow
def test_the_command_on_a_lenet5_run_equals_direct_autograd(tmp_path):
    """``python -m src.gradients <run dir>``: the own STE's ḡ, the identity STE's (a model built with it) and the
    float ReLU's equal one autograd pass over the whole training set; total² = Σ layer²; files written."""
    run = trained_lenet(tmp_path)
    out = tmp_path / "grads"
    main([str(run), "--out", str(out), "--stes", "identity,relu", "data.batch_size=48"])
    record = json.loads((out / "gradients.json").read_text())
    assert record["variants"] == ["clipped_relu", "identity", "relu", FLOAT] and record["examples"] == 256
    assert (out / "gradients.md").read_text().startswith("# Full-batch coarse gradients")

    module, config = load_run(run)
    dm = build_data(config)
    x, y = (
        torch.cat(t) for t in zip(*dm.train_dataloader(), strict=True)
    )  # the whole training set, one batch
    grads, _, _ = full_batch_gradients(module.model, module.loss_fn, dm.train_dataloader(), ["identity"])
    ident = identity_copy(module, config)
    for label, model in (
        ("clipped_relu", module.model),
        ("identity", ident),
        (FLOAT, float_copy(module.model)),
    ):
        oracle = autograd_oracle(model, module.loss_fn, x, y)
        assert set(oracle) == set(grads[label]) == set(record["layers"])
        for name, g in oracle.items():
            torch.testing.assert_close(grads[label][name], g, rtol=1e-4, atol=1e-7)
            assert record["norms"][label]["layers"][name] == pytest.approx(float(g.norm()), rel=1e-4)
        layers = record["norms"][label]["layers"].values()
        assert record["norms"][label]["total"] == pytest.approx(
            math.sqrt(sum(n**2 for n in layers)), rel=1e-9
        )
    assert record["cosine"]["clipped_relu"]["clipped_relu"] == pytest.approx(1.0)
    assert record["ratio_to_own"]["identity"] == pytest.approx(
        record["norms"]["identity"]["total"] / record["norms"]["clipped_relu"]["total"]
    )


def build_data(config):
    from hydra.utils import instantiate

    dm = instantiate(config.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def identity_copy(module, config) -> nn.Module:
    """The run's model rebuilt from its config with the identity STE, holding the checkpoint's weights and α."""
    cfg = OmegaConf.to_container(config, resolve=True)
    cfg["quant"]["ste"]["name"] = "identity"
    model, _, _ = build_from_config(cfg, module.hparams.in_shape, module.hparams.num_classes)
    model.load_state_dict(module.model.state_dict())
    assert {m.ste.name for m in model.modules() if isinstance(m, QuantReLU)} == {"identity"}
    return model


def test_an_unknown_ste_or_a_float_run_is_a_one_line_error(tmp_path):
    run = trained_lenet(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: unknown ste\(s\) \['nope'\]; valid: "):
        main([str(run), "--stes", "identity,nope", "--out", str(tmp_path / "g")])
    fp = fast_cfg(tmp_path, "lenet5", "quant=fp", run="fp")
    train(fp)
    with pytest.raises(SystemExit, match=r"^error: the model has no quantized activation"):
        main([str(tmp_path / "fp"), "--out", str(tmp_path / "g")])
