"""The STE/quantizer library against independent oracles: definitions written here in numpy, detach forms,
the LSQ/PACT reference formulations, Monte Carlo for Lloyd's α, and eager for torch.compile."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.quant import STES, QuantReLU, get_ste, lloyd_alpha, quant_relu, ste_defaults
from tests.conftest import REPO

SETTINGS = [(1, 1.0), (2, 0.6511), (3, 0.3), (4, 0.1946)]  # (bits, α): the paper's and two more


def staircase_oracle(x, alpha, levels):
    """σ_α by its definition (Yin et al. 2019, §4): α times the number of k = 1..L with x > (k−1)α."""
    return alpha * sum((x > (k - 1) * alpha).astype(float) for k in range(1, levels + 1))


def grad_oracle(name, x, grad, alpha, levels, **kw):
    """∂loss/∂x for each registry STE, written from the issue's table (numpy, float64)."""
    c = levels * alpha
    inside = (x > 0) & (x <= c)
    if name == "identity":
        return grad
    if name == "relu":
        return grad * (x > 0)
    if name == "clipped_relu":
        return grad * inside
    if name == "log_tailed_relu":
        return grad * (inside + (x > c) / np.maximum(x - c + 1, 1))
    if name == "leaky_clipped_relu":
        return grad * np.where(inside, 1.0, kw.get("eps", 0.1))
    if name in ("soft_staircase", "annealed_soft_staircase"):  # annealed: β_start until set_epoch moves it
        beta = kw.get("beta", kw.get("beta_start", 4.0 if name == "soft_staircase" else 1.0))
        s = [0.5 + 0.5 * np.tanh(beta * (x / alpha - k) / 2) for k in range(levels)]  # sigmoid, overflow-free
        return grad * beta * sum(sk * (1 - sk) for sk in s)
    if name == "ewgs":
        q = staircase_oracle(x, alpha, levels)
        return grad * (1 + kw.get("delta", 0.01) * np.sign(grad) * (x - q) / alpha) * inside
    if name == "dsq":  # DSQ's own variables: x clipped to [l, l + LΔ], interval i = ⌊(x − l)/Δ⌋, midpoint m_i
        a_dsq, lo = kw.get("alpha_dsq", 0.2), -alpha / 2
        k = 2 * np.arctanh(1 - a_dsq) / alpha  # α_dsq = 1 − tanh(kΔ/2), Δ = α
        i = np.clip(np.floor((x - lo) / alpha), 0, levels - 1)
        th = np.tanh(k * (x - (lo + (i + 0.5) * alpha)))
        return grad * (lo <= x) * (x <= lo + levels * alpha) * alpha / 2 * k * (1 - th**2) / (1 - a_dsq)
    if name == "gaussian_smoothed":  # every threshold (k−1)α, k = 1..L, no window
        s = kw.get("sigma", 0.5) * alpha
        z = [(x - (k - 1) * alpha) / s for k in range(1, levels + 1)]
        return grad * alpha * sum(np.exp(-zk * zk / 2) for zk in z) / (s * np.sqrt(2 * np.pi))
    if name == "reste":  # the power function's derivative on each level interval ((k−1)α, kα], secant below t
        o, t = kw.get("o", 3.0), kw.get("interval", 0.1)
        total = 0.0
        for k in range(1, levels + 1):
            w = x / alpha - (k - 1)
            on = (x > (k - 1) * alpha) & (x <= k * alpha)
            total = total + on * np.where(w > t, np.maximum(w, t) ** (1 / o - 1) / o, t ** (1 / o - 1))
        return grad * total
    if (
        name == "approx_poly"
    ):  # a triangle 2 − 4|x/α − j| per threshold j (ApproxSign's 2 − 2|v|, v = 2(x/α − j))
        return grad * sum(np.maximum(0.0, 2 - 4 * np.abs(x / alpha - j)) for j in range(levels))
    raise KeyError(f"no oracle for STE {name!r}: add one here when adding it to the registry")


def grads_through(ste, x, grad, bits, alpha, **kw):
    """x's gradient through quant_relu for an upstream gradient grad."""
    x = torch.tensor(x, requires_grad=True)
    quant_relu(x, bits, alpha, ste, **kw).backward(torch.tensor(grad))
    return x.grad.numpy()


# ---- forward -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])  # dyadic: k·α is exact, so each boundary is hit exactly
def test_forward_levels_at_every_boundary(alpha, bits, dtype):
    levels = 2**bits - 1
    below, above = lambda t: torch.nextafter(t, t - 1), lambda t: torch.nextafter(t, t + 1)  # noqa: E731
    edges = torch.arange(levels + 1, dtype=dtype) * alpha  # 0, α, …, Lα
    x = torch.cat([edges, below(edges), above(edges), torch.tensor([-3.0, 1e6], dtype=dtype)])
    k = torch.arange(levels + 1, dtype=dtype)
    # (k−1)α < x ≤ kα → kα: an edge keeps its level, just above it the next one, just below it its own
    expected = torch.cat([k, k.clamp(min=0), (k + 1).clamp(max=levels), torch.tensor([0.0, levels])]) * alpha
    expected[levels + 1] = 0  # just below 0
    assert torch.equal(quant_relu(x, bits, alpha), expected)


@pytest.mark.parametrize("bits,alpha", SETTINGS)
def test_forward_matches_definition_for_non_dyadic_alpha(bits, alpha):
    levels = 2**bits - 1
    k = np.arange(levels + 1)
    x = np.concatenate(
        [k * alpha * (1 - 1e-6), k * alpha * (1 + 1e-6), np.random.default_rng(0).normal(size=999)]
    )
    out = quant_relu(torch.tensor(x), bits, alpha).numpy()
    np.testing.assert_array_equal(out, staircase_oracle(x, alpha, levels))


def test_one_bit_unit_alpha_is_the_binary_relu():
    x = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 0.3, 1.0, 7.0])
    assert quant_relu(x, 1, 1.0).tolist() == [0, 0, 0, 1, 1, 1, 1]


# ---- backward ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STES))
@pytest.mark.parametrize("bits,alpha", SETTINGS)
def test_backward_matches_formula_oracle(name, bits, alpha):
    levels = 2**bits - 1
    rng = np.random.default_rng(bits)
    x = rng.uniform(-1.0, levels * alpha + 2.0, size=2000)
    grad = rng.normal(size=x.shape)
    np.testing.assert_allclose(
        grads_through(name, x, grad, bits, alpha),
        grad_oracle(name, x, grad, alpha, levels),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", [n for n in sorted(STES) if STES[n].x_only])
@pytest.mark.parametrize("bits,alpha", SETTINGS)
def test_backward_matches_detach_form_of_mu(name, bits, alpha):
    """Autograd of s(x) + (σ_α(x) − s(x)).detach() has value σ_α and gradient μ′: the surrogate's own oracle."""
    levels = 2**bits - 1
    ste = get_ste(name)
    x = torch.empty(2000, dtype=torch.float64).uniform_(
        -1.0, levels * alpha + 2.0, generator=torch.Generator().manual_seed(1)
    )
    a = torch.tensor(alpha, dtype=torch.float64)
    xo = x.clone().requires_grad_()
    s = ste.mu(xo, a, levels)
    (s + (torch.tensor(staircase_oracle(x.numpy(), alpha, levels)) - s).detach()).sum().backward()
    xq = x.clone().requires_grad_()
    quant_relu(xq, bits, alpha, name).sum().backward()
    torch.testing.assert_close(xq.grad, xo.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(STES))
def test_backward_at_boundaries(name):
    bits, alpha = 2, 0.5  # c = 1.5, exactly representable
    c = 1.5
    x = np.array([0.0, np.nextafter(0, 1), c, np.nextafter(c, 2), -0.25, 0.5, 1.0, 3.0])
    grad = np.array([1.0, -2.0, 0.5, 1.0, 1.0, -1.0, 2.0, 1.0])
    np.testing.assert_allclose(
        grads_through(name, x, grad, bits, alpha),
        grad_oracle(name, x, grad, alpha, 3),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "name,kw",
    [
        ("leaky_clipped_relu", {"eps": 0.0}),
        ("leaky_clipped_relu", {"eps": 1.0}),
        ("leaky_clipped_relu", {"eps": 0.37}),
        ("soft_staircase", {"beta": 0.5}),
        ("soft_staircase", {"beta": 20.0}),
        ("ewgs", {"delta": 0.3}),
        ("dsq", {"alpha_dsq": 0.05}),
        ("dsq", {"alpha_dsq": 0.9}),
        ("gaussian_smoothed", {"sigma": 0.15}),
        ("gaussian_smoothed", {"sigma": 3.0}),
        ("reste", {"o": 1.7, "interval": 0.3}),
        ("reste", {"o": 1.0}),
        ("annealed_soft_staircase", {"beta_start": 7.0}),
    ],
)
def test_hyper_parameters_reach_backward(name, kw):
    rng = np.random.default_rng(3)
    x, grad = rng.uniform(-1, 3, 500), rng.normal(size=500)
    np.testing.assert_allclose(
        grads_through(name, x, grad, 2, 0.6511, **kw),
        grad_oracle(name, x, grad, 0.6511, 3, **kw),
        rtol=1e-12,
        atol=1e-12,
    )


def test_leaky_clipped_relu_dials_between_clipped_and_identity():
    x, grad = np.linspace(-2, 4, 301), np.ones(301)
    np.testing.assert_array_equal(
        grads_through("leaky_clipped_relu", x, grad, 2, 0.6511, eps=0.0),
        grads_through("clipped_relu", x, grad, 2, 0.6511),
    )
    np.testing.assert_array_equal(
        grads_through("leaky_clipped_relu", x, grad, 2, 0.6511, eps=1.0),
        grads_through("identity", x, grad, 2, 0.6511),
    )


def test_soft_staircase_window_is_exact_at_many_bits():
    """At 16 bits the backward sums only the levels within reach of x; the full 65535-term sum must agree."""
    bits, alpha, levels = 16, lloyd_alpha(16), 2**16 - 1
    x = np.array(
        [-0.3, 0.0, 0.5 * alpha, 123.4 * alpha, 40000.5 * alpha, (levels - 0.5) * alpha, levels * alpha + 1]
    )
    k = np.arange(levels)[:, None]
    s = 0.5 + 0.5 * np.tanh(2.0 * (x / alpha - k))  # sigmoid(4u)
    full = 4.0 * (s * (1 - s)).sum(axis=0)
    np.testing.assert_allclose(
        grads_through("soft_staircase", x, np.ones_like(x), bits, alpha), full, rtol=1e-12
    )


# ---- learnable α ---------------------------------------------------------------------------------------------


def alpha_grad_reference(mode, x, g, alpha, levels):
    """α's gradient from the reference formulations: PACT's clip ½(|x| − |x−c| + c) with c = Lα, and LSQ's
    detach form with a straight-through ceil and the gradient scale 1/√(features·L) (Esser et al. 2020)."""
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    if mode == "pact":
        c = a * levels
        y = 0.5 * (x.abs() - (x - c).abs() + c)
    else:
        scale = 1 / math.sqrt(x[0].numel() * levels)
        a_s = a * scale + (a - a * scale).detach()  # LSQ's grad_scale: value α, gradient ×scale
        u = torch.clamp(x / a_s, 0, levels)
        y = (u + (torch.ceil(u) - u).detach()) * a_s
    (y * g).sum().backward()
    return a.grad


@pytest.mark.parametrize("mode", ["pact", "lsq"])
@pytest.mark.parametrize("bits,alpha", SETTINGS)
def test_learnable_alpha_gradient(mode, bits, alpha):
    gen = torch.Generator().manual_seed(bits)
    x = 2 * torch.randn(8, 3, 5, 5, dtype=torch.float64, generator=gen)
    g = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    act = QuantReLU(bits, alpha, "clipped_relu", alpha_mode=mode).double()
    (act(x) * g).sum().backward()
    expected = alpha_grad_reference(mode, x, g, float(act.alpha), 2**bits - 1)  # α as stored (float32)
    assert float(act.alpha.grad) == pytest.approx(float(expected), rel=1e-10, abs=1e-12)
    assert float(act.alpha.grad) != 0


def test_learnable_alpha_stays_positive_and_keeps_its_gradient():
    act = QuantReLU(2, 0.5, "clipped_relu", alpha_mode="pact")
    with torch.no_grad():
        act.alpha.fill_(-0.2)  # an optimizer step overshot
    x = torch.linspace(-1, 5, 50, requires_grad=True)
    out = act(x)
    assert out.min() >= 0 and float(out.detach().max()) == pytest.approx(3 * act.alpha_floor, rel=1e-4)
    out.sum().backward()
    assert act.alpha.grad is not None and float(act.alpha.grad) > 0


def test_fixed_alpha_is_a_buffer_learnable_a_parameter():
    assert "alpha" in dict(QuantReLU(2, "lloyd").named_buffers())
    assert [n for n, _ in QuantReLU(2, "lloyd").named_parameters()] == []
    assert [n for n, _ in QuantReLU(2, "lloyd", alpha_mode="lsq").named_parameters()] == ["alpha"]
    assert float(QuantReLU(4, "lloyd").alpha) == pytest.approx(lloyd_alpha(4))


def test_bits_none_is_a_float_relu():
    act, x = QuantReLU(None), torch.randn(100)
    assert torch.equal(act(x), torch.relu(x)) and not list(act.buffers())


# ---- Lloyd's α -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,author", [(1, 1.2221), (2, 0.6511), (4, 0.1946)])
def test_lloyd_alpha_matches_author_code(bits, author):
    assert lloyd_alpha(bits) == pytest.approx(author, abs=0.002)


@pytest.mark.parametrize("bits", [3, 5])
def test_lloyd_alpha_is_the_mse_optimum_by_monte_carlo(bits):
    levels = 2**bits - 1
    x = np.abs(np.random.default_rng(bits).normal(size=2_000_000))
    mse = lambda a: np.mean((x - a * np.clip(np.round(x / a), 0, levels)) ** 2)  # noqa: E731
    best = lloyd_alpha(bits)
    q = np.clip(np.round(x / best), 0, levels)
    assert np.sum(x * q) / np.sum(q * q) == pytest.approx(best, rel=2e-3)  # a fixed point of the Lloyd step
    assert mse(best) < min(mse(0.97 * best), mse(1.03 * best))


def test_lloyd_alpha_every_bit_width():
    values = [lloyd_alpha(b) for b in range(1, 17)]
    assert all(a > b > 0 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] * (2**16 - 1) == pytest.approx(6.0, rel=0.1)  # 16 bits spread their levels over ≈6σ


# ---- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: get_ste("tanh"),
            r"unknown ste 'tanh'; valid names: annealed_soft_staircase, approx_poly, clipped_relu, dsq, ewgs, ",
        ),
        (lambda: QuantReLU(2, 1.0, "bogus"), "unknown ste 'bogus'"),
        (lambda: quant_relu(torch.ones(2), 0, 1.0), r"bits must be an integer in \[1, 16\], got 0"),
        (lambda: quant_relu(torch.ones(2), 17, 1.0), "bits must be an integer in"),
        (lambda: QuantReLU(2.5, 1.0), "bits must be an integer"),
        (lambda: QuantReLU(True, 1.0), "bits must be an integer"),
        (lambda: quant_relu(torch.ones(2), 2, 0.0), r"alpha must be a number > 0 or 'lloyd', got 0.0"),
        (lambda: QuantReLU(2, -1.0), "alpha must be a number > 0"),
        (lambda: QuantReLU(2, "median"), "alpha must be a number > 0 or 'lloyd', got 'median'"),
        (lambda: get_ste("leaky_clipped_relu", eps=-0.1), r"eps must lie in \[0, 1\], got -0.1"),
        (lambda: get_ste("leaky_clipped_relu", eps=1.5), r"eps must lie in \[0, 1\]"),
        (lambda: get_ste("soft_staircase", beta=0.0), "beta must be > 0, got 0.0"),
        (lambda: get_ste("soft_staircase", beta=-2.0), "beta must be > 0"),
        (lambda: get_ste("ewgs", delta=-0.5), "delta must be >= 0"),
        (lambda: get_ste("relu", eps=0.1), "ste relu: .*unexpected keyword argument 'eps'"),
        (lambda: QuantReLU(2, 1.0, alpha_mode="learned"), "alpha_mode must be one of"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- registry and configs ------------------------------------------------------------------------------------


def test_registry_and_conf_ste_agree():
    files = {
        p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (REPO / "conf" / "ste").glob("*.yaml")
    }
    assert sorted(files) == sorted(STES)
    for name, cfg in files.items():
        assert cfg.pop("_target_") == "src.quant.get_ste" and cfg.pop("name") == name
        assert cfg == ste_defaults(name), f"conf/ste/{name}.yaml and STES[{name!r}] disagree"


@pytest.mark.parametrize("name", sorted(STES))
def test_every_ste_documents_its_source(name):
    doc = STES[name].__doc__
    assert "μ" in doc and any(ch.isdigit() for ch in doc), f"{name}: docstring needs μ/μ′ and its source"


# ---- torch.compile -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,mode", [(n, "fixed") for n in sorted(STES)] + [("clipped_relu", "pact"), ("clipped_relu", "lsq")]
)
def test_compile_matches_eager(name, mode):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8, affine=False),
        QuantReLU(2, "lloyd", name, alpha_mode=mode),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )
    x = torch.randn(16, 3, 8, 8)
    eager = net(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = torch.compile(net, fullgraph=True)(x)  # fullgraph: no graph breaks allowed
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
