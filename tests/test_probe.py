"""The descent probe (src/probe.py) on the two-layer model, where Lemmas 1–2 and eqs. (11), (26) give the truth,
and its bookkeeping (weights, BN statistics, modes, bits, .grad and the RNG restored) on a tiny conv net."""

import copy
import math
import statistics
from functools import partial

import pytest
import torch
from torch import nn

from src.data.gaussian import teacher_labels
from src.models import TwoLayer, build_model
from src.module import LOSSES
from src.probe import cosine, descent_probe, probe_params, smoothed_grad
from src.quant import QuantReLU
from src.theory import (
    angle,
    empirical_coarse_grad,
    expected_coarse_grad,
    make_teacher,
    population_grad,
    population_loss,
    vector_at_angle,
)

F64 = torch.float64
HALF_MSE = LOSSES["half_mse"]
M, N_DIM, SAMPLES = 10, 20, 20_000  # the figures' teacher size; 20k examples make ℓ close to f on the batch
SMALL_STEPS = (0.02, 0.05, 0.1)


@pytest.fixture(scope="module")
def setting():
    """Teacher (Prop. 1 holds), a generic point (θ = 1.2, ‖w‖ = 1.3, v random) and a large Gaussian batch."""
    v_star, w_star = make_teacher(M, N_DIM, seed=0)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(M, generator=gen, dtype=F64)
    w = vector_at_angle(w_star, 1.2, torch.randn(N_DIM, generator=gen, dtype=F64), 1.3)
    z = torch.randn(SAMPLES, M, N_DIM, generator=gen, dtype=F64)
    return v, w, v_star, w_star, (z, teacher_labels(z, v_star, w_star))


def two_layer(ste: str, v, w, train_v: bool = True) -> TwoLayer:
    """The paper's model y = vᵀσ(Zw) with σ = 1{x>0} (bits=1, α=1) at (v, w), float64; v frozen unless train_v."""
    model = TwoLayer(partial(QuantReLU, bits=1, alpha=1.0, ste=ste), (M, N_DIM)).double()
    with torch.no_grad():
        model.v.copy_(v)
        model.w.copy_(w)
    model.v.requires_grad_(train_v)
    return model


def is_generic(v, w, v_star, w_star) -> bool:
    """Away from the critical points: θ ∈ (0, π) and both parts of ∇f clearly non-zero (Lemma 2)."""
    gv, gw = population_grad(v, w, v_star, w_star)
    return 0.1 < angle(w, w_star) < math.pi - 0.1 and gv.norm() > 0.1 and gw.norm() > 0.1


@pytest.mark.slow  # 2000 and 600 forwards: 10–35 s
@pytest.mark.parametrize(("train_v", "pairs"), [(True, 1000), (False, 300)], ids=["v_and_w", "w_only"])
def test_smoothed_gradient_points_along_population_gradient(setting, train_v, pairs):
    v, w, v_star, w_star, batch = setting
    assert is_generic(v, w, v_star, w_star)
    probed, _ = probe_params(two_layer("clipped_relu", v, w, train_v), HALF_MSE, batch)
    assert probed.names == (["v", "w"] if train_v else ["w"])  # a frozen v is not probed
    g_hat, _ = smoothed_grad(probed, sigma=0.1, samples=pairs, gen=torch.Generator().manual_seed(0))
    gv, gw = population_grad(v, w, v_star, w_star)  # Lemma 2, eqs. (6)–(7)
    truth = torch.cat([gv, gw]) if train_v else gw
    assert cosine(g_hat, truth) > 0.9


def population_delta(v, w, v_star, w_star, direction, t, train_v) -> float:
    """f(x + t·d/‖d‖) − f(x) by Lemma 1, for a direction over (v, w), or over w alone when v is frozen."""
    d = direction / direction.norm()
    dv, dw = (d[:M], d[M:]) if train_v else (torch.zeros(M, dtype=F64), d)
    return population_loss(v + t * dv, w + t * dw, v_star, w_star) - population_loss(v, w, v_star, w_star)


@pytest.mark.parametrize("train_v", [True, False], ids=["v_and_w", "w_only"])
@pytest.mark.parametrize("ste", ["relu", "clipped_relu"])
def test_coarse_direction_descends_as_theory_predicts(setting, ste, train_v):
    v, w, v_star, w_star, batch = setting
    ev, ew = expected_coarse_grad(ste, v, w, v_star, w_star)  # eqs. (10), (11)/(26)
    gv, gw = population_grad(v, w, v_star, w_star)
    assert float(ew @ gw) > 0.01  # Lemmas 5, 7: ⟨E g, ∂f/∂w⟩ > 0 here, so −E g descends f
    out = descent_probe(two_layer(ste, v, w, train_v), HALF_MSE, batch, steps=SMALL_STEPS, smooth_samples=0)
    sampled = torch.cat(
        empirical_coarse_grad(ste, v, w, v_star, w_star, batch[0])
    )  # the same batch, theory's code
    direction = -(sampled if train_v else sampled[M:])
    for t in SMALL_STEPS:
        pop = population_delta(v, w, v_star, w_star, direction, t, train_v)
        assert pop < 0 and out[f"descent/coarse/{t:g}"] < 0
        # ℓ on the batch is piecewise constant in w: ~1e-3 of sampling noise at 20k examples
        assert out[f"descent/coarse/{t:g}"] == pytest.approx(pop, rel=0.15, abs=1.5e-3)


def test_random_direction_changes_loss_less_than_coarse(setting):
    v, w, v_star, w_star, batch = setting
    model = two_layer("clipped_relu", v, w)
    runs = [descent_probe(model, HALF_MSE, batch, steps=(0.05,), smooth_samples=0, seed=s) for s in range(8)]
    coarse = runs[0]["descent/coarse/0.05"]
    random = torch.tensor([r["descent/random/0.05"] for r in runs])
    assert coarse < 0
    assert all(r["descent/coarse/0.05"] == coarse for r in runs)  # the seed moves only the random direction
    assert len(set(random.tolist())) == len(runs)  # ... which it does move
    assert random.abs().max() < abs(coarse)
    assert abs(float(random.mean())) < 0.2 * abs(coarse)  # first order ⟨∇f, r⟩ averages out


def float_relu_grad(model: TwoLayer, batch) -> torch.Tensor:
    """∇ℓ of an independent copy whose activation is torch's ReLU: (∂ℓ/∂v, ∂ℓ/∂w) flattened."""
    fp = copy.deepcopy(model)
    fp.act = nn.ReLU()
    z, y = batch
    return torch.cat(torch.autograd.grad(HALF_MSE(fp(z), y), [fp.v, fp.w]))


def test_fp_direction_and_cosines_use_the_float_relu_and_coarse_gradients(setting):
    v, w, v_star, w_star, (z, y) = setting
    batch, steps, pairs = (z[:2000], y[:2000]), (0.05, 0.3), 6
    model = two_layer("relu", v, w)
    out = descent_probe(model, HALF_MSE, batch, steps=steps, smooth_sigma=0.1, smooth_samples=pairs, seed=3)
    g_fp = float_relu_grad(model, batch)
    g_coarse = torch.cat(empirical_coarse_grad("relu", v, w, v_star, w_star, batch[0]))
    with torch.no_grad():
        base = float(HALF_MSE(model(batch[0]), batch[1]))
    for t in steps:
        step = -t * g_fp / g_fp.norm()
        with torch.no_grad():
            moved = HALF_MSE(two_layer("relu", v + step[:M], w + step[M:])(batch[0]), batch[1])
        assert out[f"descent/fp/{t:g}"] == pytest.approx(float(moved) - base, abs=1e-12)
    gen = torch.Generator().manual_seed(3)
    torch.randn(M + N_DIM, generator=gen, dtype=F64)  # the random direction is drawn first, then the ε
    probed = probe_params(model, HALF_MSE, batch)[0]
    pairs_g = [smoothed_grad(probed, 0.1, 1, gen)[0] for _ in range(pairs)]  # each antithetic pair's ĝ_i
    g_hat = torch.stack(pairs_g).mean(0)
    assert out["descent/smooth_cos_fp"] == pytest.approx(cosine(g_hat, g_fp), abs=1e-9)
    assert out["descent/smooth_cos"] == pytest.approx(cosine(g_hat, g_coarse), abs=1e-9)
    assert out["descent/smooth_cos_noise"] == pytest.approx(1 / math.sqrt(M + N_DIM))
    for key, g in (("smooth_slope", g_coarse), ("smooth_slope_fp", g_fp)):
        per_pair = [-float(gi @ g / g.norm()) for gi in pairs_g]
        assert out[f"descent/{key}"] == pytest.approx(statistics.fmean(per_pair), rel=1e-9)
        se = statistics.stdev(per_pair) / math.sqrt(pairs)
        assert out[f"descent/{key}_se"] == pytest.approx(se, rel=1e-9)
    assert out["descent/loss"] == pytest.approx(base, rel=1e-12)


@pytest.fixture
def tiny_net():
    """A conv-BN-QuantReLU net with a learned α (PACT), in train mode except its head, with BN stats warmed up."""
    torch.manual_seed(0)
    act = partial(QuantReLU, bits=2, alpha="lloyd", ste="clipped_relu", alpha_mode="pact")
    model = build_model("tiny", act=act, in_shape=(1, 8, 8))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model(x)  # one train-mode forward: running stats ≠ their init, num_batches_tracked = 1
    model[-1].eval()  # mixed modes: each module's own flag must come back
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    return model, (x, y)


def test_probe_restores_weights_stats_modes_bits_and_rng(tiny_net):
    model, batch = tiny_net
    state = {k: t.clone() for k, t in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    grads = [p.grad for p in model.parameters()]
    rng = torch.get_rng_state()
    out = descent_probe(model, nn.functional.cross_entropy, batch, steps=(0.1, 1.0), smooth_samples=3)
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert [m.bits for m in model.modules() if isinstance(m, QuantReLU)] == [2]
    assert all(p.grad is g and bool((g == 7).all()) for p, g in zip(model.parameters(), grads, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(math.isfinite(v) for v in out.values())
    model(batch[0])  # the check has power: a train-mode forward would have moved the BN stats
    assert not torch.equal(model[1].running_mean, state["1.running_mean"])


def test_metric_names_and_determinism(tiny_net):
    model, batch = tiny_net
    loss = nn.functional.cross_entropy
    out = descent_probe(model, loss, batch, steps=(0.01, 0.1, 1.0), smooth_samples=2)
    lines = {f"descent/{d}/{t}" for d in ("coarse", "random", "fp") for t in ("0.01", "0.1", "1")}
    smooth = {
        "descent/smooth_cos",
        "descent/smooth_cos_fp",
        "descent/smooth_cos_noise",
        "descent/smooth_slope",
        "descent/smooth_slope_se",
        "descent/smooth_slope_fp",
        "descent/smooth_slope_fp_se",
    }
    assert set(out) == {"descent/loss"} | lines | smooth
    assert descent_probe(model, loss, batch, steps=(0.01, 0.1, 1.0), smooth_samples=2) == out
    assert set(descent_probe(model, loss, batch, steps=(0.1,), smooth_samples=0)) == {
        "descent/loss",
        "descent/coarse/0.1",
        "descent/random/0.1",
        "descent/fp/0.1",
    }
