"""Batch-making tensor ops shared by the datamodules: seeded streams, normalisation, crop/flip, DDP shards."""

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

# Independent random streams derived from one seed (values are labels, not tuning knobs).
TEACHER, TRAIN, VAL = 0, 1, 2


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints such as (seed, stream, epoch): no global RNG is touched."""
    # SeedSequence hashes the tuple, so (seed, epoch) and (seed + 1, epoch - 1) give unrelated streams;
    # it takes non-negative ints only, hence the modulo (a negative seed still gets its own stream).
    state = np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def check_positive(**values: int | None) -> None:
    """Raise a one-line ValueError unless each value is an int >= 1 (None is allowed: 'not set')."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{name} must be a positive integer, got {value!r}")


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (B,C,H,W) -> float32 (x/255 - mean) / std, with mean and std shaped (1,C,1,1)."""
    return (x.float() / 255 - mean) / std


def crop_flip(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Crop each zero-padded image (B,C,H,W) at (top, left), then mirror it where `flip`; all three are (B,)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # (B,C,H+2p,W+2p); zeros, as torchvision's RandomCrop(padding=p)
    rows = top[:, None] + torch.arange(h, device=x.device)  # (B,H)
    cols = torch.arange(w, device=x.device).expand(b, w)  # (B,W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]  # mirrored crop = reversed columns
    # one gather for the whole batch: out[b,c,i,j] = padded[b, c, rows[b,i], cols[b,j]]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def crop_flip_draws(b: int, padding: int, hflip: bool, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """RandomCrop(size, padding) + RandomHorizontalFlip(0.5) draws for b images: (top, left, flip), each (b,).
    From a CPU generator, so a seed gives the same augmentation on every device; ``crop_flip`` applies them."""
    top = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5 if hflip else torch.zeros(b, dtype=torch.bool)
    return top, left, flip


def stack_draws(draws: list[tuple]) -> tuple[torch.Tensor, tuple]:
    """K datamodules' ``epoch_draws`` (order (N,), augmentation draws each (N,)) as one: (K, N) tensors."""
    order = torch.stack([d[0] for d in draws])  # (K, N)
    return order, tuple(torch.stack(a) for a in zip(*(d[1] for d in draws), strict=True))


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of `order`, wrapped to equal length on all ranks (as DistributedSampler) so none waits."""
    per_rank = math.ceil(len(order) / world_size)
    total = per_rank * world_size
    padded = order.repeat(math.ceil(total / len(order)))[:total]  # (total,), the first indices repeated
    return padded[rank::world_size]  # (per_rank,)


def trainer_epoch(module) -> int | None:
    """The epoch the attached trainer is about to train (None without a trainer).

    Lightning's epochs *processed*, the count it gives samplers: right after a resume from an epoch-end
    checkpoint, ``current_epoch`` (epochs *completed*) still names the epoch already trained, and the data
    order would repeat it.
    """
    trainer = getattr(module, "trainer", None)
    return None if trainer is None else trainer.fit_loop.epoch_progress.current.processed


def trainer_rank(module) -> tuple[int, int]:
    """(global rank, world size) of the attached trainer; (0, 1) without one."""
    trainer = getattr(module, "trainer", None)
    return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)


class Batches:
    """A sized, re-iterable loader: each pass iterates `make(epoch)`; Lightning accepts any such iterable."""

    def __init__(self, make: Callable[[int], Iterator], length: int, epoch: Callable[[], int | None]):
        self._make, self._length, self._epoch = make, length, epoch
        self._passes = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator:
        epoch = self._epoch()
        if epoch is None:  # no trainer: each pass over the loader counts as one epoch
            epoch, self._passes = self._passes, self._passes + 1
        return self._make(epoch)
