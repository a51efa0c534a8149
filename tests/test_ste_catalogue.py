"""The STEs beyond the paper against their sources' own formulations (numpy, independent of src/quant), the
epoch schedules of the annealed STEs, and their rows of the two-layer certificate."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from src.quant import STES, QuantReLU, get_ste, quant_relu, set_epoch
from src.theory.certificate import descent_certificate
from src.theory.landscape import make_teacher
from tests.test_quant import grad_oracle, grads_through, staircase_oracle

NEW = ["dsq", "gaussian_smoothed", "reste", "approx_poly", "annealed_soft_staircase"]


def mu_of(name, x, alpha, levels, **kw):
    """μ(x) of a registry STE in float64 numpy."""
    a = torch.tensor(alpha, dtype=torch.float64)
    return get_ste(name, **kw).mu(torch.tensor(x), a, levels).numpy()


def test_registry_holds_the_twelve_stes_in_their_order():
    """The paper's three first, then the others in the order the report lists them (src/quant/ste.py)."""
    assert list(STES) == [
        "identity", "relu", "clipped_relu", "log_tailed_relu", "leaky_clipped_relu", "soft_staircase", "ewgs",
        *NEW,
    ]  # fmt: skip


# ---- dsq -----------------------------------------------------------------------------------------------------


def dsq_paper(x, lo, hi, levels, a_dsq):
    """Q_S(x) as DSQ writes it (Gong et al. 2019): x clipped to [l, u], Δ = (u − l)/L, i = ⌊(x − l)/Δ⌋,
    φ = s·tanh(k(x − m_i)), m_i = l + (i + ½)Δ, s = 1/tanh(kΔ/2), α_dsq = 1 − tanh(kΔ/2); Q_S = l + Δ(i + (φ+1)/2)."""
    delta = (hi - lo) / levels
    k = 2 * np.arctanh(1 - a_dsq) / delta
    s = 1 / np.tanh(k * delta / 2)
    x = np.clip(x, lo, hi)
    i = np.clip(np.floor((x - lo) / delta), 0, levels - 1)
    phi = s * np.tanh(k * (x - (lo + (i + 0.5) * delta)))
    return lo + delta * (i + (phi + 1) / 2)


@pytest.mark.parametrize("a_dsq", [0.05, 0.2, 0.6])
@pytest.mark.parametrize("bits,alpha", [(1, 1.0), (2, 0.6511), (4, 0.1946)])
def test_dsq_is_the_papers_soft_quantizer_shifted_by_half_a_step(a_dsq, bits, alpha):
    """DSQ's levels l + iΔ are the interval ends; on σ_α's thresholds jα they are (j ± ½)α: l = −α/2, u = (L−½)α.
    Q_S then runs from −α/2 to (L−½)α, σ_α's μ from 0 to Lα: the same curve shifted up by α/2."""
    levels = 2**bits - 1
    lo, hi = -alpha / 2, (levels - 0.5) * alpha
    x = np.random.default_rng(bits).uniform(lo - 1, hi + 1, 3000)
    np.testing.assert_allclose(
        mu_of("dsq", x, alpha, levels, alpha_dsq=a_dsq),
        dsq_paper(x, lo, hi, levels, a_dsq) + alpha / 2,
        rtol=1e-12,
        atol=1e-12,
    )
    h = 1e-6  # its derivative by central differences, away from the kinks at the clip points l and u
    x = x[(np.abs(x - lo) > 2 * h) & (np.abs(x - hi) > 2 * h)]
    fd = (dsq_paper(x + h, lo, hi, levels, a_dsq) - dsq_paper(x - h, lo, hi, levels, a_dsq)) / (2 * h)
    got = grads_through("dsq", x, np.ones_like(x), bits, alpha, alpha_dsq=a_dsq)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7)


def test_dsq_limits_are_the_staircase_and_slope_one():
    alpha, levels = 0.5, 3
    # α_dsq → 0 sharpens only like κ ≈ ln(2/α_dsq) ≈ 28: μ meets σ_α at |x/α − j| ≥ 0.3 (error ~ e^{−2κ·0.3} ≈ 1e-7)
    x = alpha * np.array([-0.7, -0.3, 0.3, 0.7, 1.3, 1.7, 2.3, 2.7, 3.3])
    sharp = mu_of("dsq", x, alpha, levels, alpha_dsq=1e-12)
    np.testing.assert_allclose(sharp, staircase_oracle(x, alpha, levels), atol=1e-6)
    x = np.linspace(-0.4, 1.4, 181) + 0.0013  # off the support's ends −α/2 and (L−½)α
    flat = grads_through("dsq", x, np.ones_like(x), 2, alpha, alpha_dsq=1 - 1e-9)
    np.testing.assert_allclose(flat, ((x >= -alpha / 2) & (x <= 2.5 * alpha)).astype(float), rtol=1e-6)


# ---- gaussian_smoothed ---------------------------------------------------------------------------------------


def smoothed_by_integration(x, alpha, levels, s):
    """E σ_α(x + s·ε), ε ~ N(0, 1), by Gauss–Legendre over ε ∈ [−12, 12] cut where x + sε crosses a threshold
    (the integrand jumps there): no closed form used."""
    nodes, weights = np.polynomial.legendre.leggauss(80)
    out = []
    for xi in x:
        jumps = ((np.arange(levels) * alpha - xi) / s).clip(-12, 12)
        edges = np.concatenate([[-12.0], np.sort(jumps), [12.0]])
        lo, hi = edges[:-1, None], edges[1:, None]
        eps = lo + (hi - lo) * (nodes + 1) / 2
        integrand = (
            staircase_oracle(xi + s * eps, alpha, levels) * np.exp(-eps * eps / 2) / math.sqrt(2 * math.pi)
        )
        out.append(((hi - lo) / 2 * weights * integrand).sum())
    return np.array(out)


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_gaussian_smoothed_is_the_derivative_of_the_noisy_staircase(sigma):
    bits, alpha, levels = 2, 0.6511, 3
    x = np.array([-0.9, -0.2, 0.0, 0.31, 0.6511, 1.0, 1.7, 2.4])
    h = 1e-4
    up, down = (smoothed_by_integration(x + d, alpha, levels, sigma * alpha) for d in (h, -h))
    np.testing.assert_allclose(  # the value: μ = E σ_α(x + σα·ε)
        mu_of("gaussian_smoothed", x, alpha, levels, sigma=sigma),
        smoothed_by_integration(x, alpha, levels, sigma * alpha),
        atol=1e-12,
    )
    np.testing.assert_allclose(  # the slope: μ′ by central differences of the integral, O(h²) ≈ 1e-8
        grads_through("gaussian_smoothed", x, np.ones_like(x), bits, alpha, sigma=sigma),
        (up - down) / (2 * h),
        atol=1e-7,
    )


def test_gaussian_smoothed_window_is_exact_at_many_bits():
    bits, alpha, levels, sigma = 16, 0.01, 2**16 - 1, 0.7
    x = np.array(
        [-0.3, 0.0, 0.5 * alpha, 123.4 * alpha, 40000.5 * alpha, (levels - 0.5) * alpha, levels * alpha + 1]
    )
    z = (x / alpha - np.arange(levels)[:, None]) / sigma
    full = (np.exp(-z * z / 2) / (sigma * math.sqrt(2 * math.pi))).sum(axis=0)
    got = grads_through("gaussian_smoothed", x, np.ones_like(x), bits, alpha, sigma=sigma)
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-300)


# ---- reste ---------------------------------------------------------------------------------------------------


def reste_sign_backward(x, o, interval=0.1, t=1.5):
    """Binary_ReSTE.backward of Wu et al.'s code for sign(x), transcribed: (1/o)|x|^{(1−o)/o} on interval < |x| ≤ t,
    approximate_function(interval, o)/interval = interval^{1/o}/interval on |x| ≤ interval, 0 beyond t."""
    ax = np.abs(x)
    power = np.where(ax > interval, np.maximum(ax, interval) ** ((1 - o) / o) / o, 0.0)
    return np.where(ax <= t, np.where(ax <= interval, interval ** (1 / o) / interval, power), 0.0)


@pytest.mark.parametrize("o", [1.0, 1.5, 3.0])
def test_reste_is_the_papers_estimator_on_each_level_interval(o):
    """One bit, α = 1: on (0, c] = (0, 1] our μ′ is ReSTE's for sign(x) on x ∈ (0, 1]; 0 elsewhere (our support).
    More bits: the same function of w = x/α − (k − 1) ∈ (0, 1] on each level interval ((k−1)α, kα]."""
    x = np.random.default_rng(0).uniform(-1, 2, 2000)
    expected = np.where((x > 0) & (x <= 1), reste_sign_backward(x, o), 0.0)
    np.testing.assert_allclose(grads_through("reste", x, np.ones_like(x), 1, 1.0, o=o), expected, rtol=1e-12)
    alpha, levels = 0.1946, 15
    x = np.random.default_rng(1).uniform(-0.5, levels * alpha + 0.5, 2000)
    w = x / alpha - np.ceil(x / alpha) + 1
    expected = np.where((x > 0) & (x <= levels * alpha), reste_sign_backward(w, o), 0.0)
    np.testing.assert_allclose(
        grads_through("reste", x, np.ones_like(x), 4, alpha, o=o), expected, rtol=1e-10
    )


def test_reste_with_o_one_is_clipped_relu_and_mu_is_continuous():
    x, g = np.linspace(-1, 3, 4001), np.ones(4001)
    np.testing.assert_array_equal(
        grads_through("reste", x, g, 2, 0.6511, o=1.0), grads_through("clipped_relu", x, g, 2, 0.6511)
    )
    alpha, levels = 0.6511, 3  # μ continuous at each jump kα, at the secant's end kα + tα, and at 0 and c
    knots = np.array([0.0, 0.1, 1.0, 1.1, 2.0, 2.1, 3.0]) * alpha
    left, right = (mu_of("reste", knots + d, alpha, levels) for d in (-1e-9, 1e-9))
    np.testing.assert_allclose(left, right, atol=1e-7)


def test_reste_schedule_follows_the_papers_cosine():
    ste = get_ste("reste", o=3.0, o_start=1.0)
    expected = [1.0, 1 + (1 - math.cos(math.pi / 8)) * 2, 1 + (1 - math.sqrt(0.5)) * 2, 3.0, 3.0]
    for epoch, o in zip([0, 1, 2, 4, 9], expected, strict=True):  # 5 epochs: r = epoch/4, 1 from the last on
        ste.set_epoch(epoch, 5)
        assert ste.exponent == pytest.approx(o, rel=1e-12)
    fixed = get_ste("reste", o=2.0)
    fixed.set_epoch(0, 5)
    assert fixed.exponent == 2.0  # o_start None: o does not move


# ---- approx_poly ---------------------------------------------------------------------------------------------


def approx_sign(x):
    """Bi-Real Net's ApproxSign (Liu et al. 2018): −1 below −1, 2x + x² on [−1, 0), 2x − x² on [0, 1), 1 above."""
    return np.select([x < -1, x < 0, x < 1], [-1.0, 2 * x + x * x, 2 * x - x * x], 1.0)


def test_approx_poly_is_approx_sign_on_each_step():
    """One step of height α around the threshold jα is α(j + ½ + ½·ApproxSign(2(x/α − j)))."""
    x = np.linspace(-2.5, 2.5, 1001)
    np.testing.assert_allclose(
        mu_of("approx_poly", x, 2.0, 1), 1 + approx_sign(x), atol=1e-15
    )  # α = 2, c = 2
    alpha, levels = 0.3, 7
    x = np.random.default_rng(2).uniform(-1, 3, 3000)
    j = np.clip(np.round(x / alpha), 0, levels - 1)
    np.testing.assert_allclose(
        mu_of("approx_poly", x, alpha, levels),
        alpha * (j + 0.5 + 0.5 * approx_sign(2 * (x / alpha - j))),
        atol=1e-14,
    )


@pytest.mark.parametrize("name", ["dsq", "gaussian_smoothed", "approx_poly"])
def test_per_step_surrogates_climb_the_whole_staircase(name):
    """∫ μ′ = μ(∞) − μ(−∞) = c: each of the L steps contributes its height α (trapezoid over a fine grid)."""
    bits, alpha = 3, 0.3
    x = np.linspace(-8, 10, 1_800_001)
    slope = grads_through(name, x, np.ones_like(x), bits, alpha)
    assert np.trapezoid(slope, x) == pytest.approx(7 * alpha, rel=1e-6)


# ---- annealing: set_epoch ------------------------------------------------------------------------------------


def test_annealed_soft_staircase_schedule_values():
    ste = get_ste("annealed_soft_staircase", beta_start=1.0, beta_end=16.0)
    assert ste.beta == 1.0  # before any set_epoch: β_start
    for epoch, beta in enumerate([1.0, 2.0, 4.0, 8.0, 16.0]):  # 5 epochs: t = 0, ¼, ½, ¾, 1
        ste.set_epoch(epoch, 5)
        assert ste.beta == pytest.approx(beta, rel=1e-12)
    ste.set_epoch(7, 5)  # past the last epoch (a longer run): stays at β_end
    assert ste.beta == pytest.approx(16.0)
    ste.set_epoch(0, 1)  # one epoch: t = 0
    assert ste.beta == 1.0


def test_set_epoch_walks_the_model_and_changes_the_backward():
    annealed = QuantReLU(2, 0.6511, "annealed_soft_staircase", beta_start=1.0, beta_end=16.0)
    model = nn.Sequential(QuantReLU(None), QuantReLU(2, 0.6511, "clipped_relu"), nn.Sequential(annealed))
    x, g = np.random.default_rng(4).uniform(-1, 3, 500), np.random.default_rng(5).normal(size=500)

    def backward():
        xt = torch.tensor(x, requires_grad=True)
        annealed(xt).backward(torch.tensor(g))
        return xt.grad.numpy()

    before = backward()
    set_epoch(model, 2, 5)  # t = ½: β = 4
    after = backward()
    alpha = float(annealed.alpha)  # 0.6511 as the float32 buffer holds it
    np.testing.assert_allclose(
        before, grad_oracle("soft_staircase", x, g, alpha, 3, beta=1.0), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        after, grad_oracle("soft_staircase", x, g, alpha, 3, beta=4.0), rtol=1e-12, atol=1e-12
    )
    assert np.abs(after - before).max() > 0.1


def test_set_epoch_moves_reste_inside_a_model():
    act = QuantReLU(2, 0.6511, "reste", o=3.0, o_start=1.0)
    x, g = np.random.default_rng(6).uniform(-1, 3, 500), np.ones(500)
    xt = torch.tensor(x, requires_grad=True)
    set_epoch(act, 4, 5)  # last epoch: o = 3
    act(xt).backward(torch.tensor(g))
    expected = grad_oracle("reste", x, g, float(act.alpha), 3, o=3.0)  # α as the float32 buffer holds it
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_compiled_model_follows_set_epoch():
    """torch.compile bakes the backward's constants into its graph: it must recompile when set_epoch moves β."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), QuantReLU(2, "lloyd", "annealed_soft_staircase"), nn.Linear(8, 1))
    compiled, x = torch.compile(net, fullgraph=True), torch.randn(64, 4)

    def grad(model):
        net.zero_grad()
        model(x).square().sum().backward()
        return net[0].weight.grad.clone()

    grads = []
    for epoch in (0, 3):
        set_epoch(net, epoch, 4)
        grads.append(grad(net))
        torch.testing.assert_close(grad(compiled), grads[-1], rtol=1e-5, atol=1e-6)
    assert (grads[1] - grads[0]).abs().max() > 1e-3  # β moved from 1 to 16: a different backward


@pytest.mark.parametrize(
    "epoch,max_epochs,match",
    [(-1, 10, "epoch must be an integer >= 0, got -1"), (0, 0, "max_epochs must be an integer >= 1, got 0"),
     (1.5, 10, "epoch must be an integer"), (0, -1, "max_epochs must be an integer >= 1")],
)  # fmt: skip
def test_set_epoch_rejects_bad_epochs(epoch, max_epochs, match):
    with pytest.raises(ValueError, match=match):
        set_epoch(nn.Sequential(QuantReLU(2, 1.0, "relu")), epoch, max_epochs)


# ---- bad hyper-parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("dsq", {"alpha_dsq": 0.0}, r"dsq: alpha_dsq must lie in \(0, 1\), got 0.0"),
        ("dsq", {"alpha_dsq": 1.0}, r"alpha_dsq must lie in \(0, 1\)"),
        ("gaussian_smoothed", {"sigma": 0.0}, "gaussian_smoothed: sigma must be > 0, got 0.0"),
        ("reste", {"o": 0.5}, "reste: o must be >= 1, got 0.5"),
        ("reste", {"interval": 0.0}, r"reste: interval must lie in \(0, 1\], got 0.0"),
        ("reste", {"o_start": 0.9}, "reste: o_start must be a number >= 1 or null, got 0.9"),
        ("reste", {"o_start": "one"}, "reste: o_start must be a number >= 1 or null, got 'one'"),
        ("annealed_soft_staircase", {"beta_end": -1.0}, "beta_end must be > 0, got -1.0"),
        ("annealed_soft_staircase", {"beta_start": 0}, "beta_start must be > 0, got 0"),
        ("approx_poly", {"beta": 2.0}, "ste approx_poly: .*unexpected keyword argument 'beta'"),
    ],
)
def test_bad_hyper_parameters_raise_a_clear_value_error(name, kw, match):
    with pytest.raises(ValueError, match=match):
        get_ste(name, **kw)


# ---- the two-layer certificate -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_certificate_row_is_finite_and_certifies_descent(name):
    """Every μ′ here is ≥ 0, so −E g is a descent direction wherever ∇f ≠ 0 (certificate.py): fraction 1."""
    v_star, w_star = make_teacher(10, 20, 0)
    row = descent_certificate(name, v_star, w_star, n_points=16)
    numbers = [row[k] for k in ("spurious_grad", "descent_fraction", "min_cos", "ratio@0.1", "ratio@0.01")]
    assert all(math.isfinite(v) for v in numbers) and row["method"] == "exact"
    assert row["descent_fraction"] == 1.0 and row["min_cos"] > 0
    assert row["vanishes"] == (name == "reste")  # only reste has μ′ = 0 on x ≤ 0 (Lemmas 6, 8 of Yin et al.)


def test_quant_relu_accepts_every_new_ste_by_name():
    x = torch.linspace(-1, 3, 9, requires_grad=True)
    for name in NEW:
        quant_relu(x, 2, 0.6511, name).sum().backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None
