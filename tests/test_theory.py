"""The two-linear-layer theory (src.theory) against independent oracles: Monte Carlo through quant_relu, finite
differences of Lemma 1, the paper's equations (11), (14), (26) written literally here (p, q, ξ by numerical
integration of their definitions), the quadrature path, and the identities of Yin et al. 2019, App. D.

Monte Carlo tolerances: 6 standard errors, each SE estimated from the spread of 16 independent batch means
(P(|t₁₅| > 6) ≈ 2e-5 per comparison); each MC test also asserts its SE is small enough to catch a wrong formula.
"""

import math

import numpy as np
import pytest
import torch

from src.quant import STES, get_ste
from src.theory import (
    angle,
    coarse_gradient_descent,
    empirical_loss,
    expected_coarse_grad,
    make_teacher,
    p_q,
    population_grad,
    population_loss,
    saddle_point,
    sample_inputs,
    sampled_coarse_grad,
    spurious_minimizer,
    stationary_v,
    theorem2_condition,
    theorem2_start,
    vector_at_angle,
    xi,
)
from src.theory.__main__ import main
from src.theory.moments import CLOSED_FORMS
from src.theory.quadrature import quadrature_moments

F64 = torch.float64
SQRT_2PI = math.sqrt(2 * math.pi)
BATCHES, Z_SIGMA = 16, 6.0
X_ONLY = [name for name, cls in STES.items() if cls.x_only]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one torch thread. On a shared 2-core CPU, torch's idle-spinning worker threads made the
    Monte Carlo tests up to 20x slower; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed):
    """A seeded torch generator."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small():
    """m = 3, n = 4: a teacher meeting Prop. 1 with ‖w*‖ = 2.5, and a point with ‖w‖ = 1.7, θ = 2.1."""
    v_star = torch.tensor([1.0, -0.7, 0.4], dtype=F64)
    w_star = 2.5 * torch.nn.functional.normalize(torch.randn(4, generator=gen(0), dtype=F64), dim=0)
    v = torch.tensor([0.3, 0.9, -1.1], dtype=F64)
    w = vector_at_angle(w_star, 2.1, torch.randn(4, generator=gen(1), dtype=F64), 1.7)
    return v, w, v_star, w_star


@pytest.fixture(scope="module")
def big():
    """The figures' teacher: m = 10, n = 20 (Prop. 1 holds, 1ᵀv* ≈ −2.73)."""
    return make_teacher(10, 20, seed=0)


def mean_se(draws):
    """Mean and standard error over independent batch results (stacked along dim 0)."""
    x = torch.stack([torch.as_tensor(d, dtype=F64) for d in draws])
    return x.mean(0), x.std(0) / math.sqrt(len(x))


def assert_within_se(exact, mean, se, max_se):
    """|exact − MC mean| ≤ Z_SIGMA·SE componentwise, and SE ≤ max_se so the check has power."""
    assert float(se.max()) <= max_se, f"MC too noisy: SE {float(se.max()):.2e}"
    z = (torch.as_tensor(exact, dtype=F64) - mean).abs() / se
    assert float(z.max()) <= Z_SIGMA, f"off by {float(z.max()):.1f} SE: exact {exact}, MC {mean}"


def sampled(ste, v, w, v_star, w_star, n, seed=0, **kw):
    """MC mean and SE of (dv, dw) concatenated, over BATCHES batches of n // BATCHES samples."""
    g = gen(seed)
    draws = [
        torch.cat(sampled_coarse_grad(ste, v, w, v_star, w_star, n // BATCHES, g, **kw))
        for _ in range(BATCHES)
    ]
    return mean_se(draws)


# ---- Lemmas 1–2 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w_scale", [1.0, 0.0])  # w = 0_n: Lemma 1's second case
def test_lemma1_matches_monte_carlo(small, w_scale):
    v, w, v_star, w_star = small
    g = gen(2)
    draws = [
        empirical_loss(v, w_scale * w, v_star, w_star, sample_inputs(2**14, 3, 4, g)) for _ in range(BATCHES)
    ]
    mean, se = mean_se(draws)
    assert_within_se(population_loss(v, w_scale * w, v_star, w_star), mean, se, max_se=0.01)


def test_lemma2_matches_finite_differences_of_lemma1(small):
    v, w, v_star, w_star = small
    grad = torch.cat(population_grad(v, w, v_star, w_star))
    x, h = torch.cat([v, w]), 1e-6

    def f(x):
        return population_loss(x[:3], x[3:], v_star, w_star)

    for i, e in enumerate(torch.eye(len(x), dtype=F64) * h):  # central differences, O(h²) + roundoff/h
        assert (f(x + e) - f(x - e)) / (2 * h) == pytest.approx(float(grad[i]), abs=1e-8)


def test_lemma2_dv_matches_monte_carlo(small):  # Lemma 4, eq. (10): E[∂ℓ/∂v] = ∂f/∂v
    v, w, v_star, w_star = small
    mean, se = sampled("relu", v, w, v_star, w_star, 2**18)
    assert_within_se(population_grad(v, w, v_star, w_star)[0], mean[:3], se[:3], max_se=0.01)


def test_loss_and_gradient_are_invariant_to_the_scale_of_w_star(small):
    v, w, v_star, w_star = small
    assert population_loss(v, w, v_star, 0.1 * w_star) == pytest.approx(
        population_loss(v, w, v_star, w_star), 1e-14
    )
    for name in CLOSED_FORMS:
        for a, b in zip(
            expected_coarse_grad(name, v, w, v_star, 7 * w_star),
            expected_coarse_grad(name, v, w, v_star, w_star),
            strict=True,
        ):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


# ---- expected coarse gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [0.9, 2.1, math.pi])  # π: the spurious minimizers' angle, u undefined
@pytest.mark.parametrize("name", X_ONLY)
def test_expected_coarse_grad_matches_monte_carlo(small, name, theta):
    v, _, v_star, w_star = small
    w = vector_at_angle(w_star, theta, torch.ones(4, dtype=F64), 1.7)
    mean, se = sampled(name, v, w, v_star, w_star, 2**18, seed=3)
    assert_within_se(torch.cat(expected_coarse_grad(name, v, w, v_star, w_star)), mean, se, max_se=0.01)


def test_ewgs_has_no_exact_path_but_samples(small):
    v, w, v_star, w_star = small
    with pytest.raises(ValueError, match="x_only=False"):
        expected_coarse_grad("ewgs", v, w, v_star, w_star)
    mean, se = sampled("ewgs", v, w, v_star, w_star, 2**17, delta=0.0)  # δ = 0: EWGS is the clipped ReLU
    assert_within_se(
        torch.cat(expected_coarse_grad("clipped_relu", v, w, v_star, w_star)), mean, se, max_se=0.01
    )


def xi_numeric(x):
    """ξ(x) = ∫_0^x r² e^{−r²/2} dr by Gauss–Legendre (x up to ∞, cut at 40)."""
    nodes, weights = np.polynomial.legendre.leggauss(100)
    top = np.minimum(x, 40.0)[..., None]
    r = top * (nodes + 1) / 2
    return (top / 2 * weights * r * r * np.exp(-r * r / 2)).sum(-1)


def p_q_paper(theta, w_norm):
    """p(θ,w), q(θ,w) by their defining φ-integrals (Lemma 7), numerically."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    lo, hi = -math.pi / 2 + theta, math.pi / 2
    phi = lo + (hi - lo) * (nodes + 1) / 2
    vals = xi_numeric(1 / (np.cos(phi) * w_norm)) * (hi - lo) / 2 * weights / (2 * math.pi)
    return float((np.cos(phi) * vals).sum()), float((np.sin(phi) * vals).sum())


def paper_equation(name, v, w, v_star, w_star):
    """E[g_μ] for the paper's three STEs exactly as eqs. (14), (11), (26) print them (θ ∈ (0, π))."""
    w_hat, ws = w / w.norm(), w_star / w_star.norm()
    theta, vs, vv, one_v = angle(w, w_star), float(v @ v_star), float(v @ v), float(v.sum())
    h = vv + one_v**2 - one_v * float(v_star.sum()) + vs
    bisector = (w_hat + ws) / (w_hat + ws).norm()
    if name == "identity":  # eq. (14)
        return (vv * w_hat - vs * ws) / SQRT_2PI
    if name == "relu":  # eq. (11)
        return h / (2 * SQRT_2PI) * w_hat - math.cos(theta / 2) * vs / SQRT_2PI * bisector
    p0, _ = p_q_paper(0.0, float(w.norm()))
    p, q = p_q_paper(theta, float(w.norm()))
    cot, csc = 1 / math.tan(theta / 2), 1 / math.sin(theta / 2)
    return p0 * h / 2 * w_hat - vs * csc * q * bisector - vs * (p - cot * q) * w_hat  # eq. (26)


@pytest.mark.parametrize("theta", [0.3, 1.5, 2.8])
@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_expected_coarse_grad_is_the_papers_equation(small, name, theta):
    v, _, v_star, w_star = small
    w = vector_at_angle(w_star, theta, torch.ones(4, dtype=F64), 1.7)
    exact = expected_coarse_grad(name, v, w, v_star, w_star)[1]
    torch.testing.assert_close(exact, paper_equation(name, v, w, v_star, w_star), rtol=0, atol=1e-10)


def test_xi_closed_form_matches_its_integral():
    for x in (0.0, 0.3, 1.0, 2.5, 9.0, math.inf):
        assert xi(x) == pytest.approx(float(xi_numeric(np.array(x))), abs=1e-13)
    assert xi(math.inf) == pytest.approx(math.sqrt(math.pi / 2))


@pytest.mark.parametrize("w_norm", [0.2, 1.0, 1.7, 8.0])
@pytest.mark.parametrize("theta", [0.0, 1e-7, 0.4, math.pi / 2, 2.5, math.pi - 1e-7, math.pi])
def test_p_q_closed_forms_match_their_integrals(theta, w_norm):
    assert p_q(theta, w_norm) == pytest.approx(p_q_paper(theta, w_norm), abs=1e-11)


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_quadrature_reproduces_the_closed_forms(small, name):
    v, _, v_star, w_star = small
    for w_norm in (0.1, 1.0, 2.3, 20.0):
        for theta in (0.0, 1e-6, 0.7, math.pi / 2, 2.6, math.pi - 1e-6, math.pi):
            quad = quadrature_moments(get_ste(name), w_norm, theta)
            assert quad == pytest.approx(CLOSED_FORMS[name](w_norm, theta), abs=1e-11)
    w = vector_at_angle(w_star, 2.0, torch.ones(4, dtype=F64), 0.8)
    closed, quad = (
        expected_coarse_grad(name, v, w, v_star, w_star, method=m)[1] for m in ("closed", "quadrature")
    )
    torch.testing.assert_close(quad, closed, rtol=0, atol=1e-11)


@pytest.mark.parametrize("theta", [0.6, math.pi])
def test_quadrature_of_leaky_clipped_relu_is_the_mix_of_closed_forms(small, theta):
    # μ′ = (1 − ε)·1{0<x≤1} + ε, and E g is linear in μ′: the quadrature path must reproduce the mix
    v, _, v_star, w_star = small
    w = vector_at_angle(w_star, theta, torch.ones(4, dtype=F64), 1.3)
    leaky = expected_coarse_grad("leaky_clipped_relu", v, w, v_star, w_star, eps=0.3)[1]
    mix = [expected_coarse_grad(s, v, w, v_star, w_star)[1] for s in ("clipped_relu", "identity")]
    torch.testing.assert_close(leaky, 0.7 * mix[0] + 0.3 * mix[1], rtol=0, atol=1e-11)


# ---- Lemmas 5, 7, 10; critical points (Prop. 1, Lemmas 6, 8, 9) -----------------------------------------------


@pytest.mark.parametrize("theta", [0.2, 1.3, 2.9])
def test_inner_products_of_lemmas_5_7_10(small, theta):
    v, _, v_star, w_star = small
    w = vector_at_angle(w_star, theta, torch.ones(4, dtype=F64), 1.7)
    dfw, vs2, k = population_grad(v, w, v_star, w_star)[1], float(v @ v_star) ** 2, 1.7
    expect = {
        "relu": math.sin(theta) / (2 * SQRT_2PI**3 * k) * vs2,  # Lemma 5
        "clipped_relu": p_q(theta, k)[1] / (2 * math.pi * k) * vs2,  # Lemma 7
        "identity": math.sin(theta) / (SQRT_2PI**3 * k) * vs2,  # Lemma 10, eq. (15)
    }
    for name, value in expect.items():
        inner = float(expected_coarse_grad(name, v, w, v_star, w_star)[1] @ dfw)
        assert inner == pytest.approx(value, rel=1e-12) and value > 0


def test_spurious_minimizer(big):
    v_star, w_star = big
    m, one, v = len(v_star), float(v_star.sum()), spurious_minimizer(v_star)
    torch.testing.assert_close(v, 2 * one / (m + 1) - v_star)  # explicit form
    assert float(v @ v_star) == pytest.approx(2 * one**2 / (m + 1) - float(v_star @ v_star))  # eq. (21)
    assert float(v @ v_star) < 0
    w = -2.0 * w_star  # θ = π, ‖w‖ ≠ 1
    assert population_grad(v, w, v_star, w_star)[0].abs().max() < 1e-14
    for name in ("relu", "clipped_relu"):  # Lemmas 6, 8: the coarse gradient vanishes
        assert expected_coarse_grad(name, v, w, v_star, w_star)[1].abs().max() < 1e-14
    g_id = expected_coarse_grad("identity", v, w, v_star, w_star)[1]  # Lemma 9: it does not
    assert float(g_id.norm()) == pytest.approx(2 * (m - 1) * one**2 / (SQRT_2PI * (m + 1) ** 2), rel=1e-12)
    f0, g = population_loss(v, w, v_star, w_star), gen(4)
    for _ in range(50):  # a local minimizer: nearby points are no lower
        dv = 1e-3 * torch.randn(m, generator=g, dtype=F64)
        w_near = vector_at_angle(
            w_star, math.pi - 1e-3 * float(torch.rand(1, generator=g)), w_star.roll(1), 2.0
        )
        assert population_loss(v + dv, w_near, v_star, w_star) >= f0


def test_saddle_points_of_prop1(big):
    v_star, w_star = big
    v, theta = saddle_point(v_star)
    assert math.pi / 2 < theta < math.pi
    w = vector_at_angle(w_star, theta, w_star.roll(1), 1.3)
    dv, dw = population_grad(v, w, v_star, w_star)
    assert dv.abs().max() < 1e-14 and dw.abs().max() < 1e-14  # eq. (8)
    for name in ("relu", "clipped_relu"):  # Lemmas 6, 8
        assert expected_coarse_grad(name, v, w, v_star, w_star)[1].abs().max() < 1e-14
    m = len(v_star)  # the reduced function's Hessian is indefinite (Yin et al. 2019, §2.2)
    hess = torch.zeros(m + 1, m + 1, dtype=F64)
    hess[:m, :m] = 2 * (torch.eye(m, dtype=F64) + 1)
    hess[:m, m] = hess[m, :m] = 4 / math.pi * v_star
    eig = torch.linalg.eigvalsh(hess)
    assert eig.min() < 0 < eig.max()
    with pytest.raises(ValueError, match="Prop. 1"):
        saddle_point(torch.ones(4, dtype=F64))  # (1ᵀv*)² = 16 ≥ 2.5·4: no saddle points


def test_handy_identities(big):
    v_star, w_star = big
    m, one = len(v_star), float(v_star.sum())
    inv = torch.eye(m, dtype=F64) - 1 / (m + 1)
    torch.testing.assert_close(inv @ (torch.eye(m, dtype=F64) + 1), torch.eye(m, dtype=F64))
    quad_form = float(v_star @ inv @ v_star)
    assert quad_form == pytest.approx(float(v_star @ v_star) - one**2 / (m + 1))  # eq. (20)
    torch.testing.assert_close(stationary_v(v_star, 0.0), v_star)  # θ = 0: the global minimizer's v
    assert p_q(0.0, 1.0)[0] == pytest.approx(0.15697, abs=1e-5)  # p(0, w) at ‖w‖ = 1
    v, w = torch.randn(m, generator=gen(5), dtype=F64), torch.randn(20, generator=gen(6), dtype=F64)
    dv, _ = population_grad(v, w, v_star, w_star)
    theta, vs = angle(w, w_star), float(v @ v_star)
    h = 4 * float(v @ dv) + 2 * (1 - theta / math.pi) * vs  # eq. (23)
    along = float(expected_coarse_grad("relu", v, w, v_star, w_star)[1] @ w / w.norm())  # eq. (11) along ŵ
    assert along == pytest.approx((h - vs * (1 + math.cos(theta))) / (2 * SQRT_2PI), rel=1e-12)
    tiny = w / w.norm() * 0.02  # ‖w‖ → 0: the clipped ReLU's E g becomes the ReLU's
    torch.testing.assert_close(
        *(expected_coarse_grad(s, v, tiny, v_star, w_star)[1] for s in ("clipped_relu", "relu"))
    )


def test_facts_of_lemmas_7_and_13():
    thetas = np.linspace(0, math.pi, 61)
    for w_norm in (0.5, 1.0, 2.0):
        p0 = p_q(0.0, w_norm)[0]
        p, q = np.array([p_q(t, w_norm) for t in thetas]).T
        np.testing.assert_allclose([p[-1], q[0], q[-1]], 0, atol=1e-15)  # p(π) = q(0) = q(π) = 0
        assert (q[1:-1] > 0).all() and (p <= p0 + 1e-15).all() and (p >= -1e-15).all()
        np.testing.assert_allclose(q, q[::-1], atol=1e-15)  # q symmetric about π/2
        d = ((1 - thetas / math.pi) * p0 - p) ** 2
        np.testing.assert_allclose(d, d[::-1], atol=1e-15)
        upper = thetas >= math.pi / 2  # Lemma 13: on [π/2, π], p ≤ q and (1 − θ/π)p(0,w) ≤ q
        linear = (1 - thetas / math.pi) * p0
        assert (p[upper] <= q[upper] + 1e-15).all() and (linear[upper] <= q[upper] + 1e-15).all()


# ---- Algorithm 1 (Theorems 1–2, Lemma 10's instability) --------------------------------------------------------


@pytest.mark.parametrize("name", ["relu", "clipped_relu"])
def test_algorithm1_descends_and_reaches_the_global_minimum(big, name):
    v_star, w_star = big
    v0, w0 = theorem2_start(v_star, w_star, gen(3))
    assert theorem2_condition(v0, w0, v_star, w_star)
    run = coarse_gradient_descent(name, v0, w0, v_star, w_star, lr=0.1, steps=1000)
    assert (run.loss.diff() <= 1e-12).all()  # monotone up to roundoff (Theorem 1)
    assert run.loss[-1] < 1e-6 and run.theta[-1] < 1e-3  # Theorem 2
    torch.testing.assert_close(run.v, v_star, rtol=0, atol=1e-3)
    assert (run.inner[:-1] >= 0).all() and (run.cos[run.inner > 1e-12] > 0).all()  # Lemmas 5, 7
    v1, w1 = torch.randn(10, generator=gen(7), dtype=F64), torch.randn(20, generator=gen(8), dtype=F64)
    anywhere = coarse_gradient_descent(name, v1, w1, v_star, w_star, lr=0.05, steps=300)  # any start
    assert (anywhere.loss.diff() <= 1e-12).all()


def test_algorithm1_at_the_spurious_minimizer(big):
    v_star, w_star = big
    v0, w0 = spurious_minimizer(v_star), -w_star
    for name in ("relu", "clipped_relu"):  # E g = 0 there: the iterates stay
        run = coarse_gradient_descent(name, v0, w0, v_star, w_star, lr=0.05, steps=200)
        torch.testing.assert_close(run.v, v0, rtol=0, atol=1e-12)
        torch.testing.assert_close(run.w, w0, rtol=0, atol=1e-12)
    run = coarse_gradient_descent("identity", v0, w0, v_star, w_star, lr=0.05, steps=200)
    assert run.loss.max() > run.loss[0] + 1.0  # descent fails: ‖w‖ is driven through 0 and θ flips to 0
    assert run.w_norm.min() < 0.05


def test_sampled_algorithm1_tracks_the_exact_one(small):
    v, w, v_star, w_star = small
    exact = coarse_gradient_descent("relu", v, w, v_star, w_star, lr=0.1, steps=40)
    mc = coarse_gradient_descent(
        "relu", v, w, v_star, w_star, lr=0.1, steps=40, n_samples=2**14, generator=gen(9)
    )
    assert exact.loss[-1] < 0.5 * exact.loss[0]
    assert abs(float(mc.loss[-1] - exact.loss[-1])) < 0.05 * float(exact.loss[0])


# ---- certificate, CLI, figures, errors ------------------------------------------------------------------------


def test_certificate_table_cli(tmp_path, capsys):
    out = tmp_path / "cert.md"
    assert main(["certify", "--points", "16", "--out", str(out)]) == 0  # m = 10, n = 20
    table = capsys.readouterr().out
    assert out.read_text().strip() == table.strip()
    rows = {
        line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")
    }
    assert set(STES) <= set(rows)
    vanishes = {name: row[-2].strip() for name, row in rows.items() if name in STES}
    assert vanishes == {  # μ′ = 0 on x ≤ 0 makes E g vanish at θ = π (Yin et al. 2019, Lemmas 6, 8; ours for the rest)
        "identity": "no", "relu": "yes", "clipped_relu": "yes", "log_tailed_relu": "yes",
        "leaky_clipped_relu": "no", "soft_staircase": "no", "ewgs": "no", "dsq": "no", "gaussian_smoothed": "no",
        "reste": "yes", "approx_poly": "no", "annealed_soft_staircase": "no",
    }  # fmt: skip
    for name in ("relu", "clipped_relu", "identity"):
        assert rows[name][3].strip() == "1.000"  # descent fraction
    ratio = {name: (float(rows[name][5]), float(rows[name][6])) for name in ("relu", "identity")}
    assert ratio["identity"][1] > 5 * ratio["identity"][0]  # eq. (16): grows ~1/δ towards θ = π
    assert ratio["relu"][1] < 1.5 * ratio["relu"][0]  # eq. (12): stays bounded


def test_write_figures(tmp_path):
    from src.theory.figures import write_figures

    paths = write_figures(tmp_path / "theory")
    assert [p.name for p in paths] == ["figure1.png", "cgd_spurious.png", "cgd_global.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.parent == tmp_path / "theory" for p in paths)


def test_undefined_points_raise(small):
    v, w, v_star, w_star = small
    with pytest.raises(ValueError, match="w = 0_n"):
        population_grad(v, torch.zeros(4, dtype=F64), v_star, w_star)
    with pytest.raises(ValueError, match="method"):
        expected_coarse_grad("log_tailed_relu", v, w, v_star, w_star, method="closed")
    with pytest.raises(ValueError, match="Prop. 1"):
        spurious_minimizer(torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="parallel"):
        vector_at_angle(w_star, 1.0, -3 * w_star)
