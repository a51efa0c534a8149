"""Training speed of QuantReLU against nn.ReLU, on whatever device this machine has (CUDA if any, else CPU).

    python benchmarks/bench_train.py [--models lenet5,vgg11,resnet20] [--variants float,identity,relu,clipped_relu]
        [--layouts nchw,channels_last,compiled] [--rounds 5] [--steps 2] [--sections step,memory,epoch]
        [--epoch-models lenet5,resnet20] [--epoch-steps 100]

Three tables, each run on one device named in the header:
- step: median seconds per SGD step of each model × activation × layout (nchw eager, channels_last eager,
  compiled = channels_last under torch.compile), on a fixed random batch of the model's input shape and Table 2
  batch size (LeNet-5 64, VGG-11 and ResNet-20 128), and the ratio to the float ReLU of the same layout. Each
  round times every variant of a model in turn (interleaved, so drift in machine load hits all alike).
- memory: bytes each activation keeps for backward per element, and what a ResNet-20 forward keeps in all
  (torch.autograd.graph.saved_tensors_hooks; on CUDA also the peak memory of a step).
- parity (not in the default sections; for a GPU): one train step of each model × activation on the CPU and on
  the device from the same weights and batch: loss and gradient differences, activation levels that differ.
- concurrency: steps per second of 1, 2, 4, 8 ResNet-20 runs side by side on one device (one process each, as
  the joblib launcher runs sweep jobs), and the ratio to one run.
- stacked: one step of K runs (--stack-models, default LeNet-5) as one stacked model (src/stack.py) against the
  K runs one by one; with --sweep-steps N also a 6-job LeNet-5 sweep (3 STEs × 2 seeds, N steps each) through
  hydra/launcher=stacked, the basic launcher (one by one) and joblib (2 processes): wall time and jobs/hour.
- epoch: a training epoch through Lightning against a bare PyTorch loop with the same model (in the layout its
  conf/model file sets), optimizer and random batches (--epoch-models, default LeNet-5): "src.train" is
  STEModule with the trainer and callbacks conf/train.yaml builds (checkpoint, diagnostics, progress bar; no
  logger), "STEModule" the module in a bare Trainer, "minimal" the least LightningModule (Lightning's own
  loop); the last column is src.train's cost per step. On CUDA also with the batches already on the device.
The CPU default skips the compiled layout (minutes of compilation): add it with --layouts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from src.compose import compose_run
from src.data.batches import Batches
from src.models import build_model
from src.module import STEModule
from src.provenance import REPO, cpu_name
from src.quant import QuantReLU
from src.quant.memory import saved_bytes
from src.stack import StackedModels, stacked_loss
from src.train import build_callbacks

INPUT = {"lenet5": ((1, 28, 28), 64), "vgg11": ((3, 32, 32), 128), "resnet20": ((3, 32, 32), 128)}  # Table 2
LAYOUTS = {
    "nchw": {},
    "channels_last": {"channels_last": True},
    "compiled": {"channels_last": True, "compile": True},
}
PAPER_STES = ("identity", "relu", "clipped_relu")


CONTROL = "float again"  # a second float model timed like the others: its ratio to "float" is the noise floor


def activation(variant: str, bits: int):
    """The activation factory of a variant: "float" (and CONTROL) is nn.ReLU, any other name a QuantReLU with
    that STE."""
    return nn.ReLU if variant in ("float", CONTROL) else partial(QuantReLU, bits, "lloyd", variant)


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize(device)


def make_step(model_name: str, act, layout: str, device: torch.device):
    """A closure running one SGD step of a freshly seeded model on a fixed random batch (on ``device``)."""
    in_shape, batch = INPUT[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, act, in_shape, **LAYOUTS[layout]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *in_shape, device=device), torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def time_interleaved(steps: dict, rounds: int, per_round: int, device) -> dict[str, float]:
    """Median seconds per call of each closure, every round calling each in turn after two warm-up calls."""
    for step in steps.values():  # warm-up: allocator, oneDNN/cuDNN algorithms, compilation
        step(), step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            sync(device)
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(ts) for name, ts in times.items()}


def step_table(args, device) -> None:
    """Step times of each model × layout × activation, as a ratio to the float ReLU of the same layout and to
    the same activation in NCHW (the layout's own gain). The CONTROL row, an identical second float model, shows
    how far two equal variants differ on this machine in this run."""
    print(
        f"\n## Train step, {args.bits}-bit, median of {args.rounds} interleaved rounds × {args.steps} steps"
    )
    print(
        f"{'model':<10}{'layout':<15}{'activation':<14}{'batch':>6}{'s/step':>10}{'× float':>9}{'× NCHW':>8}"
    )
    variants = [*args.variants, CONTROL] if "float" in args.variants else args.variants
    for model_name in args.models:
        torch._dynamo.reset()  # compiled code of the previous model: it would count against dynamo's cache limit
        steps = {
            (layout, v): make_step(model_name, activation(v, args.bits), layout, device)
            for layout in args.layouts
            for v in variants
        }
        median = time_interleaved(steps, args.rounds, args.steps, device)
        for (layout, v), seconds in median.items():
            ratios = (median.get((layout, "float")), median.get(("nchw", v)) if layout != "nchw" else None)
            cells = "".join(
                f"{seconds / r:>{w}.3f}" if r else f"{'—':>{w}}" for r, w in zip(ratios, (9, 8), strict=True)
            )
            print(f"{model_name:<10}{layout:<15}{v:<14}{INPUT[model_name][1]:>6}{seconds:>10.4f}{cells}")


def memory_table(args, device) -> None:
    print("\n## Memory kept for backward (ResNet-20, channels_last, batch 128)")
    print(f"{'activation':<14}{'B/element':>10}{'forward saves MB':>18}{'peak step MB':>14}")
    for v in args.variants:
        act = activation(v, args.bits)().to(device)
        x = torch.randn(1 << 16, device=device, requires_grad=True)
        per_element = saved_bytes(act, x)[1] / x.numel()
        model = build_model("resnet20", activation(v, args.bits), channels_last=True).to(device)
        batch = torch.randn(128, 3, 32, 32, device=device)
        _, total = saved_bytes(model, batch)
        print(f"{v:<14}{per_element:>10.2f}{total / 2**20:>18.1f}{peak_step_mb(model, batch, device):>14}")


def peak_step_mb(model: nn.Module, batch: torch.Tensor, device) -> str:
    """Peak device memory of one forward and backward, in MB (CUDA only: a CPU has no allocator statistics)."""
    if device.type != "cuda":
        return "—"
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    F.cross_entropy(model(batch), torch.zeros(len(batch), dtype=torch.long, device=device)).backward()
    sync(device)
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f}"


class EpochTimer(pl.Callback):
    """Seconds of the last training epoch, read between Lightning's own epoch hooks (after every other
    callback's epoch-end work, such as src.train's checkpoint and diagnostics: it is added last)."""

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync(module.device)
        self.seconds = time.perf_counter() - self.start


class MinimalModule(pl.LightningModule):
    """The least a LightningModule can be: what Lightning's own loop costs, apart from STEModule's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def lightning_epoch(model: nn.Module, batches: list, device, kind: str) -> float:
    """Seconds of the second epoch of a Lightning fit over ``batches`` (the first warms up). ``kind``:
    "src.train" (STEModule with the trainer and callbacks conf/train.yaml builds: checkpoint every epoch,
    diagnostics, progress bar; no logger), "STEModule" (in a bare Trainer) or "minimal" (MinimalModule)."""
    optimizer = partial(torch.optim.SGD, lr=0.01, momentum=0.9)
    module = MinimalModule(model) if kind == "minimal" else STEModule(model, optimizer, num_classes=10)
    timer = EpochTimer()
    loader = Batches(lambda epoch: iter(batches), len(batches), lambda: None)  # the datamodules' loader type
    flags = {"max_epochs": 2, "logger": False, "num_sanity_val_steps": 0}
    bar = io.StringIO()  # the progress bar (src.train's) writes here, not over the table
    with (
        tempfile.TemporaryDirectory() as run_dir,
        contextlib.redirect_stdout(bar),
        contextlib.redirect_stderr(bar),
    ):
        if kind == "src.train":
            cfg = compose_run([f"trainer.accelerator={device.type}"], run_dir)  # as src.train gets it
            callbacks = build_callbacks(cfg)
            trainer = instantiate(cfg.trainer, callbacks=[*callbacks, timer], **flags)
        else:
            trainer = pl.Trainer(
                accelerator=device.type, devices=1, callbacks=[timer], enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir, **flags,
            )  # fmt: skip
        trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def bare_epoch(model: nn.Module, batches: list, device) -> float:
    """Seconds of the second pass of a plain loop: batch to device, forward, loss, backward, SGD step."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sync(device)
    return time.perf_counter() - start


EPOCH_KINDS = ("src.train", "STEModule", "minimal")


def epoch_table(args, device) -> None:
    """A training epoch through Lightning (three ways, EPOCH_KINDS) against a bare loop over the same batches:
    median seconds of alternating rounds, the ratio to the bare loop, and the framework's cost per step."""
    print(
        f"\n## Epoch of {args.epoch_steps} steps (clipped_relu {args.bits}-bit, Table 2 batch): Lightning vs a bare"
        f" loop, median of {args.rounds} alternating rounds"
    )
    print(
        f"{'model':<10}{'data':<8}{'bare s':>8}"
        + "".join(f"{k + ' s':>13}{'× bare':>8}" for k in EPOCH_KINDS)
        + f"{'src.train − bare, ms/step':>27}"
    )
    for model_name in args.epoch_models:
        in_shape, batch = INPUT[model_name]
        gen = torch.Generator().manual_seed(0)
        host = [
            (torch.randn(batch, *in_shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(args.epoch_steps)
        ]
        places = {"host": host}
        if device.type == "cuda":
            places["device"] = [(x.to(device), y.to(device)) for x, y in host]
        torch.manual_seed(0)
        layout = OmegaConf.load(REPO / "conf" / "model" / f"{model_name}.yaml").get("channels_last", False)
        model = build_model(model_name, activation("clipped_relu", args.bits), in_shape, channels_last=layout)
        for place, batches in places.items():
            times = {kind: [] for kind in ("bare", *EPOCH_KINDS)}
            for _ in range(args.rounds):  # alternating, so drift in machine load hits all alike; medians
                times["bare"].append(bare_epoch(copy.deepcopy(model), batches, device))
                for kind in EPOCH_KINDS:
                    times[kind].append(lightning_epoch(copy.deepcopy(model), batches, device, kind))
            median = {kind: statistics.median(t) for kind, t in times.items()}
            bare = median["bare"]
            cells = "".join(f"{median[k]:>13.3f}{median[k] / bare:>8.3f}" for k in EPOCH_KINDS)
            per_step = (median["src.train"] - bare) / args.epoch_steps * 1e3
            print(f"{model_name:<10}{place:<8}{bare:>8.3f}{cells}{per_step:>27.2f}")


def parity_table(args, device) -> None:
    """One SGD step of each model × activation on the CPU and on ``device`` from the same weights and batch:
    the loss difference, the relative difference of all weight gradients, and the share of activation outputs
    whose level differs (a pre-activation within float error of a threshold kα may round either way)."""
    print(f"\n## CPU vs {device.type} parity of one train step ({args.bits}-bit, TF32 off)")
    print(f"{'model':<10}{'activation':<14}{'|Δ loss|':>10}{'‖Δ grad‖/‖grad‖':>17}{'levels differ':>15}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for model_name in args.models:
        in_shape, batch = INPUT[model_name]
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(batch, *in_shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
        for v in args.variants:
            torch.manual_seed(0)
            model = build_model(model_name, activation(v, args.bits), in_shape)
            runs = [
                one_step(copy.deepcopy(model).to(d), x.to(d), y.to(d)) for d in (torch.device("cpu"), device)
            ]
            (loss_a, grad_a, out_a), (loss_b, grad_b, out_b) = runs
            differ = sum((a != b).sum().item() for a, b in zip(out_a, out_b, strict=True))
            total = sum(a.numel() for a in out_a)
            rel = (grad_a - grad_b).norm() / grad_a.norm()
            print(f"{model_name:<10}{v:<14}{abs(loss_a - loss_b):>10.2e}{rel:>17.2e}{differ / total:>15.2e}")


def one_step(model: nn.Module, x, y) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """Loss, all weight gradients (flat, on the CPU) and every activation's output (on the CPU) of one step."""
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach().cpu())) for m in model.modules()
             if isinstance(m, QuantReLU | nn.ReLU)]  # fmt: skip
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = torch.cat([p.grad.flatten().cpu() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads, outs


def concurrent_worker(device: str, threads: int, seconds: float, start, result) -> None:
    """One of N processes: ResNet-20 2-bit clipped_relu steps on its own model until ``seconds`` have passed."""
    torch.set_num_threads(threads)
    step = make_step("resnet20", activation("clipped_relu", 2), "channels_last", torch.device(device))
    step(), step()  # warm-up before the common start
    start.wait()
    count, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step()
        count += 1
    sync(torch.device(device))
    result.put(count / (time.perf_counter() - begin))


def concurrency_table(args, device) -> None:
    """Throughput of N ResNet-20 runs side by side on one device (separate processes, as the joblib launcher
    runs sweep jobs); on a CPU each gets cores // N threads."""
    print(
        f"\n## {', '.join(map(str, args.concurrent))} concurrent ResNet-20 runs (2-bit, batch 128, {args.seconds:g} s)"
    )
    print(f"{'runs':>5}{'steps/s':>10}{'× one run':>11}")
    ctx, one = torch.multiprocessing.get_context("spawn"), None
    for n in args.concurrent:
        threads = max(1, torch.get_num_threads() // n) if device.type == "cpu" else 1
        start, result = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=concurrent_worker, args=(str(device), threads, args.seconds, start, result))
                 for _ in range(n)]  # fmt: skip
        for proc in procs:
            proc.start()
        total = sum(result.get() for _ in procs)
        for proc in procs:
            proc.join()
        one = one or total
        print(f"{n:>5}{total:>10.2f}{total / one:>11.2f}")


def stacked_steps(model_name: str, k: int, bits: int, device) -> dict:
    """Two closures, each one SGD step of K runs of ``model_name`` (seeds 0..K−1, its Table 2 batch each):
    "separate" steps the K models one after another, "stacked" the same K as one model (src/stack.py)."""
    in_shape, batch = INPUT[model_name]
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(model_name, activation("clipped_relu", bits), in_shape).to(device))
    stacked = StackedModels(copy.deepcopy(models))
    x = torch.randn(k, batch, *in_shape, device=device)  # (K, B, C, H, W): each run its own batch
    y = torch.randint(0, 10, (k, batch), device=device)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    opt = torch.optim.SGD(stacked.parameters(), lr=0.01, momentum=0.9)

    def separate():
        for model, o, xk, yk in zip(models, opts, x, y, strict=True):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(model(xk), yk).backward()
            o.step()

    def together():
        opt.zero_grad(set_to_none=True)
        stacked_loss(F.cross_entropy, stacked(x), y).backward()
        opt.step()

    return {"separate": separate, "stacked": together}


def stacked_table(args, device) -> None:
    """Seconds per step of all K runs, separate and stacked, and the stacked throughput gain; then a 6-job sweep
    through the launchers (--sweep-steps > 0)."""
    for model_name in args.stack_models:
        print(
            f"\n## K {model_name} runs stacked (src/stack.py) vs one after another, {args.bits}-bit clipped_relu"
        )
        print(f"{'K':>3}{'separate s':>12}{'stacked s':>11}{'× throughput':>14}")
        for k in args.stack:
            median = time_interleaved(
                stacked_steps(model_name, k, args.bits, device), args.rounds, args.steps, device
            )
            ratio = median["separate"] / median["stacked"]
            print(f"{k:>3}{median['separate']:>12.4f}{median['stacked']:>11.4f}{ratio:>14.2f}")
    if args.sweep_steps:
        sweep_table(args, device)


STACKED = ["hydra/launcher=stacked", "hydra.launcher.force=true", "hydra.launcher.max_stack=6"]
SWEEP_LAUNCHERS = {  # the same 6 jobs through each launcher
    "one by one": ["hydra/launcher=basic"],
    "stacked": STACKED,
    # one copy of the data on the device, batches gathered there (docs/stacked.md); the same as "stacked" on a CPU
    "stacked+dev": [*STACKED, "data.on_device=true"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}


def sweep_table(args, device) -> None:
    """Jobs per hour of a 6-job Table-1 sweep (LeNet-5 on MNIST, 3 STEs × 2 seeds, --sweep-steps steps of one
    epoch each) through each launcher: one command each, wall time from start to exit (Python start, data load,
    validation and run files included)."""
    jobs = ["experiment=lenet5_mnist", "ste=identity,relu,clipped_relu", "seed=0,1", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={args.sweep_steps}", "trainer.limit_val_batches=2", "logger=csv",
            "callbacks.diagnostics=null", "trainer.enable_progress_bar=false", "share.threads=1",
            f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}", *args.sweep_extra]  # fmt: skip
    print(
        f"\n## A 6-job sweep (LeNet-5 MNIST, 3 STEs × 2 seeds, 1 epoch of {args.sweep_steps} steps) per launcher"
    )
    print(f"{'launcher':<12}{'wall s':>8}{'jobs/hour':>11}{'× one by one':>14}")
    base = None
    for name, launcher in ((n, SWEEP_LAUNCHERS[n]) for n in args.sweep_launchers):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "src.train", "-m", *jobs, *launcher, f"hydra.sweep.dir={out}"]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - start
        if done.returncode:
            print(f"{name:<12} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        base = base or wall  # the first launcher listed (one by one by default) is the reference
        print(f"{name:<12}{wall:>8.1f}{6 * 3600 / wall:>11.0f}{base / wall:>14.2f}")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    csv = lambda s: s.split(",")  # noqa: E731
    parser.add_argument(
        "--models", type=csv, default=list(INPUT), help="comma-separated, from " + ",".join(INPUT)
    )
    parser.add_argument("--variants", type=csv, default=["float", *PAPER_STES], help="float and/or STE names")
    parser.add_argument(
        "--layouts", type=csv, default=None, help="nchw,channels_last,compiled (CPU default: eager two)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps timed per variant per round")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=100, help="batches per epoch in the epoch table")
    parser.add_argument("--epoch-models", type=csv, default=["lenet5"], help="models of the epoch table")
    parser.add_argument("--sections", type=csv, default=["step", "memory", "epoch", "concurrency", "stacked"])
    parser.add_argument(
        "--stack",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2, 4, 8],
        help="K of the stacked table",
    )
    parser.add_argument("--stack-models", type=csv, default=["lenet5"], help="models of the stacked table")
    parser.add_argument(
        "--sweep-steps", type=int, default=0, help="stacked: steps per job of the 6-job sweep (0: off)"
    )
    parser.add_argument(
        "--sweep-launchers",
        type=lambda s: s.split(","),
        default=list(SWEEP_LAUNCHERS),
        help="stacked: launchers of that sweep, from " + ",".join(SWEEP_LAUNCHERS),
    )
    parser.add_argument(
        "--sweep-extra",
        type=lambda s: [o for o in s.split(",") if o],  # "" (gpu_check.sh without EXTRA): none
        default=[],
        help="stacked: src.train overrides for that sweep",
    )
    parser.add_argument(
        "--concurrent",
        type=lambda s: [int(n) for n in s.split(",")],
        default=None,
        help="run counts of the concurrency table (default 1,2,4,8 on CUDA, 1,2 on a CPU)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per concurrency row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.layouts is None:
        args.layouts = list(LAYOUTS) if args.device.startswith("cuda") else ["nchw", "channels_last"]
    if args.concurrent is None:
        args.concurrent = [1, 2, 4, 8] if args.device.startswith("cuda") else [1, 2]
    checks = [
        ("models", args.models, INPUT),
        ("epoch-models", args.epoch_models, INPUT),
        ("stack-models", args.stack_models, INPUT),
        ("sweep-launchers", args.sweep_launchers, SWEEP_LAUNCHERS),
        ("layouts", args.layouts, LAYOUTS),
    ]
    for name, given, valid in checks:
        if unknown := set(given) - set(valid):
            parser.error(f"unknown {name} {sorted(unknown)}; valid: {', '.join(valid)}")
    return args


def main():
    args = parse_args()
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")  # Lightning's advice on loader workers and logging intervals
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    threads = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    print(
        f"# {device_name(device)} ({device.type}{threads}); torch {torch.__version__}, Lightning {pl.__version__}"
    )
    tables = {
        "step": step_table,
        "memory": memory_table,
        "epoch": epoch_table,
        "concurrency": concurrency_table,
        "parity": parity_table,
        "stacked": stacked_table,
    }
    for section in args.sections:
        tables[section](args, device)


if __name__ == "__main__":
    main()
