"""The two-linear-layer model y = vᵀσ(Zw) of Yin et al. 2019 (Yin et al. 2019, §2–§3): landscape, coarse gradients of
any registry STE (exact and sampled), Algorithm 1 and a descent certificate. Figures: ``src.theory.figures``."""

from src.theory.certificate import certificate_table, descent_certificate
from src.theory.cgd import Trajectory, coarse_gradient_descent
from src.theory.coarse import (
    empirical_coarse_grad,
    empirical_loss,
    expected_coarse_grad,
    sample_inputs,
    sampled_coarse_grad,
)
from src.theory.landscape import (
    angle,
    make_teacher,
    population_grad,
    population_loss,
    prop1_condition,
    saddle_point,
    spurious_minimizer,
    stationary_v,
    theorem2_condition,
    theorem2_start,
    vector_at_angle,
)
from src.theory.moments import p_q, xi

__all__ = [
    "Trajectory",
    "angle",
    "certificate_table",
    "coarse_gradient_descent",
    "descent_certificate",
    "empirical_coarse_grad",
    "empirical_loss",
    "expected_coarse_grad",
    "make_teacher",
    "p_q",
    "population_grad",
    "population_loss",
    "prop1_condition",
    "saddle_point",
    "sample_inputs",
    "sampled_coarse_grad",
    "spurious_minimizer",
    "stationary_v",
    "theorem2_condition",
    "theorem2_start",
    "vector_at_angle",
    "xi",
]
