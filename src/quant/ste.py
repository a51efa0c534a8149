"""The straight-through estimators: one registry, name -> STE class.

Every STE replaces the a.e.-zero derivative of the quantized ReLU σ_α (Yin et al. 2019, §4) by the derivative μ′ of a
surrogate μ. Inputs are the pre-activation ``x``, the resolution ``alpha`` (a tensor, maybe learnable) and the number
of non-zero levels ``levels`` = L = 2^b − 1; the clip point is c = L·α. The paper's three (§1, §5) are
``identity``, ``relu`` and ``clipped_relu``; the others go beyond it.

An STE instance holds its hyper-parameters (validated on construction); ``STES[name](**kwargs)`` builds one.
``backward(grad, x, alpha, levels)`` is what autograd calls; by default it is ``grad * dmu(x)``. An STE whose μ′
is a function of the level index k (below) declares ``needs = "level"`` and writes ``backward_level`` instead:
the quantizer then keeps one byte per element for backward instead of the four of a float32 x. An STE whose
hyper-parameter moves during training (annealing) overrides ``set_epoch``; ``set_epoch(model, epoch, max_epochs)``
calls it on every STE of a model at each train epoch's start.

Over 300 lines on purpose: every STE lives here, in one registry (STYLE: one home per concept), each class short.
"""

from __future__ import annotations

import inspect
import math

import torch

from src.registry import Registry

STES = Registry("ste")  # name -> STE class; a plugin adds its own with @STES.register (README: Extending)


def get_ste(name: str | STE, **kwargs) -> STE:
    """Return an STE instance from a registry name (with hyper-parameters) or pass an instance through."""
    if isinstance(name, STE):
        return name
    cls = STES.lookup(name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # an argument this STE does not take
        raise ValueError(f"ste {name}: {err}; it takes {ste_defaults(name) or 'no arguments'}") from None


def ste_defaults(name: str) -> dict:
    """The hyper-parameters of a registry STE with their default values (what conf/ste/<name>.yaml must hold)."""
    params = inspect.signature(STES[name].__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self"}


def clip_point(alpha: torch.Tensor, levels: int) -> torch.Tensor:
    """c = (2^b − 1)·α, where the staircase reaches its top level."""
    return alpha * levels


def level_index(x: torch.Tensor, alpha: torch.Tensor, top: int) -> torch.Tensor:
    """k = clamp(ceil(x/α), 0, top) in x's dtype: 0 ⇔ x ≤ 0, k ⇔ x ∈ ((k−1)α, kα]; with top = L+1, L+1 ⇔ x > c."""
    # in place on the fresh quotient (one allocation); clamp_min_/clamp_max_ rather than clamp_(0, top): vmap
    # (src/stack.py) has batching rules for them, while it would loop over the K slices for clamp_
    return (x / alpha).ceil_().clamp_min_(0).clamp_max_(top)


def staircase(x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
    """σ_α(x) = α·clamp(ceil(x/α), 0, L): 0 for x ≤ 0, kα on ((k−1)α, kα], Lα above (L−1)α (Yin et al. 2019, §4;
    the ceil form of the authors' code)."""
    return level_index(x, alpha, levels).mul_(alpha)


def threshold_sum(u: torch.Tensor, levels: int, width: int, term) -> torch.Tensor:
    """Σ_{j=0}^{L−1} term(u − j) over the thresholds j of σ_α in units of α (u = x/α): every term for few levels,
    else only the j within ``width`` of u (the others must be negligible), so 16 bits need no 65535-term sum."""
    if levels <= 2 * width + 1:
        return sum(term(u - j) for j in range(levels))
    base = u.floor().clamp(0, levels - 1)
    total = torch.zeros_like(u)
    for i in range(-width, width + 1):
        j = base + i
        total = total + torch.where((j >= 0) & (j < levels), term(u - j), 0.0)
    return total


def nearest_threshold(u: torch.Tensor, levels: int) -> torch.Tensor:
    """The threshold j ∈ {0, …, L−1} of σ_α nearest to u = x/α (a tie |u − j| = ½ may go either way): the pieces
    of the per-step surrogates (dsq, approx_poly) are |u − j| ≤ ½, on [−½, L−½] in all."""
    return u.round().clamp(0, levels - 1)


def progress(epoch: int, max_epochs: int) -> float:
    """t = epoch/(max_epochs − 1) in [0, 1]: 0 at the first epoch, 1 at the last (and after it; 0 for one epoch)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"set_epoch: epoch must be an integer >= 0, got {epoch!r}")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"set_epoch: max_epochs must be an integer >= 1, got {max_epochs!r}")
    return min(epoch / max(max_epochs - 1, 1), 1.0)


def set_epoch(model: torch.nn.Module, epoch: int, max_epochs: int) -> None:
    """Move every annealed STE of model's quantized activations to this epoch (call at each train epoch start);
    a float activation (bits=None) has no STE, and a non-annealed STE ignores the call."""
    progress(epoch, max_epochs)  # a bad epoch is an error even for a model without annealed STEs
    for module in model.modules():
        ste = getattr(module, "ste", None)
        if isinstance(ste, STE):
            ste.set_epoch(epoch, max_epochs)


class STE:
    """Base class: backward is ``grad · μ′(x)``. ``x_only`` says μ′ depends on x alone (not on the gradient).

    ``needs`` is what backward reads, so what the quantizer saves in forward: "x" (the pre-activation), "level"
    (the one-byte level index k of ``LevelSTE``) or "nothing".
    """

    name = ""
    x_only = True
    needs = "x"

    def __init__(self):  # hyper-parameters, if any, are an STE's __init__ arguments with their defaults
        pass

    def set_epoch(self, epoch: int, max_epochs: int) -> None:
        """Move hyper-parameters that change during training (annealed STEs) to this epoch; a no-op here."""

    def mu(self, x, alpha, levels):
        """The surrogate μ whose autograd derivative is μ′ (the oracle of the detach form)."""
        raise NotImplementedError(f"{self.name} has no surrogate μ")

    def dmu(self, x, alpha, levels):
        """μ′(x)."""
        raise NotImplementedError

    def backward(self, grad, x, alpha, levels):
        """Gradient to x given the gradient at the quantizer's output."""
        return grad * self.dmu(x, alpha, levels)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)}" for k in ste_defaults(self.name))
        return f"{self.name}({args})"


class LevelSTE(STE):
    """An STE whose μ′ is a function of the level index k alone: 1{x>0} = 1{k≥1}, 1{x≤c} = 1{k≤L}.

    k comes from the forward's own arithmetic ceil(x/α), so a mask agrees with the staircase at every boundary.
    """

    needs = "level"
    beyond_clip = True  # backward tells x > c (k = L+1) from x ∈ ((L−1)α, c] (k = L); if not, k stops at L

    def backward(self, grad, x, alpha, levels):
        # the quantizer kept x (learned α, or too many levels for a byte): k from x, the same arithmetic
        k = None if self.needs == "nothing" else level_index(x, alpha, levels + 1)
        return self.backward_level(grad, k, levels)

    def backward_level(self, grad, k, levels):
        """Gradient to x from the level index k (any dtype; None when ``needs`` is "nothing")."""
        raise NotImplementedError


@STES.register
class Identity(LevelSTE):
    """μ(x) = x, μ′(x) = 1. Hinton 2012 (lecture 9c); Bengio et al. 2013. The paper's identity STE, eq. (14)."""

    name = "identity"
    needs = "nothing"

    def mu(self, x, alpha, levels):
        return x

    def dmu(self, x, alpha, levels):
        return torch.ones_like(x)

    def backward_level(self, grad, k, levels):
        return grad  # μ′ ≡ 1: skip the multiply


@STES.register
class ReLU(LevelSTE):
    """μ(x) = max(x, 0), μ′(x) = 1{x>0}. HWGQ (Cai et al. 2017); the paper's vanilla ReLU STE, eq. (11)."""

    name = "relu"
    beyond_clip = False  # 1{k≥1} only: the forward saves a pass (its k is the output's level)

    def mu(self, x, alpha, levels):
        return x.clamp_min(0)

    def dmu(self, x, alpha, levels):
        return (x > 0).to(x.dtype)

    def backward_level(self, grad, k, levels):
        # x > 0 ⇔ k ≥ 1 (unless x/α underflows to 0, where σ_α is 0 too): ReLU's fused backward grad·1{k>0}
        return torch.ops.aten.threshold_backward(grad, k, 0)


@STES.register
class ClippedReLU(LevelSTE):
    """μ(x) = min(max(x, 0), c), μ′(x) = 1{0<x≤c}. HWGQ; the paper's best STE, eq. (26) for b=1, α=1."""

    name = "clipped_relu"

    def mu(self, x, alpha, levels):
        return torch.minimum(x.clamp_min(0), clip_point(alpha, levels))

    def dmu(self, x, alpha, levels):
        return ((x > 0) & (x <= clip_point(alpha, levels))).to(x.dtype)

    def backward_level(self, grad, k, levels):
        # 0 < x ≤ Lα ⇔ 1 ≤ k ≤ L: hardtanh's fused backward grad·1{0.5<k<L+0.5}
        return torch.ops.aten.hardtanh_backward(grad, k, 0.5, levels + 0.5)


@STES.register
class LogTailedReLU(STE):
    """μ(x) = clipped ReLU on x ≤ c, c + log(x − c + 1) above; μ′(x) = 1{0<x≤c} + 1{x>c}/(x−c+1). HWGQ 2017."""

    name = "log_tailed_relu"

    def mu(self, x, alpha, levels):
        c = clip_point(alpha, levels)
        return torch.where(x > c, c + torch.log1p((x - c).clamp_min(0)), x.clamp_min(0))

    def dmu(self, x, alpha, levels):
        c = clip_point(alpha, levels)
        tail = 1 / ((x - c).clamp_min(0) + 1)
        return torch.where(x > c, tail, (x > 0).to(x.dtype))


@STES.register
class LeakyClippedReLU(STE):
    """μ′(x) = 1{0<x≤c} + ε·1{x≤0 or x>c}, ε ∈ [0, 1]: a dial from clipped ReLU (ε=0) to identity (ε=1). Ours."""

    name = "leaky_clipped_relu"

    def __init__(self, eps: float = 0.1):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"leaky_clipped_relu: eps must lie in [0, 1], got {eps}")
        self.eps = eps

    def mu(self, x, alpha, levels):
        c = clip_point(alpha, levels)
        inside = torch.minimum(x.clamp_min(0), c)
        return inside + self.eps * (x - inside)  # the leak: slope ε outside (0, c]

    def dmu(self, x, alpha, levels):
        inside = (x > 0) & (x <= clip_point(alpha, levels))
        return torch.where(inside, 1.0, torch.full_like(x, self.eps))


@STES.register
class SoftStaircase(STE):
    """μ(x) = α·Σ_{k=0}^{L−1} sigmoid(β(x−kα)/α): a smooth staircase (Bengio et al. 2013; slope annealing).

    μ′(x) = β·Σ_k s_k(1 − s_k) with s_k = sigmoid(β(x − kα)/α); β → ∞ recovers σ_α itself.
    """

    name = "soft_staircase"
    reach = 40.0  # terms with |β(x−kα)/α| > reach weigh < e^-40: skipped, so 16 bits need no 65535-term sum

    def __init__(self, beta: float = 4.0):
        if not beta > 0:
            raise ValueError(f"soft_staircase: beta must be > 0, got {beta}")
        self.beta = beta

    def mu(self, x, alpha, levels):
        u = x / alpha  # x in units of α
        return alpha * sum(torch.sigmoid(self.beta * (u - k)) for k in range(levels))

    def dmu(self, x, alpha, levels):
        def term(d):
            s = torch.sigmoid(self.beta * d)
            return s * (1 - s)

        return self.beta * threshold_sum(x / alpha, levels, math.ceil(self.reach / self.beta), term)


@STES.register
class EWGS(STE):
    """Element-wise gradient scaling (Lee, Kim, Ham, CVPR 2021), on the clipped ReLU's support:

    ∂/∂x = grad·(1 + δ·sign(grad)·(x − σ_α(x))/α) on 0 < x ≤ c, 0 elsewhere. μ′ depends on the gradient, so
    there is no surrogate μ.
    """

    name = "ewgs"
    x_only = False

    def __init__(self, delta: float = 0.01):
        if not delta >= 0:
            raise ValueError(f"ewgs: delta must be >= 0, got {delta}")
        self.delta = delta

    def backward(self, grad, x, alpha, levels):
        inside = (x > 0) & (x <= clip_point(alpha, levels))
        scale = 1 + self.delta * torch.sign(grad) * (x - staircase(x, alpha, levels)) / alpha
        return torch.where(inside, grad * scale, 0.0)


@STES.register
class DSQ(STE):
    """Differentiable Soft Quantization (Gong et al., ICCV 2019, §3) on each jump of σ_α.

    DSQ draws the step on an interval of width Δ around its jump m as φ(x) = s·tanh(k(x − m)), s = 1/tanh(kΔ/2),
    with the shape α_dsq = 1 − tanh(kΔ/2) ∈ (0, 1). Here Δ = α and the jumps are σ_α's thresholds jα, j = 0..L−1;
    with d = x/α − j ∈ [−½, ½] and κ = kα = 2·atanh(1 − α_dsq):
    μ(x) = α(j + ½ + ½·s·tanh(κd)) (0 below −α/2, c above (L−½)α), μ′(x) = ½·s·κ·(1 − tanh²(κd)) on [−α/2, (L−½)α],
    0 elsewhere. α_dsq → 0 sharpens μ into σ_α; α_dsq → 1 flattens it into slope 1. DSQ learns α_dsq; here it is fixed.
    """

    name = "dsq"

    def __init__(self, alpha_dsq: float = 0.2):
        if not 0.0 < alpha_dsq < 1.0:
            raise ValueError(f"dsq: alpha_dsq must lie in (0, 1), got {alpha_dsq}")
        self.alpha_dsq = alpha_dsq
        self.kappa, self.s = 2 * math.atanh(1 - alpha_dsq), 1 / (1 - alpha_dsq)  # tanh(κ/2) = 1 − α_dsq = 1/s

    def mu(self, x, alpha, levels):
        u = x / alpha
        j = nearest_threshold(u, levels)
        return alpha * (j + 0.5 + 0.5 * self.s * torch.tanh(self.kappa * (u - j).clamp(-0.5, 0.5)))

    def dmu(self, x, alpha, levels):
        u = x / alpha
        d = u - nearest_threshold(u, levels)
        t = torch.tanh(self.kappa * d)
        return torch.where(d.abs() <= 0.5, 0.5 * self.s * self.kappa * (1 - t * t), 0.0)


@STES.register
class GaussianSmoothed(STE):
    """σ_α smoothed by Gaussian noise: μ(x) = E_ε[σ_α(x + σα·ε)], ε ~ N(0, 1), σ in units of α.

    With σ_α = α·Σ_{k=1}^{L} 1{x > (k−1)α}: μ(x) = α·Σ_k Φ((x − (k−1)α)/(σα)), so exactly
    μ′(x) = Σ_{k=1}^{L} α·φ((x − (k−1)α)/(σα))/(σα): the noise density at each threshold (Shekhovtsov & Yanush
    2020, arXiv 2006.06880: the STE of a noisy step is the derivative of its expectation). σ → 0 recovers σ_α.
    """

    name = "gaussian_smoothed"
    reach = 9.0  # terms farther than 9σ weigh φ(9)/φ(0) = e^-40.5: skipped, as in soft_staircase

    def __init__(self, sigma: float = 0.5):
        if not sigma > 0:
            raise ValueError(f"gaussian_smoothed: sigma must be > 0, got {sigma}")
        self.sigma = sigma

    def mu(self, x, alpha, levels):
        u = x / alpha
        return alpha * sum(torch.special.ndtr((u - j) / self.sigma) for j in range(levels))

    def dmu(self, x, alpha, levels):
        def density(d):
            z = d / self.sigma
            return torch.exp(-0.5 * z * z)

        width = math.ceil(self.reach * self.sigma)
        return threshold_sum(x / alpha, levels, width, density) / (self.sigma * math.sqrt(2 * math.pi))


@STES.register
class ReSTE(STE):
    """Rectified STE (Wu, Zheng, Liu, Zheng, ICCV 2023, §4, and their code): the power function
    sign(x)|x|^{1/o}, o ≥ 1, whose derivative (1/o)|x|^{1/o−1} is replaced by the secant slope t^{1/o−1} on |x| ≤ t,
    t = ``interval`` (their 0.1), where it would blow up.

    Ours, per level interval ((k−1)α, kα] of σ_α with w = x/α − (k−1) ∈ (0, 1]: μ(x) = α(k − 1 + m(w)), m(w) = w^{1/o}
    (w > t), w·t^{1/o−1} (w ≤ t); μ′(x) = (1/o)w^{1/o−1} (w > t), t^{1/o−1} (w ≤ t), on 0 < x ≤ c, 0 elsewhere.
    Steep next to each jump, flat next to each level: o = 1 is clipped_relu, o → ∞ approaches σ_α. ReSTE raises o
    from 1 to o_end = 3 as o_start + (1 − cos(πr/2))(o − o_start), r = training progress; ``o_start`` turns that
    schedule on (``set_epoch``); None keeps o fixed.
    """

    name = "reste"

    def __init__(self, o: float = 3.0, interval: float = 0.1, o_start: float | None = None):
        if not o >= 1:
            raise ValueError(f"reste: o must be >= 1, got {o}")
        if not 0.0 < interval <= 1.0:
            raise ValueError(f"reste: interval must lie in (0, 1], got {interval}")
        if o_start is not None and not (isinstance(o_start, int | float) and o_start >= 1):  # null is a None
            raise ValueError(f"reste: o_start must be a number >= 1 or null, got {o_start!r}")
        self.o, self.interval, self.o_start = o, interval, o_start
        self.exponent = o if o_start is None else o_start  # the o in use: moves with set_epoch

    def set_epoch(self, epoch, max_epochs):
        r = progress(epoch, max_epochs)
        if self.o_start is not None:  # ReSTE's schedule (their main.py), with r reaching 1 at the last epoch
            self.exponent = self.o_start + (1 - math.cos(math.pi * r / 2)) * (self.o - self.o_start)

    def _piece(self, x, alpha, levels):
        """k, w = x/α − (k − 1) ∈ (0, 1] on ((k−1)α, kα], and whether 0 < x ≤ c."""
        k = level_index(x, alpha, levels)
        return k, x / alpha - k + 1, (x > 0) & (x <= clip_point(alpha, levels))

    def mu(self, x, alpha, levels):
        k, w, inside = self._piece(x, alpha, levels)
        p, t = 1 / self.exponent, self.interval
        m = torch.where(w > t, w.clamp_min(t) ** p, w * t ** (p - 1))  # clamp: no NaN from a negative base
        return torch.where(
            inside, alpha * (k - 1 + m), torch.minimum(x.clamp_min(0), clip_point(alpha, levels))
        )

    def dmu(self, x, alpha, levels):
        _, w, inside = self._piece(x, alpha, levels)
        p, t = 1 / self.exponent, self.interval
        return torch.where(inside, torch.where(w > t, p * w.clamp_min(t) ** (p - 1), t ** (p - 1)), 0.0)


@STES.register
class ApproxPoly(STE):
    """Bi-Real Net's ApproxSign (Liu et al., ECCV 2018, §3.2) on each jump of σ_α: F(v) = 2v − v|v| on |v| ≤ 1
    (sign(v) beyond), F′(v) = 2 − 2|v|, a triangle; scaled to one step, v = 2(x/α − j) around the threshold jα:

    μ(x) = α(j + ½ + ½·F(v)), μ′(x) = max(0, 2 − 4|x/α − j|) for the nearest threshold j ∈ {0, …, L−1}: piecewise
    quadratic μ, a triangle of area α per step, zero outside [−α/2, (L−½)α].
    """

    name = "approx_poly"

    def mu(self, x, alpha, levels):
        u = x / alpha
        j = nearest_threshold(u, levels)
        v = (2 * (u - j)).clamp(-1, 1)
        return alpha * (j + 0.5 + 0.5 * (2 * v - v * v.abs()))

    def dmu(self, x, alpha, levels):
        u = x / alpha
        return (2 - 4 * (u - nearest_threshold(u, levels)).abs()).clamp_min(0)


@STES.register
class AnnealedSoftStaircase(SoftStaircase):
    """soft_staircase (μ′ = β·Σ_k s_k(1 − s_k), s_k = sigmoid(β(x − kα)/α)) with its slope β annealed over training:
    β(t) = β_start·(β_end/β_start)^t, t = epoch/(max_epochs − 1), set by ``set_epoch``: the slope annealing trick of
    Chung, Ahn, Bengio (ICLR 2017, hierarchical multiscale RNNs; they raise the slope linearly, 1 + 0.04 per epoch up to 5).
    """

    name = "annealed_soft_staircase"

    def __init__(self, beta_start: float = 1.0, beta_end: float = 16.0):
        for key, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not value > 0:
                raise ValueError(f"annealed_soft_staircase: {key} must be > 0, got {value}")
        self.beta_start, self.beta_end = beta_start, beta_end
        self.beta = beta_start  # β in use: moves with set_epoch

    def set_epoch(self, epoch, max_epochs):
        self.beta = self.beta_start * (self.beta_end / self.beta_start) ** progress(epoch, max_epochs)
