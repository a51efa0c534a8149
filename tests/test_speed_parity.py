"""The speed work changes memory and time, never numbers: bytes saved for backward, float32 thresholds under
autocast, and torch.compile (model.compile) against eager."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from src.config import validate
from src.models import build_model
from src.quant import STES, QuantReLU, quant_relu
from src.quant.memory import saved_bytes
from tests.runs import FAST, make_cfg
from tests.test_quant import grad_oracle, grads_through

PAPER = ("identity", "relu", "clipped_relu")


def bytes_per_element(ste, bits, alpha_mode="fixed", n=4096):
    """Bytes the quantizer keeps for backward per input element (float32 input)."""
    x = torch.randn(n, requires_grad=True)
    alpha = torch.tensor(0.5, requires_grad=alpha_mode != "fixed")
    _, nbytes = saved_bytes(quant_relu, x, bits, alpha, ste, alpha_mode=alpha_mode)
    return nbytes / n


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("name", sorted(STES))
def test_bytes_saved_for_backward(name, bits):
    """The paper's STEs keep the one-byte level index k (identity nothing); the others keep float32 x."""
    expected = 1 if name in ("relu", "clipped_relu") else 0 if name == "identity" else 4
    assert bytes_per_element(name, bits) == pytest.approx(expected, abs=1e-3)  # α: 4 bytes in all


@pytest.mark.parametrize("bits,expected", [(6, 1), (7, 1), (8, 4)])
def test_level_index_fits_a_byte_up_to_seven_bits(bits, expected):
    assert bytes_per_element("clipped_relu", bits) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("mode", ["pact", "lsq"])
def test_learned_alpha_keeps_x(mode):
    assert bytes_per_element("clipped_relu", 2, mode) == pytest.approx(4, abs=1e-3)


@pytest.mark.parametrize("name", ["relu", "clipped_relu"])
@pytest.mark.parametrize("bits", [6, 7, 8])  # int8 k, uint8 k, x kept
def test_backward_exact_whatever_is_saved(name, bits):
    levels, alpha = 2**bits - 1, 2.0**-5  # dyadic: every edge kα is exact, so it is hit exactly
    rng = np.random.default_rng(bits)
    edges = np.arange(levels + 2) * alpha
    x = np.concatenate([rng.uniform(-1, levels * alpha + 1, 3000), edges, np.nextafter(edges, 9), -edges])
    grad = rng.normal(size=x.shape)
    np.testing.assert_allclose(
        grads_through(name, x, grad, bits, alpha), grad_oracle(name, x, grad, alpha, levels), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", sorted(STES))
def test_autocast_keeps_float32_thresholds(name):
    """Under bfloat16 autocast the staircase is computed in float32: a float32 input gets exactly its float32
    levels, a bfloat16 input those of its float32 value (bfloat16 arithmetic would move the thresholds kα)."""
    x = 3 * torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32, outb = quant_relu(x, 2, 0.6508, name), quant_relu(xb.requires_grad_(), 2, 0.6508, name)
    assert out32.dtype == torch.float32 and torch.equal(out32, quant_relu(x, 2, 0.6508, name))
    assert outb.dtype == torch.bfloat16
    assert torch.equal(outb, quant_relu(xb.detach().float(), 2, 0.6508, name).bfloat16())
    in_bf16 = (xb.detach() / torch.tensor(0.6508, dtype=torch.bfloat16)).ceil().clamp(0, 3)
    assert not torch.equal(in_bf16, (xb.detach().float() / 0.6508).ceil().clamp(0, 3))  # the test can tell
    outb.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16


# ---- model.compile -------------------------------------------------------------------------------------------


def test_compile_knobs_validate_and_keep_the_state_dict(tmp_path):
    """model.compile is build_model's, not an architecture size; the compiled model loads eager checkpoints."""
    cfg = make_cfg(tmp_path, ["model=tiny", "model.compile=true", "model.compile_mode=default", *FAST])
    validate(cfg)
    compiled = instantiate(cfg.model, act=instantiate(cfg.quant), in_shape=(3, 32, 32), num_classes=10)
    eager = build_model("tiny", act=instantiate(cfg.quant))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    with pytest.raises(ValueError, match="compile_mode must be one of .*, got 'fast'"):
        build_model("tiny", compile=True, compile_mode="fast")  # before torch.compile's first forward


@pytest.mark.slow  # about 25 s each on a busy 2-core CPU: Inductor compiles forward and backward
@pytest.mark.parametrize("name", PAPER)
def test_compiled_model_trains_like_eager(name):
    """Two SGD steps of LeNet-5 (channels_last) compiled and eager from the same weights: same outputs and grads.

    float64: in float32 the ~1e-7 differences of Inductor's kernels move an x across a step edge kα after the
    first update, and one flipped level in the first layer changes all of its weight gradient.
    """
    torch._dynamo.reset()
    act = partial(QuantReLU, 2, "lloyd", name)
    models = [build_model("lenet5", act, (1, 28, 28), channels_last=True, compile=c) for c in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    models = [m.double() for m in models]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (32,), generator=gen)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    for _ in range(2):
        outs = []
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            outs.append(model(x))
            F.cross_entropy(outs[-1], y).backward()
            opt.step()
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-10)
        for p_c, p_e in zip(models[1].parameters(), models[0].parameters(), strict=True):
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-8, atol=1e-10)
