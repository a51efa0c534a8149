"""The paper's two-layer teacher data (Yin et al. 2019, §2): Gaussian patches Z, labels y = v*ᵀσ(Z w*)."""

import math
from collections.abc import Iterator
from functools import partial

import pytorch_lightning as pl
import torch

from src.data.batches import (
    TEACHER,
    TRAIN,
    VAL,
    Batches,
    check_positive,
    generator,
    trainer_epoch,
    trainer_rank,
)

Sample = tuple[torch.Tensor, torch.Tensor]  # Z float32 (B,m,n), y float32 (B,)


def teacher_labels(z: torch.Tensor, v_star: torch.Tensor, w_star: torch.Tensor) -> torch.Tensor:
    """y = v*ᵀσ(Z w*) with σ(x) = 1{x>0}: Z (B,m,n), v* (m,), w* (n,) -> (B,)."""
    return ((z @ w_star) > 0).to(z.dtype) @ v_star  # (B,m) binary activations, then (B,)


class GaussianDataModule(pl.LightningDataModule):
    """Teacher (v*, w*) fixed by seed; fresh Z ~ N(0,1) every train batch; one fixed validation sample."""

    num_classes = None  # regression: the two-layer model's squared loss

    @property
    def input_shape(self) -> tuple[int, int]:
        """One example's shape (m, n): m patches of dimension n."""
        return (self.m, self.n)

    def __init__(
        self,
        m: int = 10,
        n: int = 20,
        batch_size: int = 256,
        batches_per_epoch: int = 50,
        val_samples: int = 20000,
        val_batch_size: int = 5000,
        seed: int = 0,
    ):
        super().__init__()
        check_positive(
            m=m,
            n=n,
            batch_size=batch_size,
            batches_per_epoch=batches_per_epoch,
            val_samples=val_samples,
            val_batch_size=val_batch_size,
        )
        self.m, self.n, self.seed = m, n, seed
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.val_samples, self.val_batch_size = val_samples, val_batch_size
        gen = generator(seed, TEACHER)
        w_star = torch.randn(n, generator=gen)
        self.w_star = w_star / w_star.norm()  # (n,); unit norm loses nothing: ℓ is scale-invariant in w
        # The paper leaves v* free (only "non-zero"); a standard normal draw, shared by every run with this seed.
        self.v_star = torch.randn(m, generator=gen)  # (m,)
        self.val_data: Sample | None = None

    def sample(self, count: int, gen: torch.Generator) -> Sample:
        """`count` fresh inputs Z (count,m,n) ~ N(0,1) and their teacher labels y (count,)."""
        z = torch.randn(count, self.m, self.n, generator=gen)
        return z, teacher_labels(z, self.v_star, self.w_star)

    def setup(self, stage: str | None = None) -> None:
        """Draw the fixed validation sample once, from its own stream."""
        if self.val_data is None:
            self.val_data = self.sample(self.val_samples, generator(self.seed, VAL))

    def train_dataloader(self) -> Batches:
        """`batches_per_epoch` fresh batches, each fixed by (seed, epoch, batch); each DDP rank its own."""
        rank, world = trainer_rank(self)
        make = partial(self._train_epoch, rank=rank, world=world)
        return Batches(make, self.batches_per_epoch, partial(trainer_epoch, self))

    def _train_epoch(self, epoch: int, rank: int, world: int) -> Iterator[Sample]:
        for batch in range(self.batches_per_epoch):
            # interleaved stream index: one process draws streams 0,1,2,...; rank r of w draws r, r+w, ...
            yield self.sample(self.batch_size, generator(self.seed, TRAIN, epoch, batch * world + rank))

    def val_dataloader(self) -> Batches:
        """The fixed validation sample in batches of `val_batch_size`."""
        self.setup()
        z, y = self.val_data
        size = self.val_batch_size
        return Batches(
            lambda _: zip(z.split(size), y.split(size), strict=True), math.ceil(len(y) / size), lambda: 0
        )

    test_dataloader = val_dataloader  # one fixed held-out sample serves both
