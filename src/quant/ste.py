"""The straight-through estimators: one registry, name -> STE class.

Every STE replaces the a.e.-zero derivative of the quantized ReLU σ_α (Yin et al. 2019, §4) by the derivative μ′ of a
surrogate μ. Inputs are the pre-activation ``x``, the resolution ``alpha`` (a tensor, maybe learnable) and the number
of non-zero levels ``levels`` = L = 2^b − 1; the clip point is c = L·α. The paper's three (§1, §5) are
``identity``, ``relu`` and ``clipped_relu``; the others go beyond it.

An STE instance holds its hyper-parameters (validated on construction); ``STES[name](**kwargs)`` builds one.
``backward(grad, x, alpha, levels)`` is what autograd calls; by default it is ``grad * dmu(x)``. An STE whose μ′
is a function of the level index k (below) declares ``needs = "level"`` and writes ``backward_level`` instead:
the quantizer then keeps one byte per element for backward instead of the four of a float32 x.
"""

from __future__ import annotations

import inspect
import math

import torch

STES: dict[str, type[STE]] = {}


def register(cls: type[STE]) -> type[STE]:
    """Add an STE class to the registry under its ``name``."""
    STES[cls.name] = cls
    return cls


def get_ste(name: str | STE, **kwargs) -> STE:
    """Return an STE instance from a registry name (with hyper-parameters) or pass an instance through."""
    if isinstance(name, STE):
        return name
    if name not in STES:
        raise ValueError(f"unknown ste {name!r}; valid names: {', '.join(sorted(STES))}")
    try:
        return STES[name](**kwargs)
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
    return (x / alpha).ceil_().clamp_(0, top)  # in place on the fresh quotient: one allocation


def staircase(x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
    """σ_α(x) = α·clamp(ceil(x/α), 0, L): 0 for x ≤ 0, kα on ((k−1)α, kα], Lα above (L−1)α (Yin et al. 2019, §4;
    the ceil form of the authors' code)."""
    return level_index(x, alpha, levels).mul_(alpha)


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


@register
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


@register
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


@register
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


@register
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


@register
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


@register
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
        u = x / alpha
        width = math.ceil(self.reach / self.beta)
        if levels <= 2 * width + 1:  # few levels: every term
            base, offsets = 0, range(levels)
        else:  # only the k within reach of each x, masked to 0 ≤ k < L below
            base, offsets = u.floor().clamp(0, levels - 1), range(-width, width + 1)
        total = torch.zeros_like(x)
        for j in offsets:
            k = base + j
            s = torch.sigmoid(self.beta * (u - k))
            term = s * (1 - s)
            total = total + (term if isinstance(k, int) else torch.where((k >= 0) & (k < levels), term, 0.0))
        return self.beta * total


@register
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
