"""Quantized activations and their straight-through estimators: the library every experiment shares."""

from src.quant.quantizer import MAX_BITS, QuantReLU, check_bits, lloyd_alpha, quant_relu, resolve_alpha
from src.quant.ste import STE, STES, clip_point, get_ste, level_index, set_epoch, staircase, ste_defaults
from src.quant.weights import WQUANTS, WSTES, quantize_weights, weight_quantizer, weight_token

__all__ = [
    "MAX_BITS",
    "WQUANTS",
    "WSTES",
    "STE",
    "STES",
    "QuantReLU",
    "check_bits",
    "clip_point",
    "get_ste",
    "level_index",
    "lloyd_alpha",
    "quant_relu",
    "quantize_weights",
    "resolve_alpha",
    "set_epoch",
    "staircase",
    "ste_defaults",
    "weight_quantizer",
    "weight_token",
]
