"""The Diagnostics callback (src/diagnostics.py): level fractions, entropy and ∂loss/∂x norms against hand
computations on a tiny net, STE disagreement against numpy, training unchanged by the callback, and the columns
a run's metrics.csv gets (none for a float run)."""

import math
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import src.probe
from src.diagnostics import Diagnostics, isolated, ste_disagreement, swapped_ste
from src.module import STEModule
from src.quant import QuantReLU
from src.train import train
from tests.runs import fast_cfg

ALPHA, BITS = 0.5, 2  # levels 0, .5, 1, 1.5; clip point c = 1.5
# pre-activations x (B=3, 4), none on a level boundary: 3 below, 2 saturated, level occupancy 3/3/2/4 of 12
X = np.array([[-1.0, 0.2, 0.7, 2.0], [0.3, -0.4, 1.2, 1.7], [0.9, 0.4, -0.1, 1.3]])
Y = np.array([0, 1, 1])


def tiny_net(w1: np.ndarray, w2: np.ndarray, ste: str) -> nn.Sequential:
    """Linear(w1, no bias) → QuantReLU(2 bits, α=0.5, ste) → Linear(w2, no bias), in float64."""
    net = nn.Sequential(
        nn.Linear(w1.shape[1], w1.shape[0], bias=False),
        QuantReLU(BITS, ALPHA, ste),
        nn.Linear(w2.shape[1], w2.shape[0], bias=False),
    ).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w1))
        net[2].weight.copy_(torch.from_numpy(w2))
    return net


def numpy_grads(w1, w2, inputs, y, dmu) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(∂loss/∂x, ∂loss/∂W1, ∂loss/∂W2) of the mean cross-entropy, the STE's μ′ = dmu(x) for the staircase."""
    x = inputs @ w1.T
    q = ALPHA * np.clip(np.ceil(x / ALPHA), 0, 2**BITS - 1)
    logits = q @ w2.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g_logits = (p - np.eye(w2.shape[0])[y]) / len(y)
    g_x = (g_logits @ w2) * dmu(x)
    return g_x, g_x.T @ inputs, g_logits.T @ q


MU_PRIME = {
    "identity": lambda x: np.ones_like(x),
    "relu": lambda x: (x > 0).astype(float),
    "clipped_relu": lambda x: ((x > 0) & (x <= ALPHA * (2**BITS - 1))).astype(float),
}


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def fit_one_batch(net: nn.Module, inputs, y, **knobs) -> dict[str, float]:
    """One training step on (inputs, y) with the callback (every step sampled); the epoch's logged metrics."""
    module = STEModule(net, partial(torch.optim.SGD, lr=0.1), num_classes=2)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Diagnostics(every_n_steps=1, **knobs)],
    )  # fmt: skip
    data = TensorDataset(torch.from_numpy(inputs), torch.from_numpy(y))
    trainer.fit(module, DataLoader(data, batch_size=len(y)))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_level_fractions_entropy_and_grad_norm_equal_a_hand_computation():
    w2 = np.array([[0.5, -1.0, 2.0, 0.3], [-0.7, 0.4, 0.1, 1.1]])
    logged = fit_one_batch(tiny_net(np.eye(4), w2, "clipped_relu"), X, Y, disagree_every_n_epochs=0)
    n = X.size
    below, saturated = (X <= 0).sum() / n, (X > 1.5).sum() / n
    levels = [(X <= 0).sum(), ((X > 0) & (X <= 0.5)).sum(), ((X > 0.5) & (X <= 1)).sum(), (X > 1).sum()]
    p = np.array(levels) / n
    assert (below, saturated, list(p)) == (3 / 12, 2 / 12, [3 / 12, 3 / 12, 2 / 12, 4 / 12])  # the chosen X
    g_x = numpy_grads(np.eye(4), w2, X, Y, MU_PRIME["clipped_relu"])[0]
    expected = {"below": below, "saturated": saturated, "level_entropy": -(p * np.log2(p)).sum()}
    expected |= {f"level{j}": pj for j, pj in enumerate(p)} | {"grad_norm": np.linalg.norm(g_x)}
    assert {
        k.removeprefix("diag/1/"): v for k, v in logged.items() if k.startswith("diag/")
    } == pytest.approx(expected, rel=1e-6)
    assert not any(k.startswith("disagree/") for k in logged)  # disagree_every_n_epochs=0: off


def test_max_levels_drops_the_per_level_columns_not_the_entropy():
    logged = fit_one_batch(tiny_net(np.eye(4), np.ones((2, 4)), "relu"), X, Y, max_levels=3)
    assert sorted(k for k in logged if k.startswith("diag/")) == [
        "diag/1/below", "diag/1/grad_norm", "diag/1/level_entropy", "diag/1/saturated",
    ]  # fmt: skip


def random_problem(seed=0):
    rng = np.random.default_rng(seed)
    inputs, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
    return rng.normal(size=(5, 3)) * 1.5, rng.normal(size=(2, 5)), inputs, y  # x spans below 0 to above c


def test_disagreement_of_an_ste_with_itself_is_one():
    w1, w2, inputs, y = random_problem()
    net = tiny_net(w1, w2, "clipped_relu")
    out = ste_disagreement(
        net, F.cross_entropy, (torch.from_numpy(inputs), torch.from_numpy(y)), ["clipped_relu"]
    )
    assert out == pytest.approx(
        {"disagree/clipped_relu": 1, "disagree/clipped_relu/0": 1, "disagree/clipped_relu/2": 1}
    )


@pytest.mark.parametrize("own", ["relu", "identity"])
def test_disagreement_matches_numpy_for_two_stes(own):
    w1, w2, inputs, y = random_problem()
    net = tiny_net(w1, w2, own)
    others = [s for s in MU_PRIME if s != own]
    out = ste_disagreement(net, F.cross_entropy, (torch.from_numpy(inputs), torch.from_numpy(y)), others)
    _, g1, g2 = numpy_grads(w1, w2, inputs, y, MU_PRIME[own])
    expected = {}
    for other in others:
        _, h1, h2 = numpy_grads(w1, w2, inputs, y, MU_PRIME[other])
        both = cos(np.concatenate([g1.ravel(), g2.ravel()]), np.concatenate([h1.ravel(), h2.ravel()]))
        expected |= {
            f"disagree/{other}": both,
            f"disagree/{other}/0": cos(g1, h1),
            f"disagree/{other}/2": 1.0,
        }
    assert out == pytest.approx(expected, rel=1e-9)
    assert all(v < 0.999 for k, v in expected.items() if k.endswith("/0"))  # the STEs do disagree here
    assert [m.ste.name for m in net.modules() if isinstance(m, QuantReLU)] == [own]  # restored


def test_swapped_ste_restores_the_ste_after_an_error():
    net = tiny_net(np.eye(4), np.ones((2, 4)), "relu")
    with pytest.raises(RuntimeError), swapped_ste(net, "identity"):
        assert net[1].ste.name == "identity"
        raise RuntimeError
    assert net[1].ste.name == "relu"


def test_isolated_restores_weights_statistics_grads_modes_and_rng():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), QuantReLU(BITS, ALPHA, "relu"), nn.Linear(4, 2))
    net[3].eval()  # a module left in eval mode on purpose stays so
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1)
    with isolated(net):
        assert not any(m.training for m in net.modules())
        meddling_probe(net, F.cross_entropy, (torch.randn(8, 3), torch.randint(0, 2, (8,))))
    drawn = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.rand(3))  # the probe's draws did not advance the global RNG
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN's running stats too
    assert torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight)) and net[3].bias.grad is None
    assert [m.training for m in net.modules()] == [True, True, True, True, False]


def test_bad_knob_is_one_line():
    with pytest.raises(
        ValueError, match=r"callbacks.diagnostics.every_n_steps must be an integer >= 1, got 0"
    ):
        Diagnostics(every_n_steps=0)
    with pytest.raises(ValueError, match="compare_to: unknown ste"):
        Diagnostics(compare_to=["relu", "nope"])


def meddling_probe(model, loss_fn, batch, scale=1.0):
    """A descent probe stand-in that disturbs everything a careless probe could: weights, .grad, BN statistics
    (train mode), the global RNG."""
    model.train()
    x, y = batch
    loss_fn(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {"descent/scale": scale}


def run(tmp_path: Path, name: str, *overrides: str) -> tuple[pd.DataFrame, dict]:
    cfg = fast_cfg(
        tmp_path, "tiny", "trainer.max_epochs=2", "trainer.limit_train_batches=3", *overrides, run=name
    )
    train(cfg)
    out = Path(cfg.paths.output_dir)
    return pd.read_csv(out / "metrics.csv"), torch.load(out / "checkpoints/last.ckpt", weights_only=False)


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path, monkeypatch):
    """Every step sampled, disagreement every epoch and a meddling descent probe: same weights, BN statistics,
    optimizer state and losses as without the callback."""
    monkeypatch.setattr(src.probe, "descent_probe", meddling_probe)
    on = ["callbacks.diagnostics.every_n_steps=1", "callbacks.diagnostics.descent=true",
          "+callbacks.diagnostics.descent_knobs.scale=2.0"]  # fmt: skip
    with_df, with_ckpt = run(tmp_path, "with", *on)
    without_df, without_ckpt = run(tmp_path, "without", "callbacks.diagnostics=null")
    assert with_df["descent/scale"].tolist()[1:] == [2.0, 2.0] and "disagree/relu" in with_df
    assert not any(c.startswith(("diag/", "disagree/", "descent/")) for c in without_df.columns)
    for key, value in without_ckpt["state_dict"].items():
        assert torch.equal(with_ckpt["state_dict"][key], value), key
    momentum = lambda ckpt: [s["momentum_buffer"] for s in ckpt["optimizer_states"][0]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(with_ckpt), momentum(without_ckpt), strict=True))
    for loss in ("train/loss", "val/loss"):
        assert with_df[loss].equals(without_df[loss])


def test_metrics_csv_gets_the_columns_after_one_epoch(tmp_path):
    # tiny: conv 0, BN 1, act 2, pool, flatten, linear 5; clipped_relu, 2 bits
    cfg = fast_cfg(tmp_path, "tiny")
    train(cfg)
    df = pd.read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    diag = [f"diag/2/{k}" for k in ("below", "saturated", "level0", "level1", "level2", "level3")]
    diag += ["diag/2/level_entropy", "diag/2/grad_norm"]
    disagree = [f"disagree/{s}{layer}" for s in ("identity", "relu") for layer in ("", "/0", "/5")]
    assert [c for c in df.columns if c.startswith(("diag/", "disagree/"))] == diag + disagree
    last = df.iloc[-1]
    assert last[[f"diag/2/level{j}" for j in range(4)]].sum() == pytest.approx(1)
    assert 0 < last["diag/2/level_entropy"] <= 2 and last["diag/2/grad_norm"] > 0
    assert last["disagree/identity/5"] == pytest.approx(1)  # the head's gradient does not pass an STE
    assert math.isnan(df.iloc[0]["diag/2/below"])  # row 0, the starting point: nothing trained yet


def test_float_run_logs_nothing(tmp_path):
    cfg = fast_cfg(tmp_path, "tiny", "quant=fp")
    train(cfg)
    df = pd.read_csv(Path(cfg.paths.output_dir) / "metrics.csv")
    assert "train/loss" in df and not any(c.startswith(("diag/", "disagree/")) for c in df.columns)


@pytest.mark.slow
@pytest.mark.parametrize("probe_size", [128, 16], ids=["probe-over-epochs", "probe-in-one-batch"])
def test_a_resumed_run_equals_the_uninterrupted_one_in_every_column(tmp_path, probe_size):
    """3 epochs in one go against 2, then a resume from the epoch-2 checkpoint in another dir: the 3rd epoch's
    metrics.csv row is equal in every column but the clock's, disagree/ and descent/ included (a probe of 128
    examples fills over 4 epochs of 32, so the restored probe must go on filling as it would have)."""
    knobs = [f"callbacks.diagnostics.probe_size={probe_size}", "callbacks.diagnostics.descent=true",
             "+callbacks.diagnostics.descent_knobs.smooth_samples=2"]  # fmt: skip
    whole = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3", *knobs, run="whole")
    train(
        whole
    )  # each config right before its run: ${hydra:runtime.output_dir} resolves against the last made
    cut = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=2", *knobs, run="cut")
    train(cut)
    ckpt = Path(cut.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = fast_cfg(tmp_path, "tiny", "trainer.max_epochs=3", *knobs, f"resume={ckpt}", run="resumed")
    train(resumed)
    a = pd.read_csv(tmp_path / "whole" / "metrics.csv").set_index("epoch").loc[3]
    b = pd.read_csv(Path(resumed.paths.output_dir) / "metrics.csv").set_index("epoch").loc[3]
    columns = [c for c in a.index if not c.startswith("time/")]
    assert {c.split("/")[0] for c in columns} >= {"diag", "disagree", "descent", "train", "val"}
    assert set(b.index) == set(a.index)
    differ = [c for c in columns if not (a[c] == b[c] or (math.isnan(a[c]) and math.isnan(b[c])))]
    assert differ == []
