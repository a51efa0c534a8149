"""Quantized activations and their straight-through estimators: the library every experiment shares."""

from src.quant.quantizer import MAX_BITS, QuantReLU, check_bits, lloyd_alpha, quant_relu, resolve_alpha
from src.quant.ste import STE, STES, clip_point, get_ste, level_index, staircase, ste_defaults

__all__ = [
    "MAX_BITS",
    "STE",
    "STES",
    "QuantReLU",
    "check_bits",
    "clip_point",
    "get_ste",
    "level_index",
    "lloyd_alpha",
    "quant_relu",
    "resolve_alpha",
    "staircase",
    "ste_defaults",
]
