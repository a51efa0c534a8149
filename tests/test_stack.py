"""K stacked runs (src/stack.py) against K separate ones: the same outputs, weights and BN statistics."""

import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from src.models import build_model
from src.quant import QuantReLU
from src.stack import StackedModels, stacked_loss
from src.stacked.ste import add_bounds, stack_base

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def seeded(name: str, seeds, ste: str, **kw) -> list[torch.nn.Module]:
    """One float64 model per seed (float64: the grouped conv sums in another order, and in float32 a ~1e-7
    difference can move a pre-activation across a step edge kα, after which the runs rightly differ)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(name, partial(QuantReLU, 2, "lloyd", ste, **kw), SHAPES[name]).double())
    return models


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize(
    "name,ste,kw,steps",
    [
        ("lenet5", "clipped_relu", {}, 3),
        ("lenet5", "relu", {}, 3),
        ("lenet5", "identity", {}, 3),
        ("lenet5", "clipped_relu", {"alpha_mode": "pact"}, 3),  # a learned α per run
        # option-A shortcuts pad channels: per run under vmap; ~30 s
        pytest.param("resnet20", "clipped_relu", {}, 1, marks=pytest.mark.slow),
    ],
)
def test_stacked_runs_train_like_separate_runs(name, ste, kw, steps):
    """SGD (momentum, weight decay) on K=3 stacked models from seeds 0, 1, 2, each with its own batches, against
    the same 3 models trained one by one: outputs, every weight, α and BN running statistics agree."""
    separate = seeded(name, range(3), ste, **kw)
    stacked = StackedModels(seeded(name, range(3), ste, **kw))
    opts, opt = [sgd(m.parameters()) for m in separate], sgd(stacked.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(3, 8, *SHAPES[name], generator=gen, dtype=torch.float64)  # (K, B, C, H, W)
        y = torch.randint(0, 10, (3, 8), generator=gen)
        outs = []
        for model, o, xk, yk in zip(separate, opts, x, y, strict=True):
            o.zero_grad()
            out = model(xk)
            F.cross_entropy(out, yk).backward()
            o.step()
            outs.append(out.detach())
        opt.zero_grad()
        out = stacked(x)
        stacked_loss(F.cross_entropy, out, y).backward()
        opt.step()
        torch.testing.assert_close(out.detach(), torch.stack(outs), rtol=1e-9, atol=1e-12)
    for k, model in enumerate(separate):
        state = stacked.unstacked(k)
        assert list(state) == list(model.state_dict())  # the architecture's own keys: a run's checkpoint
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-12, msg=f"run {k}: {key}")


def test_eval_mode_and_an_unstacked_run_load_into_the_architecture():
    """eval() reaches every run (BN uses running statistics); run k's state dict rebuilds model k exactly."""
    models = seeded("lenet5", (4, 5), "clipped_relu")
    stacked = StackedModels(models)
    x = torch.randn(2, 5, 1, 28, 28, dtype=torch.float64)
    stacked(x)  # train mode: updates the running statistics of both runs
    stacked.eval()
    rebuilt = build_model("lenet5", partial(QuantReLU, 2, "lloyd", "clipped_relu"), SHAPES["lenet5"]).double()
    rebuilt.load_state_dict(stacked.unstacked(1))
    torch.testing.assert_close(stacked(x)[1], rebuilt.eval()(x[1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_op_of_a_stacked_step_has_a_batching_rule(name):
    """vmap loops over the K slices, one call each, for an op without a batching rule (and warns "performance
    drop"): on a GPU that is K kernel launches where the stack should make one. level_index's clamp_ was one."""
    model = build_model(name, partial(QuantReLU, 2, 1.0, "relu"), SHAPES[name])
    add_bounds(model, "relu")
    stacked = StackedModels([model, model], stack_base(model, True))
    x = torch.randn(2, 4, *SHAPES[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback's warning becomes a failure
        stacked(x).sum().backward()
        stacked.eval()
        stacked(x)
